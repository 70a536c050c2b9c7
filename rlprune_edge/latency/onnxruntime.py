"""ONNX Runtime backend on this machine: runs the board's ort_measure in-process."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from rlprune_edge.board import ort_measure, protocol
from rlprune_edge.errors import DeviceError, UserError
from rlprune_edge.fsutil import atomic_path
from rlprune_edge.latency.backend import (
    Measurement,
    board_error_to_user,
    board_options,
    measurements_from_runner,
)
from rlprune_edge.limits import require_regular_file
from rlprune_edge.profiles import Profile


def check_onnx_file(path: str | Path) -> Path:
    """A UserError unless `path` is an existing ONNX file."""
    p = require_regular_file(path, "model file", "give the path of an .onnx file.")
    with p.open("rb") as fh:
        head = fh.read(64)
    # ONNX ModelProto starts with field 1 (ir_version, varint) -> tag byte 0x08
    if not head or head[0] != 0x08:
        raise UserError(f"{p} is not an ONNX model (export one with `rlprune-edge export` or torch.onnx.export).")
    return p


class OrtBackend:
    """Latency on ONNX Runtime with the profile's provider, threads and graph optimisation."""

    name = "onnxruntime"

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        try:
            ort_measure.import_ort()
        except protocol.BoardError as exc:
            raise board_error_to_user(exc, profile) from None
        self._opts = board_options(profile)
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


def write_tiny_onnx(path: str | Path, channels: int = 8, size: int = 16) -> Path:
    """A tiny Conv+Relu+GlobalAveragePool model built with onnx.helper (for smoke tests)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(channels, np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["output"], name="gap"),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, channels, 1, 1])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    with atomic_path(path, suffix=".onnx") as tmp:
        onnx.save(model, str(tmp))
    return path


__all__ = ["OrtBackend", "check_onnx_file", "write_tiny_onnx", "DeviceError"]
