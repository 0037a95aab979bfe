"""flannelette.deploy: the overlay as a pyinfra library, and this repository's deploy files.

    from flannelette.deploy import overlay      # in a deploy file of one's own
    overlay.install()

`overlay.install` and `teardown.remove` are `@deploy` functions; tasks holds
what they do, ops and facts the pyinfra pieces, render the files a host gets
(from templates/), bundle the runtime's zipapp.
"""
