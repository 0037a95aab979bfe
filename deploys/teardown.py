"""Remove the overlay from every host of an inventory: the unit, its files and
what the runtime made in the kernel, leaving each host as it was before.

    pyinfra -y inventory/prod.py deploys/teardown.py
"""

from flannelette.deploy import tasks

tasks.teardown()
