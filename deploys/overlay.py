"""Install the overlay on every host of an inventory.

    pyinfra -y inventory/prod.py deploys/overlay.py          # deploy
    pyinfra inventory/prod.py deploys/overlay.py --dry       # show what would change

Run from the repository root. The whole inventory is validated and planned
before any host is touched; one bad host, or one without an allocation in
inventory/prod.leases.json, stops the run with exit code 1 and no change.
"""

from flannelette.deploy import tasks

tasks.overlay(tasks.load_plan())
