"""A lab's state file: what `up` started, so `status`, `ssh` and `down` work
from any later process. Shared by the nspawn lab and the VM lab."""

import json
import os

from .errors import LabError


def load(path, plan):
    """The state in `path`, None when there is none; refused when it belongs
    to the same lab name on another network."""
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    if state["network"] != str(plan.network):
        raise LabError(
            f"lab {plan.name!r} is running on {state['network']}, not "
            f"{plan.network}; take it down first")
    return state


def save(path, state):
    """Atomically: a reader never sees half a state."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, path)


def planned(plan, state):
    """The HostPlans of the hosts in `state`, node1 first."""
    if not state:
        return []
    indexes = sorted(int(name[len("node"):]) for name in state["hosts"])
    return [plan.host(i) for i in indexes]


class Stateful:
    """A lab's access to its state file: `state_dir` and `plan` are the lab's,
    `_new_state` what a lab of its kind starts with."""

    @property
    def _state_file(self):
        return self.state_dir / "state.json"

    def _load(self):
        return load(self._state_file, self.plan)

    def _save(self, state):
        save(self._state_file, state)

    def _planned(self, state):
        return planned(self.plan, state)
