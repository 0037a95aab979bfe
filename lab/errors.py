"""The one exception the lab raises: a message a person can act on."""


class LabError(Exception):
    """Something the operator can fix: the message says what and where."""
