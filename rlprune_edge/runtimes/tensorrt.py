"""TensorRT: its profile options, engine-build flags and its backend on this machine.

The backend needs `pip install 'rlprune-edge[tensorrt]'` and an NVIDIA GPU; it runs the board's
trt_measure in-process (TensorRT 10 API, imported there on use): an engine built from ONNX with the
profile's precision, workspace and timing cache; per-layer times through an IProfiler mapped back
to ONNX nodes. fp16/int8 bundles hold an engine built on the profile's device (``engine.py``).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

from rlprune_edge.board import protocol, trt_measure
from rlprune_edge.errors import DeviceError
from rlprune_edge.runtimes.backend import (
    Measurement,
    board_error_to_user,
    check_onnx_file,
    measurements_from_runner,
    write_tiny_onnx,
)
from rlprune_edge.runtimes.base import ENGINE, FP32_GRAPH, Option, Runtime

MISSING = ("TensorRT is not installed: pip install 'rlprune-edge[tensorrt]' on a machine with an NVIDIA GPU "
           "(profile {name} needs it).")


class TensorRTBackend:
    """Latency of TensorRT engines built here from ONNX."""

    name = "tensorrt"

    def __init__(self, profile: Any) -> None:
        self.profile = profile
        if importlib.util.find_spec("tensorrt") is None:
            raise DeviceError(MISSING.format(name=profile.name))
        self._opts = RUNTIME.board_options(profile.runtime)

    def _call(self, fn, *args, **kwargs) -> Any:
        try:
            return fn(*args, **kwargs)
        except protocol.BoardError as exc:
            if exc.kind == "missing_runtime" and exc.extra.get("package") == "tensorrt":
                raise DeviceError(MISSING.format(name=self.profile.name)) from None
            raise board_error_to_user(exc, self.profile) from None

    def measure(self, onnx_path: str | Path, *, warmup: int | None = None, runs: int | None = None,
                per_layer: bool = False) -> Measurement:
        """Build (ONNX) or load (.engine) and time it; per-layer through IProfiler when asked."""
        path = Path(onnx_path)
        if path.suffix not in (".engine", ".plan", ".trt"):
            check_onnx_file(path)
        doc = self._call(trt_measure.measure, str(path), self._opts,
                         warmup=self.profile.measure.warmup if warmup is None else warmup,
                         runs=self.profile.measure.runs if runs is None else runs, per_layer=per_layer)
        from rlprune_edge.board.runner import collect_facts

        doc["device"] = collect_facts()
        return measurements_from_runner(doc)[0]

    def compare(self, onnx_paths: list[str | Path], *, blocks: int | None = None, warmup: int | None = None,
                runs: int | None = None) -> list[Measurement]:
        """Interleaved blocks in one window; ``ratio`` vs the first."""
        paths = [str(p) for p in onnx_paths]
        doc = self._call(trt_measure.compare, paths, self._opts,
                         blocks=self.profile.measure.blocks if blocks is None else blocks,
                         warmup=self.profile.measure.warmup if warmup is None else warmup,
                         runs=self.profile.measure.runs if runs is None else runs)
        return measurements_from_runner(doc)

    def self_test(self) -> dict[str, Any]:
        """TensorRT version and a smoke measurement of a tiny model."""
        with tempfile.TemporaryDirectory(prefix="rlprune-selftest-") as tmp:
            path = write_tiny_onnx(os.path.join(tmp, "tiny.onnx"))
            m = self.measure(path, warmup=3, runs=10)
        return {"ok": True, "runtime": m.runtime, "device": m.device, "smoke_median_ms": m.median_ms}


class TensorRT(Runtime):
    """TensorRT engines built from ONNX on the device (this machine's GPU, or a Jetson over ssh)."""

    name = "tensorrt"
    label = "TensorRT"
    options = (
        Option("workspace_mb", 1024, non_negative=True, at_most=1 << 20, help="builder workspace (MiB)"),  # 1 TiB
        Option("timing_cache", "", help="timing cache file on the device; empty = beside the engine"),
    )
    precisions = ("fp32", "fp16", "int8")
    on_board = True
    bundles = {"fp32": FP32_GRAPH, "fp16": ENGINE, "int8": ENGINE}

    def engine_args(self, runtime: Any, *, local: bool) -> list[str]:
        args = ["--workspace-mb", str(runtime.workspace_mb)]
        if runtime.timing_cache:
            args += ["--timing-cache", str(Path(runtime.timing_cache).expanduser()) if local else runtime.timing_cache]
        return args

    def install_hint(self, package: str) -> str | None:
        if package != "tensorrt":
            return (f"TensorRT ships with JetPack: `sudo apt install python3-libnvinfer` (and `pip install {package}` "
                    "for pycuda/cuda-python) on the board")
        return "TensorRT ships with JetPack: install it on the board with `sudo apt install python3-libnvinfer`"

    def backend(self, profile: Any) -> TensorRTBackend:
        return TensorRTBackend(profile)


RUNTIME = TensorRT()
