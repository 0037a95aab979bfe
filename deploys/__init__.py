"""The pyinfra side of flannelette: deploy files, their reusable tasks and templates.

Run from the repository root, where pyinfra puts the working directory on
sys.path: `pyinfra inventory/prod.py deploys/overlay.py`.
"""
