"""pytest's root: makes the repository importable as it is for pyinfra (deploys/, lab/)."""

import sys

import pytest


@pytest.fixture(autouse=True)
def _no_gevent_patching():
    """Importing pyinfra's CLI monkey-patches the interpreter for gevent, which
    breaks the threads of the runtime, the lab's SSH and every later test.
    Tests run `flannelette` and `pyinfra` as processes, as a person does."""
    yield
    assert "pyinfra_cli" not in sys.modules, "a test imported pyinfra_cli in the test process: run the command instead"
