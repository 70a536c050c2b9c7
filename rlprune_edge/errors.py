"""Errors the command line turns into one clear sentence and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: the message says what was wrong, where, and what to do."""


class DeviceError(UserError):
    """A device or runtime could not be reached or used (missing package, unreachable board)."""


class TargetUnreachable(UserError):
    """The latency target lies below the smallest model the profile allows (a measured floor, not a bug)."""

    def __init__(self, message: str, floor_ratio: float | None = None) -> None:
        super().__init__(message)
        self.floor_ratio = floor_ratio
