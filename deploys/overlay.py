"""Install the overlay on every host of an inventory.

    pyinfra -y inventory/prod.py deploys/overlay.py          # deploy
    pyinfra inventory/prod.py deploys/overlay.py --dry       # show what would change

or, from a deploy file of one's own, `from flannelette.deploy import overlay;
overlay.install()`. The whole inventory is validated and planned before any
host is touched; one bad host, or one without an allocation in
inventory/prod.leases.json, stops the run with exit code 1 and no change.
"""

from flannelette.deploy.tasks import install, run_as_deploy_file

run_as_deploy_file(globals(), install)
