"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""

import argparse


class RobenchError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it, in one line."""

    exit_code = 2


class InputError(RobenchError):
    """Bad images or labels handed to robench (outside [0, 1], wrong shape or type)."""


class VictimError(RobenchError):
    """The victim failed while answering a query (raised, or returned non-finite logits): the run stops,
    and the records of its completed batches are kept."""


class OneLineParser(argparse.ArgumentParser):
    """argparse for robench's plain commands (report, reproduce, landscape, invariance): a usage error is
    one line (``robench: error: ...``, exit 2) that points at ``--help``, not argparse's usage block."""

    def error(self, message):  # noqa: D102
        raise RobenchError(f"{self.prog}: {message} (see {self.prog} --help)")
