"""TensorRT measurement on the board: build an engine from ONNX, time it, per-layer via IProfiler.

TensorRT 10 name-based I/O (``num_io_tensors``, ``get_tensor_name``, ``set_tensor_address``,
``execute_async_v3``) with a TensorRT 8 bindings fallback; device buffers through pycuda
(``pycuda.autoinit``), which JetPack and the ``rlprune-edge[tensorrt]`` extra provide. Fused layer
names are mapped back to ONNX nodes from the engine inspector's per-layer metadata
(``[ONNX Layer: name]``), else from the ``+``-joined layer name checked against the ONNX graph.
Everything that needs no GPU (flag translation, inspector parsing, name mapping, profiler
aggregation) is plain Python and unit-tested; the GPU paths need a machine with TensorRT.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any

import numpy as np

try:
    from . import onnx_lite, protocol
except ImportError:  # run as a plain script in a copied folder
    import onnx_lite  # type: ignore[no-redef]
    import protocol  # type: ignore[no-redef]

_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")


def import_trt():
    """Import tensorrt and pycuda or raise the missing-runtime error."""
    try:
        import tensorrt as trt
    except ImportError:
        raise protocol.missing_runtime(
            "tensorrt", "TensorRT is not installed: pip install 'rlprune-edge[tensorrt]' on a machine with an NVIDIA "
            "GPU (on a Jetson it ships with JetPack)") from None
    try:
        import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
        import pycuda.driver as cuda
    except ImportError:
        raise protocol.missing_runtime("pycuda", "install it with `python3 -m pip install pycuda`") from None
    return trt, cuda


def builder_flags(precision: str) -> list[str]:
    """BuilderFlag names for a profile precision (fp32 adds none; int8 keeps fp16 fallback)."""
    if precision == "fp32":
        return []
    if precision == "fp16":
        return ["FP16"]
    if precision == "int8":
        return ["INT8", "FP16"]
    raise protocol.BoardError("bad_arguments", f"unknown precision {precision!r}; use fp32, fp16 or int8")


def layer_onnx_nodes(layer: dict[str, Any], onnx_names: set[str]) -> list[str]:
    """ONNX nodes one engine-inspector layer computes: metadata first, else the '+'-joined name parts."""
    meta = str(layer.get("Metadata", ""))
    found = _ONNX_LAYER.findall(meta)
    if found:
        return list(dict.fromkeys(found))
    name = str(layer.get("Name", ""))
    parts = [p.strip() for p in re.split(r"\s\+\s|\|\|", name) if p.strip()]
    return [p for p in parts if p in onnx_names]


def parse_inspector(info: str | dict[str, Any], onnx_names: set[str]) -> dict[str, list[str]]:
    """Engine inspector JSON (ENGINE information, DETAILED verbosity) -> layer name -> ONNX nodes."""
    doc = json.loads(info) if isinstance(info, str) else info
    out: dict[str, list[str]] = {}
    for layer in doc.get("Layers", []):
        if isinstance(layer, str):  # LayerInformationFormat ONELINE / low verbosity: names only
            out[layer] = layer_onnx_nodes({"Name": layer}, onnx_names)
        else:
            out[str(layer.get("Name", ""))] = layer_onnx_nodes(layer, onnx_names)
    return out


class LayerTimes:
    """Collects per-layer times reported by TensorRT's IProfiler (one call per layer per run)."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}
        self.order: list[str] = []

    def report_layer_time(self, layer_name: str, ms: float) -> None:
        if layer_name not in self.times:
            self.times[layer_name] = []
            self.order.append(layer_name)
        self.times[layer_name].append(float(ms))

    def summary(self, mapping: dict[str, list[str]]) -> list[dict[str, Any]]:
        """Per layer: median ms over runs and the ONNX nodes it computes."""
        return [{"name": n, "op": "trt", "median_ms": float(np.median(self.times[n])),
                 "onnx_nodes": mapping.get(n, [])} for n in self.order]


def _profiler_class(trt):
    class _Profiler(trt.IProfiler):
        def __init__(self, sink: LayerTimes) -> None:
            trt.IProfiler.__init__(self)
            self.sink = sink

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            self.sink.report_layer_time(layer_name, ms)

    return _Profiler


