"""Measure on a remote board through the system OpenSSH client.

Users' ``~/.ssh/config``, keys, agents and jump hosts work because the plain ``ssh`` binary does
the connecting (``RLPRUNE_EDGE_SSH_CONFIG`` names an alternative config file, passed as ``ssh -F``).
Host keys are always verified: ``BatchMode=yes`` never prompts, and a profile's ``ssh_options`` are
limited to an allow-list of harmless options (:mod:`rlprune_edge.sshopts`), each its own ``-o``.
When ssh itself fails, its own reason (bad host name, unknown host, refused, timed out, no route,
host key, authentication) is passed on with the ``ssh -p PORT -i KEY HOST`` command to try by hand.
The self-contained runner folder (``rlprune_edge/board``) and each model are copied
content-addressed under the profile's work dir::

    <work_dir>/runner-<hash of the runner files>/runner.py ...
    <work_dir>/blobs/<sha256>.onnx

and are not re-sent while unchanged. Every remote argument is quoted with :func:`shlex.quote`
(the remote side runs a shell); locally only argument lists are used. A dropped connection or a
runner killed mid-measurement is retried once; then a :class:`DeviceError` names the host, the
step (connect / copy runner / copy model / measure / parse) and what to check. Successful
single-model measurements are cached per (profile + runtime options + measurement settings,
model sha256) under ``$RLPRUNE_EDGE_CACHE`` (default ``~/.cache/rlprune-edge``), written atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlprune_edge import sshopts
from rlprune_edge.errors import DeviceError, UserError
from rlprune_edge.fsutil import atomic_write_bytes

if TYPE_CHECKING:
    from rlprune_edge.latency.backend import Measurement
    from rlprune_edge.profiles import Profile

SSH_CONFIG_ENV = "RLPRUNE_EDGE_SSH_CONFIG"
CACHE_ENV = "RLPRUNE_EDGE_CACHE"
NO_CACHE_ENV = "RLPRUNE_EDGE_NO_REMOTE_CACHE"  # set to 1 to always measure afresh (results are still stored)
MISSING_EXIT = 86  # our remote wrapper: the runner or a model is not on the board yet
MISSING_MARK = "RLPRUNE_EDGE_MISSING"
RECEIVE_FAILED_EXIT = 87  # copying the runner or a model onto the board failed
RECEIVE_MARK = "RLPRUNE_EDGE_RECEIVE_FAILED"
BOARD_BLOB_BYTES = 2 << 30  # bytes of models kept on the board (least recently sent or used go first)
BOARD_TIMEOUT_EXIT = 124  # coreutils `timeout` on the board stopped the runner
RUNTIME_MISSING_EXIT = 3  # runner.py: {"error": "missing_runtime", "package": ...}
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
_NO_MODULE = re.compile(r"No module named '([\w.]+)'")

# Runs on the board with the remote python before the runner when something is missing: read a tar
# stream from stdin into a temp dir under the work dir, verify each file's sha256, then publish
# atomically (files with os.replace, the runner folder by renaming a complete temp dir).
# Then blobs/ is trimmed to KEEP_BYTES, oldest first, sparing what this call uses ("keep:<rel>",
# whose mtime is refreshed), so a long search cannot fill the board's disk with candidates.
# argv: WORK_DIR KEEP_BYTES ITEM...  with ITEM = "file:<rel>:<sha256>", "dir:<rel>" or "keep:<rel>".
# Python >= 3.6, stdlib only.
_RECEIVE = r"""
import hashlib, os, shutil, sys, tarfile, tempfile
work, keep_bytes, items = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
os.makedirs(work, exist_ok=True)
tmp = tempfile.mkdtemp(dir=work, prefix=".incoming-")
try:
    kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tf:
        tf.extractall(tmp, **kw)
    used = set()
    for item in items:
        parts = item.split(":", 2)
        src, dst = os.path.join(tmp, parts[1]), os.path.join(work, parts[1])
        used.add(os.path.abspath(dst))
        if parts[0] == "keep":
            if os.path.exists(dst):
                os.utime(dst, None)
        elif parts[0] == "file":
            h = hashlib.sha256()
            with open(src, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            if h.hexdigest() != parts[2]:
                sys.stderr.write("checksum mismatch for %s\n" % parts[1])
                sys.exit(1)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.replace(src, dst)
        else:
            try:
                os.rename(src, dst)
            except OSError:
                if not os.path.isfile(os.path.join(dst, "runner.py")):
                    raise
finally:
    shutil.rmtree(tmp, ignore_errors=True)
blob_dir = os.path.join(work, "blobs")
blobs = []
for name in os.listdir(blob_dir) if os.path.isdir(blob_dir) else []:
    path = os.path.abspath(os.path.join(blob_dir, name))
    try:
        st = os.stat(path)
    except OSError:
        continue
    blobs.append((st.st_mtime, st.st_size, path))
total = sum(size for _, size, _ in blobs)
for _, size, path in sorted(blobs):
    if total <= keep_bytes:
        break
    if path not in used:
        try:
            os.remove(path)
            total -= size
        except OSError:
            pass
"""


@dataclass(frozen=True)
class SshResult:
    """What one ssh invocation returned."""

    rc: int
    stdout: bytes
    stderr: str
    seconds: float


@dataclass(frozen=True)
class Blob:
    """A local file and where its content-addressed copy lives on the board."""

    kind: str  # "model" or "file"
    local: Path
    sha256: str
    remote_rel: str  # relative to the work dir, e.g. "blobs/<sha>.onnx"


def board_dir() -> Path:
    """The runner folder copied to boards (``rlprune_edge/board``)."""
    return Path(__file__).resolve().parent.parent / "board"


def runner_files(folder: Path | None = None) -> list[Path]:
    """The files that make up the runner (every ``*.py`` in the board folder), sorted."""
    folder = folder or board_dir()
    return sorted(p for p in folder.glob("*.py") if p.is_file())


def runner_hash(folder: Path | None = None) -> str:
    """Short content hash of the runner files (names and bytes)."""
    h = hashlib.sha256()
    for p in runner_files(folder):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_root() -> Path:
    """The user cache dir: ``$RLPRUNE_EDGE_CACHE`` or ``~/.cache/rlprune-edge``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rlprune-edge"


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
    return "unknown", _tail(stderr, 2)


def _classify(stderr: str) -> str | None:
    """The kind of ssh's own deterministic failure (not worth a retry), else None."""
    kind, _ = classify_ssh_stderr(stderr)
    return None if kind in _RETRYABLE_KINDS else kind


def _tail(text: str, n: int = 6) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def _write_atomic(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)


class RemoteBackend:
    """The latency-backend protocol, measured on a board reached over ssh."""

    def __init__(
        self, profile: Profile, *, ssh_config: str | os.PathLike | None = None, use_cache: bool = True
    ):
        conn = profile.connection
        if conn.kind != "ssh" or not conn.destination:
            raise UserError(
                f'profile {profile.name!r}: [connection] needs kind = "ssh" and a destination for a remote board.'
            )
        self.profile = profile
        self.name = f"{profile.runtime.name}@ssh"
        where = f"profile {profile.name!r}: [connection]"
        sshopts.check_ssh_destination(conn.destination, where)
        self.ssh_options = check_ssh_options(conn.ssh_options, where)
        cfg = ssh_config if ssh_config is not None else os.environ.get(SSH_CONFIG_ENV, "")
        self.ssh_config = Path(cfg).expanduser() if cfg else None
        if self.ssh_config is not None and not self.ssh_config.is_file():
            raise UserError(
                f"ssh config file {self.ssh_config} (from {SSH_CONFIG_ENV}) does not exist; fix the path or unset it."
            )
        self.use_cache = use_cache
        self.host = conn.destination + (f":{conn.port}" if conn.port else "")
        self.runner_id = runner_hash()
        self.transfers: list[tuple[str, str]] = []  # (kind, sha) of every copy actually sent
        self.attempts: list[tuple[str, int]] = []  # (step, ssh exit code) of every ssh call

    # ------------------------------------------------------------------ ssh plumbing
    def ssh_argv(self, remote_command: str) -> list[str]:
        """The local argument list that runs `remote_command` (a shell string) on the board."""
        conn = self.profile.connection
        argv = ["ssh"]
        if self.ssh_config is not None:
            argv += ["-F", str(self.ssh_config)]
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
        for opt in self.ssh_options:
            argv += ["-o", opt]
        argv += ["-T", "--", conn.destination, remote_command]
        return argv

    def _ssh(
        self, remote_command: str, *, step: str, stdin: bytes | None = None, timeout: float | None = None
    ) -> SshResult:
        conn = self.profile.connection
        timeout = timeout or conn.command_timeout_s
        t0 = time.monotonic()
        try:
            done = subprocess.run(
                self.ssh_argv(remote_command),
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

    def manual_command(self, program: str = "ssh") -> str:
        """The command a user can paste to reach the board by hand (port, key, config and options included)."""
        conn = self.profile.connection
        words = [program]
        if self.ssh_config is not None:
            words += ["-F", str(self.ssh_config)]
        if conn.port:
            words += ["-p", str(conn.port)]
        if conn.identity_file:
            words += ["-i", str(Path(conn.identity_file).expanduser())]
        for opt in self.ssh_options:
            words += ["-o", opt]
        words.append(conn.destination)
        return shlex.join(words)

    def _connection_error(self, res: SshResult, step: str) -> DeviceError | None:
        """A DeviceError passing on ssh's own reason for a deterministic failure (no retry), else None."""
        if res.rc != 255:
            return None
        kind, said = classify_ssh_stderr(res.stderr)
        conn = self.profile.connection
        cannot = f"host {self.host}: cannot connect (step 'connect'): ssh says \"{said}\""
        by_hand = f"then try `{self.manual_command()}` by hand"
        if kind == "bad_hostname":
            return DeviceError(
                f"{cannot}; fix [connection] destination in the profile (an alias from ~/.ssh/config or "
                f"user@host, with letters, digits, '.' and '-' in the host name), {by_hand}."
            )
        if kind == "resolve":
            return DeviceError(
                f"{cannot}; check the spelling of [connection] destination (or its Host alias in ~/.ssh/config) "
                f"and that this machine's DNS knows the board, {by_hand}."
            )
        if kind == "refused":
            return DeviceError(
                f"{cannot}; the board answered but nothing accepts ssh on that port: check that sshd runs on "
                f"the board and the port in the profile, {by_hand}."
            )
        if kind == "timeout":
            return DeviceError(
                f"{cannot} (connect timeout {conn.connect_timeout_s:g} s); check that the board is powered and on "
                f"the network and the destination/port in the profile, {by_hand}."
            )
        if kind == "no_route":
            return DeviceError(
                f"{cannot}; check that the board is powered and on the same network (or VPN) as this machine "
                f"and its address, {by_hand}."
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

    def _fail(self, res: SshResult, step: str, what: str) -> DeviceError:
        err = self._connection_error(res, step)
        if err is not None:
            return err
        detail = _tail(res.stderr) or _tail(res.stdout.decode(errors="replace")) or "no output"
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
    def _retryable(res: SshResult) -> bool:
        if res.rc == 255:
            return _classify(res.stderr) is None
        return res.rc >= 128  # killed by a signal (128 + signal number)

    # ------------------------------------------------------------------ copying
    def _path(self, rel: str = "") -> str:
        return remote_path_expr(self.profile.connection.work_dir, rel)

    @property
    def runner_rel(self) -> str:
        """The runner folder relative to the work dir."""
        return f"runner-{self.runner_id}"

    def _payload(
        self, missing: Sequence[str], blobs: Sequence[Blob]
    ) -> tuple[bytes, list[str], list[tuple[str, str]]]:
        """A tar stream of the missing runner and blobs, the receive items, and (kind, id) per copy."""
        buf = io.BytesIO()
        items: list[str] = []
        sent: list[tuple[str, str]] = []
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:

            def add(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tf.addfile(info, io.BytesIO(data))

            if "runner" in missing:
                for f in runner_files():
                    add(f"{self.runner_rel}/{f.name}", f.read_bytes())
                items.append(f"dir:{self.runner_rel}")
                sent.append(("runner", self.runner_id))
            for i in sorted({int(x) for x in missing if x.isdigit()}):
                b = blobs[i]
                add(b.remote_rel, b.local.read_bytes())
                items.append(f"file:{b.remote_rel}:{b.sha256}")
                sent.append(("model", b.sha256))
        return buf.getvalue(), items, sent

    @staticmethod
    def blob(path: str | os.PathLike, kind: str = "model") -> Blob:
        """Describe a local file for content-addressed copying (``blobs/<sha256><suffix>``)."""
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{p} does not exist or is not a file; give the path of an existing file.")
        sha = file_sha256(p)
        suffix = p.suffix if p.suffix and p.suffix[1:].isalnum() else ".bin"
        return Blob(kind, p, sha, f"blobs/{sha}{suffix}")

    # ------------------------------------------------------------------ running the runner
    def run_runner(
        self,
        args: Sequence[str],
        blobs: Sequence[Blob] = (),
        *,
        step: str,
        timeout: float | None = None,
        mkdirs: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Run ``runner.py <args>`` on the board (copying runner and blobs when absent); return its JSON.

        ``{blob:i}`` in `args` becomes the remote path of ``blobs[i]``, ``{path:REL}`` the remote
        ``<work_dir>/REL``; `mkdirs` (relative to the work dir) are created first. One retry on a dropped
        connection or a killed runner; runner errors become DeviceError.
        """
        runner_dir = self._path(self.runner_rel)
        checks = [f'[ -f {runner_dir}/runner.py ] || m="$m runner"']
        for i, b in enumerate(blobs):
            checks.append(f'[ -f {self._path(b.remote_rel)} ] || m="$m {i}"')
        words = []
        for a in args:
            if a.startswith("{blob:") and a.endswith("}"):
                words.append(self._path(blobs[int(a[6:-1])].remote_rel))
            elif a.startswith("{path:") and a.endswith("}"):
                words.append(self._path(a[6:-1]))
            else:
                words.append(shlex.quote(a))
        py = remote_command_expr(self.profile.connection.python)
        limit = max(1, int(timeout or self.profile.connection.command_timeout_s))
        script = (
            'm=""; ' + "; ".join(checks) + "; "
            f'if [ -n "$m" ]; then echo "{MISSING_MARK}$m"; exit {MISSING_EXIT}; fi; '
            # the board stops an overrunning runner itself (coreutils timeout, where present)
            + f't=""; command -v timeout >/dev/null 2>&1 && t="timeout -k 5 {limit}"; '
            + "".join(f"mkdir -p {self._path(d)} && " for d in mkdirs)
            + f"cd {runner_dir} && $t {py} runner.py {' '.join(words)}"
        )
        command, payload, retried = script, None, False
        while True:
            res = self._ssh(command, step=step, timeout=timeout, stdin=payload)
            if res.rc == MISSING_EXIT and MISSING_MARK.encode() in res.stdout:
                if payload is not None:
                    raise DeviceError(
                        f"host {self.host}: step 'copy' failed: files copied to {self.profile.connection.work_dir} "
                        "vanished before the runner started; check that nothing else cleans that directory."
                    )
                missing = res.stdout.decode(errors="replace").split(MISSING_MARK, 1)[1].split()
                payload, items, sent = self._payload(missing, blobs)
                self.transfers.extend(sent)
                items += [f"keep:{b.remote_rel}" for b in blobs]
                receive = f"{py} -c {shlex.quote(_RECEIVE)} {self._path()} {BOARD_BLOB_BYTES} " + " ".join(
                    shlex.quote(x) for x in items
                )
                command = f"{receive} || {{ echo {RECEIVE_MARK} >&2; exit {RECEIVE_FAILED_EXIT}; }}; {script}"
                continue
            if res.rc == RECEIVE_FAILED_EXIT and RECEIVE_MARK in res.stderr:
                copy_step = "copy runner" if "runner" in missing else "copy model"
                raise self._fail(
                    res,
                    copy_step,
                    f"check that the remote python ({self.profile.connection.python}) runs and that "
                    f"{self.profile.connection.work_dir} on the board is writable and has free space",
                )
            if res.rc == BOARD_TIMEOUT_EXIT:
                raise DeviceError(
                    f"host {self.host}: step '{step}' ran longer than {limit} s on the board and was stopped; "
                    "raise [connection] command_timeout_s in the profile or lower the number of runs."
                )
            if res.rc == RUNTIME_MISSING_EXIT:
                doc = self._parse_error_doc(res) or {}
                if doc.get("error") == "missing_provider":
                    raise DeviceError(
                        f"host {self.host}: {doc.get('message')}; install an onnxruntime build with it."
                    )
                raise self._missing_runtime(str(doc.get("package") or "the runtime"))
            unimportable = _NO_MODULE.search(res.stderr) if 0 < res.rc < 128 else None
            if unimportable:  # the runner died importing a package (e.g. numpy) before it could report it
                raise self._missing_runtime(unimportable.group(1).split(".")[0])
            if res.rc == 0:
                try:
                    doc = json.loads(res.stdout.decode(errors="replace"))
                    if not isinstance(doc, dict):
                        raise ValueError("not a JSON object")
                except ValueError as exc:
                    if not retried:
                        retried = True
                        continue
                    raise DeviceError(
                        f"host {self.host}: step 'parse' failed: the runner's output is not one JSON document ({exc}); "
                        f"output starts {res.stdout[:200]!r}; check that nothing on the board prints to stdout at login."
                    ) from None
                return doc
            if self._retryable(res) and not retried:
                retried = True
                continue
            runner_error = self._runner_error(res)
            if runner_error is not None:
                raise runner_error
            raise self._fail(
                res, step, "see the runner's message above; run the same command on the board to debug"
            )

    def _parse_error_doc(self, res: SshResult) -> dict[str, Any] | None:
        try:
            doc = json.loads(res.stdout.decode(errors="replace"))
        except ValueError:
            return None
        return doc if isinstance(doc, dict) and "error" in doc else None

    def _missing_runtime(self, package: str) -> DeviceError:
        if package in ("tensorrt", "pycuda", "cuda-python") or self.profile.runtime.name == "tensorrt":
            how = (
                f"TensorRT ships with JetPack: `sudo apt install python3-libnvinfer` (and `pip install {package}` "
                "for pycuda/cuda-python) on the board"
                if package != "tensorrt"
                else "TensorRT ships with JetPack: install it on the board with `sudo apt install python3-libnvinfer`"
            )
        elif package == "numpy":
            how = "install it on the board with `sudo apt install python3-numpy` (or `pip install numpy`)"
        else:
            how = f"install it on the board with `pip install {package}` (see devices/README.md)"
        py = self.profile.connection.python
        return DeviceError(
            f"host {self.host}: the remote python ({py}) lacks the package '{package}'; {how}."
        )

    def _runner_error(self, res: SshResult) -> DeviceError | None:
        doc = self._parse_error_doc(res)
        if doc is None:
            return None
        msg = doc.get("message") or doc.get("error")
        return DeviceError(f"host {self.host}: the runner on the board reported: {msg}.")

    # ------------------------------------------------------------------ cache
    def cache_key(self, sha: str, *, args: Sequence[str], per_layer: bool) -> str:
        """Key of a cached measurement: profile, host, runtime and measurement options, runner and model sha256."""
        p = self.profile
        ident = {
            "profile": p.name,
            "destination": self.host,
            "runtime": asdict(p.runtime),
            "input": [p.input.batch, list(p.input.shape)],
            "args": list(args),
            "per_layer": bool(per_layer),
            "runner": self.runner_id,
            "model": sha,
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]

    def cache_path(self, key: str) -> Path:
        """Where a cached measurement lives."""
        return cache_root() / "remote" / f"{key}.json"

    def _cache_get(self, key: str) -> dict[str, Any] | None:
        if not self.use_cache or os.environ.get(NO_CACHE_ENV, "").lower() in ("1", "true", "yes", "on"):
            return None
        try:
            entry = json.loads(self.cache_path(key).read_text())
        except (OSError, ValueError):
            return None
        return entry.get("measurement") if isinstance(entry, dict) else None

    def _cache_put(self, key: str, doc: dict[str, Any]) -> None:
        if not self.use_cache:
            return
        entry = {"profile": self.profile.name, "host": self.host, "created": time.time(), "measurement": doc}
        try:
            _write_atomic(self.cache_path(key), json.dumps(entry).encode())
        except OSError:
            pass  # a cache that cannot be written only costs a re-measurement

    # ------------------------------------------------------------------ backend protocol
    def _measure_args(self, warmup: int | None, runs: int | None) -> list[str]:
        from rlprune_edge.latency.backend import runner_args

        m = self.profile.measure
        w = m.warmup if warmup is None else int(warmup)
        r = m.runs if runs is None else int(runs)
        return [*runner_args(self.profile), "--warmup", str(w), "--runs", str(r)]

    def _model_blob(self, onnx_path: str | os.PathLike) -> Blob:
        from rlprune_edge.latency.onnxruntime import check_onnx_file

        return self.blob(check_onnx_file(onnx_path))

    def measure(
        self,
        onnx_path: str | os.PathLike,
        *,
        warmup: int | None = None,
        runs: int | None = None,
        per_layer: bool = False,
    ) -> Measurement:
        """Measure one ONNX model on the board (cached per profile, settings and model hash)."""
        from rlprune_edge.latency.backend import Measurement

        blob = self._model_blob(onnx_path)
        args = ["measure", "--model", "{blob:0}", *self._measure_args(warmup, runs)]
        key = self.cache_key(blob.sha256, args=args, per_layer=per_layer)
        cached = self._cache_get(key)
        if cached is not None:
            try:
                return Measurement.from_dict(cached)
            except ValueError:
                pass  # an entry from another version: measure again and overwrite it
        if per_layer:
            args.append("--per-layer")
        doc = self.run_runner(args, [blob], step="measure")
        m = self._parse(doc, 1)[0]
        self._cache_put(key, m.to_dict())
        return m

    def compare(
        self,
        onnx_paths: Sequence[str | os.PathLike],
        *,
        blocks: int | None = None,
        warmup: int | None = None,
        runs: int | None = None,
    ) -> list[Measurement]:
        """Measure models in interleaved blocks in one window on the board; ``ratio`` vs the first (never cached)."""
        if not onnx_paths:
            raise UserError("compare needs at least one ONNX model.")
        blobs = [self._model_blob(p) for p in onnx_paths]
        blocks = self.profile.measure.blocks if blocks is None else int(blocks)
        args = ["measure", "--model", "{blob:0}", *self._measure_args(warmup, runs)]
        if len(blobs) > 1:  # a single model is a plain measurement with the same settings
            args += ["--compare", *(f"{{blob:{i}}}" for i in range(1, len(blobs))), "--blocks", str(blocks)]
        doc = self.run_runner(args, blobs, step="measure")
        return self._parse(doc, len(blobs))

    def _parse(self, doc: dict[str, Any], expected: int) -> list[Measurement]:
        from rlprune_edge.latency.backend import measurements_from_runner

        try:
            out = measurements_from_runner(doc)
        except ValueError as exc:
            raise DeviceError(
                f"host {self.host}: step 'parse' failed: the runner's JSON is not a measurement ({exc}); "
                "remove the board's work dir to force a fresh copy of the runner."
            ) from None
        if len(out) != expected:
            raise DeviceError(
                f"host {self.host}: step 'parse' failed: asked for {expected} model(s), the runner returned {len(out)}."
            )
        return out

    def facts(self) -> dict[str, Any]:
        """Device facts reported by ``runner.py facts`` on the board."""
        return self.run_runner(
            ["facts"], step="facts", timeout=self.profile.connection.connect_timeout_s + 60
        )

    def self_test(self) -> dict[str, Any]:
        """Reach the board, report its facts and runtime versions, and time a tiny model."""
        return check_remote(self.profile, backend=self)

    # ------------------------------------------------------------------ files and engines
    def fetch_file(self, remote_rel: str, local_path: str | os.PathLike, *, step: str = "fetch") -> Path:
        """Copy ``<work_dir>/<remote_rel>`` from the board to `local_path` (atomically)."""
        res = self._ssh(f"cat {self._path(remote_rel)}", step=step)
        if res.rc != 0 and self._retryable(res):
            res = self._ssh(f"cat {self._path(remote_rel)}", step=step)
        if res.rc != 0:
            raise self._fail(res, step, f"check that {remote_rel} exists under the work dir on the board")
        out = Path(local_path)
        _write_atomic(out, res.stdout)
        return out

    def build_engine(
        self,
        onnx_path: str | os.PathLike,
        out_path: str | os.PathLike,
        precision: str,
        calib: str | os.PathLike | None = None,
    ) -> dict[str, Any]:
        """Build a TensorRT engine on the board (``runner.py build-engine``) and bring it back to `out_path`.

        Returns the runner's build report (TensorRT version, GPU, ...) plus ``engine`` (the local
        path) and ``built_on`` (the host). `calib` is an optional calibration file copied along.
        """
        blobs = [self.blob(onnx_path)]
        rt, inp = self.profile.runtime, self.profile.input
        engine_rel = f"engines/{blobs[0].sha256[:32]}-{precision}-{self.runner_id}.engine"
        args = [
            "build-engine",
            "--onnx",
            "{blob:0}",
            "--out",
            f"{{path:{engine_rel}}}",
            "--precision",
            precision,
        ]
        args += ["--workspace-mb", str(rt.workspace_mb)]
        if rt.timing_cache:
            args += ["--timing-cache", rt.timing_cache]
        if inp.shape:
            args += ["--batch", str(inp.batch), "--shape", ",".join(map(str, inp.shape))]
        if calib is not None:
            blobs.append(self.blob(calib, kind="file"))
            args += ["--calib", "{blob:1}"]
        info = self.run_runner(args, blobs, step="build engine", mkdirs=["engines"])
        out = self.fetch_file(engine_rel, out_path, step="fetch engine")
        return {**info, "engine": str(out), "built_on": self.host}


def check_remote(profile: Profile, *, backend: RemoteBackend | None = None) -> dict[str, Any]:
    """For `profiles check`: reach the board, report facts and runtime versions, time a tiny model."""
    backend = backend or RemoteBackend(profile)
    from rlprune_edge.latency.onnxruntime import write_tiny_onnx

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rlprune-edge-check-") as tmp:
        model = write_tiny_onnx(Path(tmp) / "tiny.onnx")
        m = backend.compare([model], blocks=1, warmup=3, runs=10)[0]  # never cached: a real round trip
    return {
        "ok": True,
        "profile": profile.name,
        "host": backend.host,
        "reachable": True,
        "runtime": m.runtime,
        "device": m.device,
        "runtime_versions": m.device.get("packages", {}),
        "smoke_median_ms": m.median_ms,
        "smoke_p90_ms": m.p90_ms,
        "wall_s": round(time.monotonic() - t0, 3),
    }


def fetch_file(profile: Profile, remote_rel: str, local_path: str | os.PathLike) -> Path:
    """Copy ``<work_dir>/<remote_rel>`` from the profile's board to `local_path`."""
    return RemoteBackend(profile).fetch_file(remote_rel, local_path)


def build_engine_remote(
    profile: Profile,
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    precision: str,
    calib: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Build a TensorRT engine on the profile's board, bring it back to `out_path`; returns the build report."""
    return RemoteBackend(profile).build_engine(onnx_path, out_path, precision, calib)
