"""pytest's root: makes the repository importable as it is for pyinfra (deploys/, lab/)."""
