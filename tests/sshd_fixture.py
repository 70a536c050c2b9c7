"""A real OpenSSH server on a loopback port that plays a remote board in tests.

``start_board(tmp)`` generates a throwaway host key and client key with ``ssh-keygen``, writes
an ``sshd_config`` (loopback only, key auth only, ``PidFile none``, ``UsePAM no``), a throwaway
known_hosts holding the host key and an ssh client config with a ``Host`` alias, then runs
``/usr/sbin/sshd -D -e -f <config>`` as the current user. The caller points the backend at the
alias with ``RLPRUNE_EDGE_SSH_CONFIG=<client config>`` (passed to ``ssh -F``).
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
ALIAS = "rlprune-test-board"


@dataclass
class Board:
    """A running sshd and the client-side files that reach it."""

    root: Path
    port: int
    ssh_config: Path
    known_hosts: Path
    client_key: Path
    process: subprocess.Popen
    log: Path
    alias: str = ALIAS

    def profile(
        self,
        path: Path,
        *,
        name: str = "fixture-board",
        destination: str | None = None,
        python: str | None = None,
        work_dir: Path | None = None,
        connect_timeout_s: float = 5,
        command_timeout_s: float = 120,
        warmup: int = 2,
        runs: int = 5,
        blocks: int = 2,
        port: int = 0,
    ) -> Path:
        """Write a profile TOML aimed at this board; returns its path."""
        work = work_dir or (self.root / "remote-work")
        text = f"""name = "{name}"
description = "test board: a local sshd on port {self.port}"

[runtime]
name = "onnxruntime"
provider = "CPUExecutionProvider"
threads = 1
inter_op_threads = 1
graph_optimization = "all"

[measure]
warmup = {warmup}
runs = {runs}
blocks = {blocks}
decision_runs = 32
decision_windows = 2
decision_sessions = 2
decision_pause_s = 0

[connection]
kind = "ssh"
destination = "{destination or self.alias}"
port = {port}
work_dir = "{work}"
python = "{python or sys.executable}"
connect_timeout_s = {connect_timeout_s}
command_timeout_s = {command_timeout_s}
"""
        path.write_text(text)
        return path

    def stop(self) -> None:
        """Terminate sshd (its per-connection children exit with their sessions)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rlprune-edge-test", "-f", str(path)],
        check=True,
        capture_output=True,
    )


def _wait_listening(port: int, proc: subprocess.Popen, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.settimeout(2.0)
                if s.recv(4).startswith(b"SSH-"):
                    return True
        except OSError:
            time.sleep(0.1)
    return False


def start_board(tmp: Path) -> Board:
    """Start sshd on a free loopback port with throwaway keys under `tmp`; raises RuntimeError on failure."""
    tmp.mkdir(parents=True, exist_ok=True)
    host_key, client_key = tmp / "ssh_host_ed25519_key", tmp / "client_ed25519"
    _keygen(host_key)
    _keygen(client_key)
    authorized = tmp / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    authorized.chmod(0o600)
    if os.geteuid() == 0:
        # Debian's sshd refuses to start as root without its privilege-separation directory
        # (systemd normally creates it); creating it is what the package's unit does.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    user = getpass.getuser()
    host_pub = host_key.with_suffix(".pub").read_text().split()
    known_hosts = tmp / "known_hosts"
    ssh_config = tmp / "ssh_config"
    log = tmp / "sshd.log"
    last_error = ""
    for _ in range(3):
        port = free_port()
        sshd_config = tmp / "sshd_config"
        sshd_config.write_text(
            "\n".join(
                [
                    f"Port {port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {host_key}",
                    "PidFile none",
                    "UsePAM no",
                    "StrictModes no",
                    f"AuthorizedKeysFile {authorized}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    f"AllowUsers {user}",
                    "X11Forwarding no",
                    "AllowTcpForwarding no",
                    "PrintMotd no",
                    "MaxStartups 50",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
        ssh_config.write_text(
            "\n".join(
                [
                    f"Host {ALIAS}",
                    "  HostName 127.0.0.1",
                    f"  Port {port}",
                    f"  User {user}",
                    f"  IdentityFile {client_key}",
                    "  IdentitiesOnly yes",
                    "  IdentityAgent none",
                    f"  UserKnownHostsFile {known_hosts}",
                    "  GlobalKnownHostsFile /dev/null",
                    "  StrictHostKeyChecking yes",
                    "  LogLevel ERROR",
                    "",
                ]
            )
        )
        with log.open("ab") as log_fh:
            proc = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(sshd_config)],
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=log_fh,
            )
        if _wait_listening(port, proc):
            return Board(tmp, port, ssh_config, known_hosts, client_key, proc, log)
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
        last_error = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"sshd did not start: {last_error}")
