"""ONNX Runtime: its profile options and its backend on this machine (the board's ort_measure, in-process).

On a board over ssh the same ``ort_measure`` runs under ``runner.py measure`` with the flags
:meth:`OnnxRuntime.runner_args` gives. INT8 bundles are QDQ graphs (``quantize.py``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from rlprune_edge.board import ort_measure, protocol
from rlprune_edge.limits import MAX_THREADS
from rlprune_edge.runtimes.backend import (
    Measurement,
    board_error_to_user,
    check_onnx_file,
    measurements_from_runner,
    write_tiny_onnx,
)
from rlprune_edge.runtimes.base import FP32_GRAPH, QDQ_INT8, Option, Runtime

CPU_PROVIDER = "CPUExecutionProvider"


class OrtBackend:
    """Latency on ONNX Runtime with the profile's provider, threads and graph optimisation."""

    name = "onnxruntime"

    def __init__(self, profile: Any) -> None:
        self.profile = profile
        try:
            ort_measure.import_ort()
        except protocol.BoardError as exc:
            raise board_error_to_user(exc, profile) from None
        self._opts = RUNTIME.board_options(profile.runtime)
        self._batch = profile.input.batch
        self._shape = list(profile.input.shape) or None

    def _call(self, fn, *args, **kwargs) -> Any:
        try:
            return fn(*args, **kwargs)
        except protocol.BoardError as exc:
            raise board_error_to_user(exc, self.profile) from None

    def measure(self, onnx_path: str | Path, *, warmup: int | None = None, runs: int | None = None,
                per_layer: bool = False) -> Measurement:
        """Warm up, time `runs` inferences; per-layer times from ORT's profiler when asked."""
        path = check_onnx_file(onnx_path)
        doc = self._call(
            ort_measure.measure, str(path), self._opts,
            warmup=self.profile.measure.warmup if warmup is None else warmup,
            runs=self.profile.measure.runs if runs is None else runs,
            per_layer=per_layer, batch=self._batch, shape=self._shape,
        )
        from rlprune_edge.board.runner import collect_facts

        doc["device"] = collect_facts()
        return measurements_from_runner(doc)[0]

    def compare(self, onnx_paths: list[str | Path], *, blocks: int | None = None, warmup: int | None = None,
                runs: int | None = None) -> list[Measurement]:
        """Interleaved blocks in one window; ``ratio`` of each vs the first."""
        paths = [str(check_onnx_file(p)) for p in onnx_paths]
        doc = self._call(
            ort_measure.compare, paths, self._opts,
            blocks=self.profile.measure.blocks if blocks is None else blocks,
            warmup=self.profile.measure.warmup if warmup is None else warmup,
            runs=self.profile.measure.runs if runs is None else runs,
            batch=self._batch, shape=self._shape,
        )
        from rlprune_edge.board.runner import collect_facts

        facts = collect_facts()
        for r in doc["results"]:
            r["device"] = facts
        return measurements_from_runner(doc)

    def self_test(self) -> dict[str, Any]:
        """Runtime version and a smoke measurement of a tiny ONNX model built with onnx.helper."""
        ort = ort_measure.import_ort()
        with tempfile.TemporaryDirectory(prefix="rlprune-selftest-") as tmp:
            path = os.path.join(tmp, "tiny.onnx")
            write_tiny_onnx(path)
            m = self.measure(path, warmup=3, runs=10)
        return {"ok": True, "runtime": m.runtime, "device": m.device, "available_providers": ort.get_available_providers(),
                "smoke_median_ms": m.median_ms}


class OnnxRuntime(Runtime):
    """ONNX Runtime with an execution provider (CPU by default), locally or on a board."""

    name = "onnxruntime"
    options = (
        Option("provider", CPU_PROVIDER, help="execution provider"),
        Option("threads", 0, non_negative=True, at_most=MAX_THREADS, help="intra-op threads, 0 = runtime default"),
        Option("inter_op_threads", 1, non_negative=True, at_most=MAX_THREADS),
        Option("graph_optimization", "all", choices=("disable", "basic", "extended", "all")),
    )
    precisions = ("fp32", "int8")  # int8: the bundle is a QDQ graph
    on_board = True
    bundles = {"fp32": FP32_GRAPH, "int8": QDQ_INT8}
    cpu_hint = f"onnxruntime with {CPU_PROVIDER}"

    def on_host_cpu(self, runtime: Any) -> bool:
        return runtime.provider == CPU_PROVIDER

    def board_options(self, runtime: Any) -> dict[str, Any]:
        return dict(runtime.options)  # ort_measure takes no precision: the graph's own types run

    def backend(self, profile: Any) -> OrtBackend:
        return OrtBackend(profile)


RUNTIME = OnnxRuntime()
