"""The SSH transport to a board: the system OpenSSH client, run with argument lists only.

Users' ``~/.ssh/config``, keys, agents and jump hosts work because the plain ``ssh`` binary does
the connecting (``RLPRUNE_EDGE_SSH_CONFIG`` names an alternative config file, passed as ``ssh -F``).
Host keys are always verified: ``BatchMode=yes`` never prompts, and a profile's ``ssh_options`` are
limited to an allow-list of harmless options (:mod:`rlprune_edge.sshopts`), each its own ``-o``.
When ssh itself fails, its own reason (bad host name, unknown host, refused, timed out, no route,
host key, authentication) is passed on with the ``ssh -p PORT -i KEY HOST`` command to try by hand.
Every remote argument is quoted with :func:`shlex.quote` (the remote side runs a shell).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlprune_edge import sshopts
from rlprune_edge.errors import DeviceError, UserError
from rlprune_edge.fsutil import atomic_write_bytes
from rlprune_edge.limits import require_regular_file

SSH_CONFIG_ENV = "RLPRUNE_EDGE_SSH_CONFIG"
# ssh's own reasons for failing, as (kind, lower-case phrases of its stderr); the first match wins.
# All but "handshake" and "dropped" are deterministic: retrying cannot help, so they are not retried.
SSH_FAILURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bad_hostname", ("hostname contains invalid characters",)),
    ("host_key", ("host key verification failed", "remote host identification has changed", "no ed25519 host key")),
    ("auth", ("permission denied (", "too many authentication failures")),
    (
        "resolve",
        (
            "could not resolve hostname",
            "name or service not known",
            "temporary failure in name resolution",
            "nodename nor servname",
        ),
    ),
    ("refused", ("connection refused",)),
    ("timeout", ("connection timed out", "operation timed out")),
    ("no_route", ("no route to host", "network is unreachable", "host is unreachable")),
    ("handshake", ("kex_exchange_identification", "banner exchange", "ssh_exchange_identification")),
    (
        "dropped",
        (
            "closed by remote host",
            "connection reset",
            "broken pipe",
            "server not responding",
            "client_loop",
            "packet_write_wait",
            "connection closed by",
        ),
    ),
)
_RETRYABLE_KINDS = ("handshake", "dropped", "unknown")


@dataclass(frozen=True)
class SshResult:
    """What one ssh invocation returned."""

    rc: int
    stdout: bytes
    stderr: str
    seconds: float


def remote_path_expr(work_dir: str, rel: str = "") -> str:
    """A quoted shell expression for ``<work_dir>/<rel>`` on the board.

    A leading ``~`` and relative paths (ssh starts in the home directory) become ``"$HOME"/...``,
    so the path stays valid after the remote command changes directory.
    """
    base = work_dir.rstrip("/") or ("/" if work_dir.startswith("/") else "")
    path = f"{base}/{rel}" if base and rel else (base or rel)
    path = path.replace("//", "/")
    if path in ("", "~", "."):
        return '"$HOME"'
    if path.startswith("~/"):
        path = path[2:]
    elif path.startswith("/"):
        return shlex.quote(path)
    return '"$HOME"/' + shlex.quote(path)


def remote_command_expr(command: str) -> str:
    """The profile's remote python (``python3``, ``~/venv/bin/python``, ``python3 -I``) as quoted words."""
    words = shlex.split(command)
    if not words:
        raise UserError('[connection] python is empty; set it to the board\'s python3 (e.g. "python3").')
    first = (
        remote_path_expr(words[0]) if "/" in words[0] or words[0].startswith("~") else shlex.quote(words[0])
    )
    return " ".join([first, *(shlex.quote(w) for w in words[1:])])


def check_ssh_options(options: Sequence[str], where: str = "[connection]") -> list[str]:
    """Validate extra ``-o Key=Value`` options against the allow-list (:mod:`rlprune_edge.sshopts`)."""
    return sshopts.check_ssh_options(options, where)


