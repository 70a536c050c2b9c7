"""What a profile may hand to the system ``ssh``: an allow-list of harmless ``-o Key=Value`` options.

A profile is data that gets shared; the user's own ``~/.ssh/config`` is where anything that runs
commands, reads other configuration or changes how host keys are checked belongs. So
``[connection] ssh_options`` accepts only the options in :data:`ALLOWED_SSH_OPTIONS` (keys are
case-insensitive, values are checked), each later passed as its own ``-o`` argument, never through
a shell. ``destination`` must not start with ``-`` (ssh would read it as an option) and must not
contain whitespace or control characters.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence

from rlprune_edge.errors import UserError

_ALGORITHMS = re.compile(r"[+^]?[A-Za-z0-9@._-]+(,[A-Za-z0-9@._-]+)*")


def _yes_no(value: str) -> str | None:
    return value.lower() if value.lower() in ("yes", "no") else None


def _int_in(lo: int, hi: int) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return value if value.isascii() and value.isdigit() and lo <= int(value) <= hi else None

    return check


def _one_of(*choices: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        for c in choices:
            if value.lower() == c.lower():
                return c
        return None

    return check


def _pattern(regex: str) -> Callable[[str], str | None]:
    compiled = re.compile(regex)
    return lambda value: value if compiled.fullmatch(value) else None


# canonical key -> (what the value must be, checker returning the normalised value or None)
ALLOWED_SSH_OPTIONS: dict[str, tuple[str, Callable[[str], str | None]]] = {
    "Port": ("a port number 1-65535", _int_in(1, 65535)),
    "User": ("a user name (letters, digits, '.', '_', '-')", _pattern(r"[A-Za-z0-9._][A-Za-z0-9._-]*")),
    "IdentityFile": ("a key file path without spaces or quotes", _pattern(r"[^\s'\"\\-][^\s'\"\\]*")),
    "IdentitiesOnly": ("yes or no", _yes_no),
    "ConnectTimeout": ("a whole number of seconds 1-3600", _int_in(1, 3600)),
    "ConnectionAttempts": ("a whole number 1-10", _int_in(1, 10)),
    "ServerAliveInterval": ("a whole number of seconds 0-3600", _int_in(0, 3600)),
    "ServerAliveCountMax": ("a whole number 0-100", _int_in(0, 100)),
    "Compression": ("yes or no", _yes_no),
    "AddressFamily": ("any, inet or inet6", _one_of("any", "inet", "inet6")),
    "BatchMode": ("yes (rlprune-edge never lets ssh prompt)", _one_of("yes")),
    # QUIET and FATAL would hide ssh's own error messages, which rlprune-edge passes on
    "LogLevel": (
        "one of INFO, VERBOSE, ERROR, DEBUG, DEBUG1, DEBUG2, DEBUG3",
        _one_of("INFO", "VERBOSE", "ERROR", "DEBUG", "DEBUG1", "DEBUG2", "DEBUG3"),
    ),
    "IPQoS": ("one or two QoS names or numbers (e.g. af21 cs1)", _pattern(r"[A-Za-z0-9]+( [A-Za-z0-9]+)?")),
    "TCPKeepAlive": ("yes or no", _yes_no),
    # algorithm lists only choose among ssh's built-in algorithms: host keys are still verified
    "Ciphers": ("a comma-separated algorithm list", _pattern(_ALGORITHMS.pattern)),
    "MACs": ("a comma-separated algorithm list", _pattern(_ALGORITHMS.pattern)),
    "KexAlgorithms": ("a comma-separated algorithm list", _pattern(_ALGORITHMS.pattern)),
    "HostKeyAlgorithms": ("a comma-separated algorithm list", _pattern(_ALGORITHMS.pattern)),
    "PubkeyAcceptedAlgorithms": ("a comma-separated algorithm list", _pattern(_ALGORITHMS.pattern)),
}
_ALLOWED_BY_LOWER = {k.lower(): k for k in ALLOWED_SSH_OPTIONS}

_JUMP_HINT = (
    "put the jump host in your ~/.ssh/config (Host myboard / HostName ... / ProxyJump me@bastion) "
    "and use its alias as destination"
)
_RUNS_COMMAND = "runs a command on this machine, and a profile is data, never code"
_HOST_KEYS = "changes how host keys are checked, and rlprune-edge never disables host-key checking"
_HOST_KEY_FIX = "remove it and add the board's key with a first manual `ssh` (verify the fingerprint) instead"
# refused by name: key -> (why, what to do instead)
REFUSED_SSH_OPTIONS: dict[str, tuple[str, str]] = {
    "ProxyCommand": (_RUNS_COMMAND, _JUMP_HINT),
    "LocalCommand": (_RUNS_COMMAND, "remove it"),
    "PermitLocalCommand": ("enables LocalCommand, which runs a command on this machine", "remove it"),
    "KnownHostsCommand": (_RUNS_COMMAND, _HOST_KEY_FIX),
    "StrictHostKeyChecking": (_HOST_KEYS, _HOST_KEY_FIX),
    "UserKnownHostsFile": (_HOST_KEYS, _HOST_KEY_FIX),
    "GlobalKnownHostsFile": (_HOST_KEYS, _HOST_KEY_FIX),
    "VerifyHostKeyDNS": (_HOST_KEYS, _HOST_KEY_FIX),
    "ProxyJump": ("is not taken from a profile (a jump host belongs in your own ssh setup)", _JUMP_HINT),
    "Include": ("would read other ssh configuration", "put what you need in your ~/.ssh/config instead"),
    "Match": (
        "would read conditional ssh configuration (Match exec runs commands)",
        "put it in your ~/.ssh/config and use the host's alias as destination",
    ),
}
_REFUSED_BY_LOWER = {k.lower(): k for k in REFUSED_SSH_OPTIONS}
_KEY_VALUE = re.compile(r"\s*([A-Za-z][A-Za-z0-9]*)\s*(?:=|\s)\s*(.*?)\s*")
_EXAMPLE = 'write plain Key=Value, e.g. "ServerAliveInterval=15"'


def _has_control(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def check_ssh_option(opt: str, where: str = "[connection]") -> str:
    """Validate one ``ssh_options`` entry against the allow-list; return it as ``Key=value``.

    `where` starts each error (e.g. ``"profiles/pi.toml: [connection]"``); every refusal is one
    sentence naming the entry and what to do instead.
    """
    entry = f"{where} ssh_options entry {opt!r}"
    if _has_control(opt):
        raise UserError(
            f"{entry} contains a newline, NUL or other control character, which could inject ssh "
            f"configuration; {_EXAMPLE}."
        )
    if opt.lstrip().startswith("-"):
        raise UserError(f"{entry} starts with '-', which ssh would read as a command-line option; {_EXAMPLE}.")
    m = _KEY_VALUE.fullmatch(opt)
    if not m or not m.group(2):
        raise UserError(f"{entry} is not Key=Value; {_EXAMPLE}.")
    key, value = m.group(1), m.group(2)
    refused = _REFUSED_BY_LOWER.get(key.lower())
    if refused is not None:
        why, fix = REFUSED_SSH_OPTIONS[refused]
        raise UserError(f"{entry} is refused: {refused} {why}; {fix}.")
    if value.startswith("-"):
        raise UserError(
            f"{entry} has a value starting with '-', which could be read as an ssh option; {_EXAMPLE}."
        )
    canonical = _ALLOWED_BY_LOWER.get(key.lower())
    if canonical is None:
        close = difflib.get_close_matches(key.lower(), list(_ALLOWED_BY_LOWER), n=1)
        hint = f" (did you mean {_ALLOWED_BY_LOWER[close[0]]!r}?)" if close else ""
        raise UserError(
            f"{entry} is refused: {key} is not an option a profile may set{hint}; allowed: "
            f"{', '.join(ALLOWED_SSH_OPTIONS)} (set anything else for this host in your ~/.ssh/config "
            "and use its alias as destination)."
        )
    what, check = ALLOWED_SSH_OPTIONS[canonical]
    normalised = check(value)
    if normalised is None:
        raise UserError(f"{entry} has an invalid value for {canonical}: expected {what}; fix the profile.")
    return f"{canonical}={normalised}"


def check_ssh_options(options: Sequence[str], where: str = "[connection]") -> list[str]:
    """Validate every ``ssh_options`` entry (see :func:`check_ssh_option`); return them normalised."""
    return [check_ssh_option(opt, where) for opt in options]


def check_ssh_destination(destination: str, where: str = "[connection]") -> str:
    """Refuse a destination ssh would read as an option or that holds whitespace/control characters."""
    fix = "set it to an alias from ~/.ssh/config or user@host"
    if destination.startswith("-"):
        raise UserError(
            f"{where} destination {destination!r} starts with '-', which ssh would read as an option; {fix}."
        )
    if _has_control(destination) or any(ch.isspace() for ch in destination):
        raise UserError(
            f"{where} destination {destination!r} contains whitespace or control characters; {fix}."
        )
    return destination
