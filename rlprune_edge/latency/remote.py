"""Measure on a remote board: the latency-backend protocol over ssh, for any runtime the board runner has.

What the runner is asked to do comes from the profile's runtime plug-in (:mod:`rlprune_edge.runtimes`):
the ``measure`` flags (``Runtime.runner_args``), the ``build-engine`` flags (``Runtime.engine_args``)
and how to install a package the board lacks (``Runtime.install_hint``).

The transport (OpenSSH client, option checks, ssh's own failure reasons, retries) is
:mod:`rlprune_edge.latency.ssh`; the runner folder and each model are copied content-addressed under
the profile's work dir (:mod:`rlprune_edge.latency.upload`) and are not re-sent while unchanged. A
dropped connection or a runner killed mid-measurement is retried once; then a :class:`DeviceError`
names the host, the step (connect / copy runner / copy model / measure / parse) and what to check.
Successful single-model measurements are cached (:mod:`rlprune_edge.latency.remote_cache`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlprune_edge.errors import DeviceError, UserError
from rlprune_edge.latency import upload
from rlprune_edge.latency.remote_cache import ResultCache
from rlprune_edge.latency.ssh import SshResult, SshTransport, remote_command_expr
from rlprune_edge.latency.upload import Blob
from rlprune_edge.profiles import Profile
from rlprune_edge.runtimes import get_runtime
from rlprune_edge.runtimes.backend import (
    Measurement,
    check_onnx_file,
    measurements_from_runner,
    write_tiny_onnx,
)

MISSING_EXIT = 86  # our remote wrapper: the runner or a model is not on the board yet
MISSING_MARK = "RLPRUNE_EDGE_MISSING"
RECEIVE_FAILED_EXIT = 87  # copying the runner or a model onto the board failed
RECEIVE_MARK = "RLPRUNE_EDGE_RECEIVE_FAILED"
BOARD_TIMEOUT_EXIT = 124  # coreutils `timeout` on the board stopped the runner
RUNTIME_MISSING_EXIT = 3  # runner.py: {"error": "missing_runtime", "package": ...}
_NO_MODULE = re.compile(r"No module named '([\w.]+)'")


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
        self.runtime = get_runtime(profile.runtime.name)
        self.name = f"{profile.runtime.name}@ssh"
        self.ssh = SshTransport(conn, where=f"profile {profile.name!r}: [connection]", ssh_config=ssh_config)
        self.host = self.ssh.host
        self.attempts = self.ssh.attempts  # (step, ssh exit code) of every ssh call
        self.runner_id = upload.runner_hash()
        self.cache = ResultCache(profile, self.host, self.runner_id, enabled=use_cache)
        self.transfers: list[tuple[str, str]] = []  # (kind, sha) of every copy actually sent

    @property
    def runner_rel(self) -> str:
        """The runner folder relative to the work dir."""
        return f"runner-{self.runner_id}"

    # ------------------------------------------------------------------ running the runner
    def _runner_script(
        self, args: Sequence[str], blobs: Sequence[Blob], python: str, limit: int, mkdirs: Sequence[str]
    ) -> str:
        """The remote shell script: report what is missing (exit MISSING_EXIT), else run the runner."""
        path = self.ssh.path
        runner_dir = path(self.runner_rel)
        checks = [f'[ -f {runner_dir}/runner.py ] || m="$m runner"']
        for i, b in enumerate(blobs):
            checks.append(f'[ -f {path(b.remote_rel)} ] || m="$m {i}"')
        words = []
        for a in args:
            if a.startswith("{blob:") and a.endswith("}"):
                words.append(path(blobs[int(a[6:-1])].remote_rel))
            elif a.startswith("{path:") and a.endswith("}"):
                words.append(path(a[6:-1]))
            else:
                words.append(shlex.quote(a))
        return (
            'm=""; ' + "; ".join(checks) + "; "
            f'if [ -n "$m" ]; then echo "{MISSING_MARK}$m"; exit {MISSING_EXIT}; fi; '
            # the board stops an overrunning runner itself (coreutils timeout, where present)
            + f't=""; command -v timeout >/dev/null 2>&1 && t="timeout -k 5 {limit}"; '
            + "".join(f"mkdir -p {path(d)} && " for d in mkdirs)
            + f"cd {runner_dir} && $t {python} runner.py {' '.join(words)}"
        )

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
        conn = self.profile.connection
        py = remote_command_expr(conn.python)
        limit = max(1, int(timeout or conn.command_timeout_s))
        script = self._runner_script(args, blobs, py, limit, mkdirs)
        command, payload, retried, missing = script, None, False, []
        while True:
            res = self.ssh.run(command, step=step, timeout=timeout, stdin=payload)
            if res.rc == MISSING_EXIT and MISSING_MARK.encode() in res.stdout:
                if payload is not None:
                    raise DeviceError(
                        f"host {self.host}: step 'copy' failed: files copied to {conn.work_dir} "
                        "vanished before the runner started; check that nothing else cleans that directory."
                    )
                missing = res.stdout.decode(errors="replace").split(MISSING_MARK, 1)[1].split()
                payload, items, sent = upload.payload(missing, blobs, self.runner_rel, self.runner_id)
                self.transfers.extend(sent)
                items += [f"keep:{b.remote_rel}" for b in blobs]
                receive = upload.receive_command(py, self.ssh.path(), items)
                command = f"{receive} || {{ echo {RECEIVE_MARK} >&2; exit {RECEIVE_FAILED_EXIT}; }}; {script}"
                continue
            if res.rc == RECEIVE_FAILED_EXIT and RECEIVE_MARK in res.stderr:
                raise self.ssh.fail(
                    res,
                    "copy runner" if "runner" in missing else "copy model",
                    f"check that the remote python ({conn.python}) runs and that "
                    f"{conn.work_dir} on the board is writable and has free space",
                )
            doc = self._runner_doc(res, step, limit, may_retry=not retried)
            if doc is not None:
                return doc
            retried = True

    def _runner_doc(self, res: SshResult, step: str, limit: int, *, may_retry: bool) -> dict[str, Any] | None:
        """The runner's JSON document from a finished call, None to retry it, or the DeviceError raised."""
        if res.rc == BOARD_TIMEOUT_EXIT:
            raise DeviceError(
                f"host {self.host}: step '{step}' ran longer than {limit} s on the board and was stopped; "
                "raise [connection] command_timeout_s in the profile or lower the number of runs."
            )
        if res.rc == RUNTIME_MISSING_EXIT:
            doc = self._parse_error_doc(res) or {}
            if doc.get("error") == "missing_provider":
                raise DeviceError(f"host {self.host}: {doc.get('message')}; install an onnxruntime build with it.")
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
                if may_retry:
                    return None
                raise DeviceError(
                    f"host {self.host}: step 'parse' failed: the runner's output is not one JSON document ({exc}); "
                    f"output starts {res.stdout[:200]!r}; check that nothing on the board prints to stdout at login."
                ) from None
            return doc
        if may_retry and self.ssh.retryable(res):
            return None
        runner_error = self._runner_error(res)
        if runner_error is not None:
            raise runner_error
        raise self.ssh.fail(res, step, "see the runner's message above; run the same command on the board to debug")

    def _parse_error_doc(self, res: SshResult) -> dict[str, Any] | None:
        try:
            doc = json.loads(res.stdout.decode(errors="replace"))
        except ValueError:
            return None
        return doc if isinstance(doc, dict) and "error" in doc else None

    def _missing_runtime(self, package: str) -> DeviceError:
        how = self.runtime.install_hint(package)
        if how is None and package == "numpy":
            how = "install it on the board with `sudo apt install python3-numpy` (or `pip install numpy`)"
        elif how is None:
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

    # ------------------------------------------------------------------ backend protocol
    def _measure_args(self, warmup: int | None, runs: int | None) -> list[str]:
        m = self.profile.measure
        w = m.warmup if warmup is None else int(warmup)
        r = m.runs if runs is None else int(runs)
        return [*self.runtime.runner_args(self.profile), "--warmup", str(w), "--runs", str(r)]

    def _model_blob(self, onnx_path: str | os.PathLike) -> Blob:
        return upload.blob(check_onnx_file(onnx_path))

    def measure(
        self,
        onnx_path: str | os.PathLike,
        *,
        warmup: int | None = None,
        runs: int | None = None,
        per_layer: bool = False,
    ) -> Measurement:
        """Measure one ONNX model on the board (cached per profile, settings and model hash)."""
        blob = self._model_blob(onnx_path)
        args = ["measure", "--model", "{blob:0}", *self._measure_args(warmup, runs)]
        key = self.cache.key(blob.sha256, args=args, per_layer=per_layer)
        cached = self.cache.get(key)
        if cached is not None:
            try:
                return Measurement.from_dict(cached)
            except ValueError:
                pass  # an entry from another version: measure again and overwrite it
        if per_layer:
            args.append("--per-layer")
        doc = self.run_runner(args, [blob], step="measure")
        m = self._parse(doc, 1)[0]
        self.cache.put(key, m.to_dict())
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

    # ------------------------------------------------------------------ engines
    def build_engine(
        self,
        onnx_path: str | os.PathLike,
        out_path: str | os.PathLike,
        precision: str,
        calib: str | os.PathLike | None = None,
    ) -> dict[str, Any]:
        """Build an engine on the board (``runner.py build-engine``, TensorRT) and bring it back to `out_path`.

        Returns the runner's build report (TensorRT version, GPU, ...) plus ``engine`` (the local
        path) and ``built_on`` (the host). `calib` is an optional calibration file copied along.
        """
        blobs = [upload.blob(onnx_path)]
        inp = self.profile.input
        engine_rel = f"engines/{blobs[0].sha256[:32]}-{precision}-{self.runner_id}.engine"
        args = ["build-engine", "--onnx", "{blob:0}", "--out", f"{{path:{engine_rel}}}", "--precision", precision]
        args += self.runtime.engine_args(self.profile.runtime, local=False)
        if inp.shape:
            args += ["--batch", str(inp.batch), "--shape", ",".join(map(str, inp.shape))]
        if calib is not None:
            blobs.append(upload.blob(calib, kind="file"))
            args += ["--calib", "{blob:1}"]
        info = self.run_runner(args, blobs, step="build engine", mkdirs=["engines"])
        out = self.ssh.fetch(engine_rel, out_path, step="fetch engine")
        return {**info, "engine": str(out), "built_on": self.host}


def check_remote(profile: Profile, *, backend: RemoteBackend | None = None) -> dict[str, Any]:
    """For `profiles check`: reach the board, report facts and runtime versions, time a tiny model."""
    backend = backend or RemoteBackend(profile)
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


def build_engine_remote(
    profile: Profile,
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    precision: str,
    calib: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Build a TensorRT engine on the profile's board, bring it back to `out_path`; returns the build report."""
    return RemoteBackend(profile).build_engine(onnx_path, out_path, precision, calib)
