"""The e2e tier's lab names and networks."""

import os

# Overridable, so that two checkouts' e2e tiers can run on one machine at once.
E2E_LAB_NAME = os.environ.get("FLANNELETTE_E2E_LAB", "e2e")
E2E_LAB_NETWORK = os.environ.get("FLANNELETTE_E2E_NETWORK", "192.168.58.0/24")
E2E_DEPLOY_LAB = os.environ.get("FLANNELETTE_E2E_DEPLOY_LAB", "deploy")
E2E_DEPLOY_NETWORK = os.environ.get("FLANNELETTE_E2E_DEPLOY_NETWORK", "192.168.59.0/24")
# test_lab's own short-lived labs, one at a time, named after the session lab.
# Their network is the deploy lab's: that lab is a module fixture of
# test_deploy, down before test_lab starts.
E2E_SCRATCH_NETWORK = os.environ.get("FLANNELETTE_E2E_SCRATCH_NETWORK", E2E_DEPLOY_NETWORK)


def scratch_lab_name(suffix):
    """A lab name of at most 8 characters, unique to this checkout's e2e run."""
    return f"{E2E_LAB_NAME[:7]}{suffix}"
