"""The one place the lab runs commands on the machine it runs on."""

import subprocess

from .errors import LabError


def run(cmd, check=True, timeout=120, **kwargs):
    """Run `cmd` (a list), capture its output; raise LabError naming it on failure."""
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, **kwargs
        )
    except FileNotFoundError:
        raise LabError(f"{cmd[0]}: not installed (needed by the lab)") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(cmd)}: no answer after {timeout}s") from None
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise LabError(f"{' '.join(cmd)}: exit {proc.returncode}: {detail}")
    return proc


def succeeds(cmd):
    """True when `cmd` runs and exits 0: for 'does this exist' questions."""
    return run(cmd, check=False).returncode == 0