def classify_ssh_stderr(stderr: str) -> tuple[str, str]:
    """(kind, ssh's own line) for what ssh printed when it exited 255.

    kind is one of :data:`SSH_FAILURES`' kinds (``bad_hostname``, ``host_key``, ``auth``,
    ``resolve``, ``refused``, ``timeout``, ``no_route``, ``handshake``, ``dropped``) or ``unknown``;
    the line is the stderr line that matched (for ``unknown``: the last lines, possibly empty).
    """
    lines = [ln.strip().strip("@").strip() for ln in stderr.splitlines()]  # "@ WARNING: ... @" banners
    lines = [ln for ln in lines if ln]
    for kind, phrases in SSH_FAILURES:
        for ln in lines:
            low = ln.lower()
            if any(s in low for s in phrases):
                return kind, ln
    return "unknown", tail(stderr, 2)


def tail(text: str, n: int = 6) -> str:
    """The last `n` non-blank lines of `text`, joined with `` | ``."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


class SshTransport:
    """Runs shell commands on one board over ssh and turns ssh's failures into one-sentence errors.

    Checks the destination, ``ssh_options`` and config file when built (UserError). Every call is
    recorded in ``attempts`` as (step, ssh exit code; -1 for a local timeout).
    """

    def __init__(self, connection: Any, *, where: str, ssh_config: str | os.PathLike | None = None):
        self.connection = connection
        sshopts.check_ssh_destination(connection.destination, where)
        self.options = check_ssh_options(connection.ssh_options, where)
        cfg = ssh_config if ssh_config is not None else os.environ.get(SSH_CONFIG_ENV, "")
        self.config = Path(cfg).expanduser() if cfg else None
        if self.config is not None:
            require_regular_file(self.config, f"ssh config file (from {SSH_CONFIG_ENV})", "fix the path or unset it.")
        self.host = connection.destination + (f":{connection.port}" if connection.port else "")
        self.attempts: list[tuple[str, int]] = []

    def path(self, rel: str = "") -> str:
        """The quoted shell expression of ``<work_dir>/<rel>`` on the board."""
        return remote_path_expr(self.connection.work_dir, rel)

    def argv(self, remote_command: str) -> list[str]:
        """The local argument list that runs `remote_command` (a shell string) on the board."""
        conn = self.connection
        argv = ["ssh"]
        if self.config is not None:
            argv += ["-F", str(self.config)]
        argv += [
            "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={max(1, round(conn.connect_timeout_s))}",
            "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=4",
        ]  # fmt: skip
        if conn.port:
            argv += ["-p", str(conn.port)]
        if conn.identity_file:
            argv += ["-i", str(Path(conn.identity_file).expanduser())]
        for opt in self.options:
            argv += ["-o", opt]
        argv += ["-T", "--", conn.destination, remote_command]
        return argv

    def run(
        self, remote_command: str, *, step: str, stdin: bytes | None = None, timeout: float | None = None
    ) -> SshResult:
        """Run `remote_command` on the board once (no retry); the result whatever its exit code."""
        conn = self.connection
        timeout = timeout or conn.command_timeout_s
        t0 = time.monotonic()
        try:
            done = subprocess.run(
                self.argv(remote_command),
                input=stdin if stdin is not None else b"",
                capture_output=True,
                timeout=timeout + conn.connect_timeout_s + 15,  # the board's own timeout fires first
                check=False,
            )
        except FileNotFoundError:
            raise DeviceError(
                "the OpenSSH client `ssh` is not installed on this machine; install it "
                "(Debian/Ubuntu: sudo apt install openssh-client) and retry."
            ) from None
        except subprocess.TimeoutExpired:
            self.attempts.append((step, -1))
            raise DeviceError(
                f"host {self.host}: step '{step}' took longer than {timeout:g} s; check that the board is not "
                "overloaded or raise [connection] command_timeout_s in the profile."
            ) from None
        result = SshResult(
            done.returncode, done.stdout, done.stderr.decode(errors="replace"), time.monotonic() - t0
        )
        self.attempts.append((step, result.rc))
        return result

    def fetch(self, remote_rel: str, local_path: str | os.PathLike, *, step: str = "fetch") -> Path:
        """Copy ``<work_dir>/<remote_rel>`` from the board to `local_path` (atomically; one retry)."""
        res = self.run(f"cat {self.path(remote_rel)}", step=step)
        if res.rc != 0 and self.retryable(res):
            res = self.run(f"cat {self.path(remote_rel)}", step=step)
        if res.rc != 0:
            raise self.fail(res, step, f"check that {remote_rel} exists under the work dir on the board")
        out = Path(local_path)
        atomic_write_bytes(out, res.stdout)
        return out

    def manual_command(self, program: str = "ssh") -> str:
        """The command a user can paste to reach the board by hand (port, key, config and options included)."""
        conn = self.connection
        words = [program]
        if self.config is not None:
            words += ["-F", str(self.config)]
        if conn.port:
            words += ["-p", str(conn.port)]
        if conn.identity_file:
            words += ["-i", str(Path(conn.identity_file).expanduser())]
        for opt in self.options:
            words += ["-o", opt]
        words.append(conn.destination)
        return shlex.join(words)

    def connection_error(self, res: SshResult) -> DeviceError | None:
        """A DeviceError passing on ssh's own reason for a deterministic failure (no retry), else None."""
        if res.rc != 255:
            return None
        kind, said = classify_ssh_stderr(res.stderr)
        cannot = f"host {self.host}: cannot connect (step 'connect'): ssh says \"{said}\""
        by_hand = f"then try `{self.manual_command()}` by hand"
        advice = {
            "bad_hostname": "fix [connection] destination in the profile (an alias from ~/.ssh/config or "
            f"user@host, with letters, digits, '.' and '-' in the host name), {by_hand}.",
            "resolve": "check the spelling of [connection] destination (or its Host alias in ~/.ssh/config) "
            f"and that this machine's DNS knows the board, {by_hand}.",
            "refused": "the board answered but nothing accepts ssh on that port: check that sshd runs on "
            f"the board and the port in the profile, {by_hand}.",
            "no_route": "check that the board is powered and on the same network (or VPN) as this machine "
            f"and its address, {by_hand}.",
        }
        if kind in advice:
            return DeviceError(f"{cannot}; {advice[kind]}")
        if kind == "timeout":
            return DeviceError(
                f"{cannot} (connect timeout {self.connection.connect_timeout_s:g} s); check that the board is "
                f"powered and on the network and the destination/port in the profile, {by_hand}."
            )
        if kind == "host_key":
            return DeviceError(
                f"host {self.host}: the board's host key is not in known_hosts or has changed (step 'connect': "
                f"ssh says \"{said}\"); run `{self.manual_command()}` once by hand, verify the fingerprint and "
                "accept it — rlprune-edge never disables host-key checking."
            )
        if kind == "auth":
            return DeviceError(
                f"host {self.host}: ssh authentication failed (step 'connect': ssh says \"{said}\"); install your "
                f"key on the board (`{self.manual_command('ssh-copy-id')}`), set identity_file in the profile "
                "or load it into ssh-agent."
            )
        return None

    def fail(self, res: SshResult, step: str, what: str) -> DeviceError:
        """The error for a failed call: ssh's own reason, a drop, a killed process, or `what` to check."""
        err = self.connection_error(res)
        if err is not None:
            return err
        detail = tail(res.stderr) or tail(res.stdout.decode(errors="replace")) or "no output"
        if res.rc == 255:
            kind, said = classify_ssh_stderr(res.stderr)
            if kind == "dropped":
                hint = "the connection dropped mid-session; check the board's network and power supply"
            elif kind == "handshake":
                hint = (
                    f"the connection closed during the SSH handshake (ssh says \"{said}\"): check that the port "
                    f"is the board's ssh port and that its sshd is not overloaded, then try "
                    f"`{self.manual_command()}` by hand"
                )
            else:
                hint = f"ssh gave no known reason; run `{self.manual_command()}` by hand to see why"
        elif res.rc >= 128:
            hint = f"the remote process was killed by signal {res.rc - 128}; check the board's memory (dmesg) and temperature"
        else:
            hint = what
        return DeviceError(f"host {self.host}: step '{step}' failed (exit {res.rc}: {detail}); {hint}.")

    @staticmethod
    def retryable(res: SshResult) -> bool:
        """Worth one more try: a dropped or unexplained ssh failure, or a remote process killed by a signal."""
        if res.rc == 255:
            return classify_ssh_stderr(res.stderr)[0] in _RETRYABLE_KINDS
        return res.rc >= 128  # killed by a signal (128 + signal number)
