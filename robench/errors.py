"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class RobenchError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it, in one line."""

    exit_code = 2


class InputError(RobenchError):
    """Bad images or labels handed to robench (outside [0, 1], wrong shape or type)."""
