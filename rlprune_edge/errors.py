"""Errors the command line turns into one clear sentence and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: the message says what was wrong, where, and what to do."""


class DeviceError(UserError):
    """A device or runtime could not be reached or used (missing package, unreachable board)."""
