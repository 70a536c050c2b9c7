"""The latency backend interface: one `Measurement` shape for every runtime, local or remote.

Every runtime plug-in (:mod:`rlprune_edge.runtimes`) builds a backend with this interface for a
profile on this machine; a profile reached over ssh gets ``rlprune_edge.latency.remote.RemoteBackend``,
which runs the board runner with the arguments its runtime gives. ``rlprune_edge.latency.registry
.get_backend(profile)`` picks one. The shared helpers of file backends live here too: checking that a
path is an ONNX file, and the tiny ONNX model self-tests time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from rlprune_edge.errors import DeviceError, UserError
from rlprune_edge.fsutil import atomic_path
from rlprune_edge.limits import require_regular_file


@dataclass
class LayerTime:
    """Time of one executed (possibly fused) layer and the ONNX nodes it computes."""

    name: str
    op: str
    median_ms: float
    onnx_nodes: list[str] = field(default_factory=list)
    wall_ms: float | None = None  # kernel + the dispatch gap before it (ORT), when the runtime reports it


@dataclass
class Measurement:
    """One model's latency: summary statistics, raw samples, per-layer times and device facts.

    ``ratio`` is set by ``compare``: this model's latency over the first model's, from interleaved blocks.
    ``per_layer_e2e_median_ms`` is the end-to-end median of the profiled runs the per-layer times
    come from (the same window, so the layer sum can be checked against it).
    """

    median_ms: float
    p90_ms: float
    p99_ms: float
    samples_ms: list[float]
    per_layer: list[LayerTime] = field(default_factory=list)
    device: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)
    ratio: float | None = None
    per_layer_e2e_median_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able document (the runner's and `bench --json`'s shape)."""
        d = asdict(self)
        for key in ("ratio", "per_layer_e2e_median_ms"):
            if d[key] is None:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        """Build from the runner's JSON document (unknown keys are ignored)."""
        try:
            layers = [
                LayerTime(name=str(x["name"]), op=str(x.get("op", "")), median_ms=float(x["median_ms"]),
                          onnx_nodes=list(x.get("onnx_nodes", [])),
                          wall_ms=None if x.get("wall_ms") is None else float(x["wall_ms"]))
                for x in d.get("per_layer", [])
            ]
            return cls(
                median_ms=float(d["median_ms"]),
                p90_ms=float(d["p90_ms"]),
                p99_ms=float(d["p99_ms"]),
                samples_ms=[float(s) for s in d.get("samples_ms", [])],
                per_layer=layers,
                device=dict(d.get("device", {})),
                runtime=dict(d.get("runtime", {})),
                ratio=None if d.get("ratio") is None else float(d["ratio"]),
                per_layer_e2e_median_ms=None if d.get("per_layer_e2e_median_ms") is None
                else float(d["per_layer_e2e_median_ms"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a measurement document: {exc}") from None

    @property
    def per_layer_sum_ms(self) -> float:
        """Sum of per-layer medians (compare with `median_ms`)."""
        return float(sum(layer.median_ms for layer in self.per_layer))

    @property
    def per_layer_wall_sum_ms(self) -> float | None:
        """Sum of per-layer wall medians (kernel + dispatch gap), when the runtime reports them."""
        if not self.per_layer or any(layer.wall_ms is None for layer in self.per_layer):
            return None
        return float(sum(layer.wall_ms or 0.0 for layer in self.per_layer))


def measurements_from_runner(doc: Any) -> list[Measurement]:
    """Turn a runner document (single result, or ``{"results", "ratios"}`` from --compare) into Measurements."""
    if isinstance(doc, dict) and "results" in doc:
        out = [Measurement.from_dict(r) for r in doc["results"]]
        for m, ratio in zip(out, doc.get("ratios", []), strict=False):
            m.ratio = float(ratio)
        return out
    return [Measurement.from_dict(doc)]


@runtime_checkable
class LatencyBackend(Protocol):
    """What every backend (local or remote) provides. `model` is what the runtime measures: an ONNX
    path for file runtimes, an ``nn.Module`` for module runtimes (``Runtime.artifact``)."""

    name: str
    profile: Any

    def measure(self, model: Any, *, warmup: int, runs: int, per_layer: bool = False) -> Measurement:
        """Warm up, time `runs` inferences, optionally per-layer times."""
        ...

    def compare(self, models: list[Any], *, blocks: int, warmup: int, runs: int) -> list[Measurement]:
        """Measure models in interleaved blocks in one window; each result's ``ratio`` is vs the first."""
        ...

    def self_test(self) -> dict[str, Any]:
        """Runtime versions and a smoke measurement of a tiny model."""
        ...


def board_error_to_user(exc: Exception, profile: Any, where: str = "this machine") -> UserError:
    """Convert a runner BoardError into a one-sentence UserError/DeviceError."""
    kind = getattr(exc, "kind", "")
    message = getattr(exc, "message", str(exc))
    if kind in ("missing_runtime", "missing_provider"):
        package = getattr(exc, "extra", {}).get("package", "")
        return DeviceError(f"profile {profile.name}: {message} on {where}; install {package or 'the runtime'} there.")
    if kind == "dynamic_shape":
        return UserError(f"{message.rstrip('.')}; add `shape = [C, H, W]` under [input] in profile {profile.name}.")
    return UserError(f"profile {profile.name}: {message}.")


def check_onnx_file(path: str | Path) -> Path:
    """A UserError unless `path` is an existing ONNX file."""
    p = require_regular_file(path, "model file", "give the path of an .onnx file.")
    with p.open("rb") as fh:
        head = fh.read(64)
    # ONNX ModelProto starts with field 1 (ir_version, varint) -> tag byte 0x08
    if not head or head[0] != 0x08:
        raise UserError(f"{p} is not an ONNX model (export one with `rlprune-edge export` or torch.onnx.export).")
    return p


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