def build_engine_bytes(onnx_path: str, *, precision: str, workspace_mb: int = 1024, timing_cache: str = "",
                       calib: str | None = None) -> bytes:
    """Serialized engine built from ONNX with the profile's precision flags and an optional timing cache."""
    trt, _cuda = import_trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as fh:
        if not parser.parse(fh.read()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise protocol.BoardError("bad_model", f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    for flag in builder_flags(precision):
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if precision == "int8" and calib:
        config.int8_calibrator = _calibrator(trt, np.load(calib))
    cache = None
    if timing_cache:
        blob = open(timing_cache, "rb").read() if os.path.isfile(timing_cache) else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise protocol.BoardError("build_failed", f"TensorRT could not build an engine from {onnx_path}")
    if cache is not None:
        _atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def _calibrator(trt, data: np.ndarray):
    import pycuda.driver as cuda

    class _Calib(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.data = np.ascontiguousarray(data.astype(np.float32))
            self.i = 0
            self.mem = cuda.mem_alloc(self.data[0:1].nbytes)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):  # noqa: ARG002
            if self.i >= len(self.data):
                return None
            cuda.memcpy_htod(self.mem, self.data[self.i : self.i + 1])
            self.i += 1
            return [int(self.mem)]

        def read_calibration_cache(self):
            return None

        def write_calibration_cache(self, cache) -> None:
            return None

    return _Calib()


def _atomic_write(path: str, data: bytes) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def build_engine_file(onnx_path: str, out: str, *, precision: str, calib: str | None = None, timing_cache: str = "",
                      workspace_mb: int = 1024, batch: int | None = None, shape: list[int] | None = None) -> dict[str, Any]:
    """`runner.py build-engine`: write the engine to `out`; returns {engine, bytes, tensorrt_version}."""
    trt, _ = import_trt()
    data = build_engine_bytes(onnx_path, precision=precision, workspace_mb=workspace_mb, timing_cache=timing_cache,
                              calib=calib)
    _atomic_write(out, data)
    return {"engine": out, "bytes": len(data), "tensorrt_version": trt.__version__, "precision": precision}


class _Engine:
    """A deserialized engine with device buffers bound; calling it runs one inference and syncs."""

    def __init__(self, trt, cuda, engine_bytes: bytes) -> None:
        self.trt, self.cuda = trt, cuda
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        self.buffers = []
        self.v10 = hasattr(self.engine, "num_io_tensors")
        rng = np.random.default_rng(0)
        if self.v10:
            for i in range(self.engine.num_io_tensors):
                name = self.engine.get_tensor_name(i)
                shape = tuple(self.context.get_tensor_shape(name))
                dtype = trt.nptype(self.engine.get_tensor_dtype(name))
                host = rng.standard_normal(shape).astype(dtype)
                dev = cuda.mem_alloc(max(1, host.nbytes))
                if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                    cuda.memcpy_htod(dev, host)
                self.context.set_tensor_address(name, int(dev))
                self.buffers.append(dev)
        else:  # TensorRT 8 bindings
            self.bindings = []
            for i in range(self.engine.num_bindings):
                shape = tuple(self.engine.get_binding_shape(i))
                host = rng.standard_normal(shape).astype(trt.nptype(self.engine.get_binding_dtype(i)))
                dev = cuda.mem_alloc(max(1, host.nbytes))
                if self.engine.binding_is_input(i):
                    cuda.memcpy_htod(dev, host)
                self.buffers.append(dev)
                self.bindings.append(int(dev))

    def __call__(self) -> None:
        if self.v10:
            self.context.execute_async_v3(self.stream.handle)
        else:
            self.context.execute_async_v2(self.bindings, self.stream.handle)
        self.stream.synchronize()

    def layer_mapping(self, onnx_names: set[str]) -> dict[str, list[str]]:
        inspector = self.engine.create_engine_inspector()
        info = inspector.get_engine_information(self.trt.LayerInformationFormat.JSON)
        return parse_inspector(info, onnx_names)


def _engine_for(model: str, opts: dict[str, Any]) -> tuple[Any, Any, bytes]:
    trt, cuda = import_trt()
    if model.endswith((".engine", ".plan", ".trt")):
        with open(model, "rb") as fh:
            return trt, cuda, fh.read()
    return trt, cuda, build_engine_bytes(model, precision=opts.get("precision", "fp16"),
                                         workspace_mb=int(opts.get("workspace_mb", 1024)),
                                         timing_cache=opts.get("timing_cache", ""))


def runtime_info(trt, precision: str) -> dict[str, Any]:
    """The `runtime` block of a result."""
    return {"name": "tensorrt", "version": trt.__version__, "provider": f"TensorRT {precision}", "threads": 0}


def measure(model: str, opts: dict[str, Any], *, warmup: int, runs: int, per_layer: bool = False,
            batch: int | None = None, shape: list[int] | None = None) -> dict[str, Any]:
    """End-to-end (and per-layer) latency of an ONNX model (engine built here) or a serialized engine."""
    trt, cuda, blob = _engine_for(model, opts)
    eng = _Engine(trt, cuda, blob)
    for _ in range(warmup):
        eng()
    result = protocol.summarize(protocol.time_runs(eng, runs))
    result["per_layer"] = []
    if per_layer:
        sink = LayerTimes()
        eng.context.profiler = _profiler_class(trt)(sink)
        for _ in range(runs):
            eng()
        names = {n.name for n in onnx_lite.load_graph(model).nodes} if model.endswith(".onnx") else set()
        result["per_layer"] = sink.summary(eng.layer_mapping(names))
    result["runtime"] = runtime_info(trt, opts.get("precision", "fp16"))
    return result


def compare(models: list[str], opts: dict[str, Any], *, blocks: int, warmup: int, runs: int,
            batch: int | None = None, shape: list[int] | None = None) -> dict[str, Any]:
    """Interleaved blocks of several engines in one window; ratios vs the first."""
    trt, cuda, _ = _engine_for(models[0], opts) if models[0].endswith(".engine") else (*import_trt(), b"")
    engines = [_Engine(trt, cuda, _engine_for(m, opts)[2]) for m in models]
    samples, ratios, block_ratios = protocol.interleaved(engines, blocks=blocks, runs=runs, warmup=warmup)
    results = []
    for s in samples:
        r = protocol.summarize(s)
        r["per_layer"] = []
        r["runtime"] = runtime_info(trt, opts.get("precision", "fp16"))
        results.append(r)
    return {"results": results, "ratios": ratios, "block_ratios": block_ratios}
