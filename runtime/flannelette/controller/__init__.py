"""The operator's side: reading a pyinfra inventory, and the commands that work on one. May import pyinfra."""
