"""Remove the overlay from every host of an inventory: the unit, its files and
what the runtime made in the kernel, leaving each host as it was before.

    pyinfra -y inventory/prod.py deploys/teardown.py

or, from a deploy file of one's own, `from flannelette.deploy import teardown;
teardown.remove()`.
"""

from flannelette.deploy.tasks import remove, run_as_deploy_file

run_as_deploy_file(globals(), remove)
