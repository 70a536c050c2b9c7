"""ONNX Runtime measurement: end-to-end samples and per-node times from ORT's own profiler."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Any

import numpy as np

try:
    from . import nodemap, onnx_lite, protocol
except ImportError:  # run as a plain script in a copied folder
    import nodemap  # type: ignore[no-redef]
    import onnx_lite  # type: ignore[no-redef]
    import protocol  # type: ignore[no-redef]

GRAPH_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


def import_ort():
    """Import onnxruntime or raise the runner's missing-runtime error."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise protocol.missing_runtime("onnxruntime", "install it with `python3 -m pip install onnxruntime`") from None
    return ort


def session_options(ort, *, threads: int, inter_op_threads: int, graph_optimization: str):
    """SessionOptions from the profile's runtime options."""
    if graph_optimization not in GRAPH_OPT_LEVELS:
        raise protocol.BoardError("bad_arguments", f"unknown graph optimization {graph_optimization!r}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = int(inter_op_threads)
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPT_LEVELS[graph_optimization])
    so.log_severity_level = 4  # fatal only: an error is raised as an exception and reported once, by us
    # Idle intra-op threads spin after Run() returns. With several sessions open (interleaved A/B
    # blocks) the previous session's spinning threads steal the cores from the next one: on 2 cores a
    # VGG-19 w0.5 took 7.7 ms in blocks of 4 runs vs 3.8 ms alone. Stopping the spin when Run()
    # returns removes that (3.8 ms both ways) and costs nothing measurable alone (spinning *within* a
    # run, between parallel sections, is kept). A deployed model is called once per frame, so the
    # between-run spin never helps it either.
    so.add_session_config_entry("session.force_spinning_stop", "1")
    return so


def open_session(ort, model: str, so, provider: str):
    """An InferenceSession, with clear errors for a missing file, a non-ONNX file or an absent provider."""
    if not os.path.isfile(model):
        raise protocol.BoardError("bad_model", f"model file {model} does not exist")
    available = ort.get_available_providers()
    if provider not in available:
        raise protocol.BoardError(
            "missing_provider",
            f"execution provider {provider} is not available in this onnxruntime (available: {', '.join(available)})",
            exit_code=3,
            package="onnxruntime",
            provider=provider,
        )
    try:
        return ort.InferenceSession(model, so, providers=[provider])
    except Exception as exc:  # ORT raises its own exception types (InvalidProtobuf, Fail, ...)
        raise protocol.BoardError("bad_model", f"{model} could not be loaded as an ONNX model: {exc}") from None


def make_feeds(session, batch: int | None = None, shape: list[int] | None = None, seed: int = 0,
               source: str = "the model") -> dict[str, np.ndarray]:
    """Random inputs for every model input; dynamic dims come from `batch`/`shape` (else an error).

    An input of more than ``protocol.MAX_INPUT_ELEMENTS`` values is refused before it is allocated.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for i, inp in enumerate(session.get_inputs()):
        dims = list(inp.shape)
        if i == 0 and shape:
            want = [batch or (dims[0] if isinstance(dims[0], int) else 1), *shape]
            for d, w in zip(dims, want):  # noqa: B905 (boards may run Python 3.8)
                if isinstance(d, int) and d != w:
                    raise protocol.BoardError(
                        "shape_mismatch", f"input {inp.name} has fixed shape {dims}, but shape {want} was asked for"
                    )
            dims = want if len(want) == len(dims) else dims
        if dims and not isinstance(dims[0], int) and batch:
            dims[0] = batch
        if any(not isinstance(d, int) or d <= 0 for d in dims):
            raise protocol.BoardError(
                "dynamic_shape",
                f"input {inp.name} has a dynamic shape {dims}; give the input shape (profile [input] shape)",
            )
        count = 1
        for d in dims:
            count *= d
        if count > protocol.MAX_INPUT_ELEMENTS:
            raise protocol.BoardError(
                "input_too_large",
                f"{source} declares its input {inp.name!r} of shape {dims}: {count:,} values, over the limit of "
                f"{protocol.MAX_INPUT_ELEMENTS:,}; export it at the input size it runs at",
            )
        dtype = _NP_TYPES.get(inp.type, np.float32)
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(dims, dtype=np.float32).astype(dtype, copy=False)
        else:
            feeds[inp.name] = np.zeros(dims, dtype=dtype)
    return feeds


def runtime_info(ort, provider: str, threads: int) -> dict[str, Any]:
    """The `runtime` block of a result."""
    return {"name": "onnxruntime", "version": ort.__version__, "provider": provider, "threads": int(threads)}


def run_session(session, outputs, feeds, model: str):
    """One inference; a failure inside onnxruntime is the model's ("bad_model"), said in one line."""
    try:
        return session.run(outputs, feeds)
    except Exception as exc:  # ORT raises its own exception types (Fail, RuntimeException, ...)
        raise protocol.BoardError("bad_model", f"{model} loads but fails when onnxruntime runs it "
                                               f"({_ort_reason(exc)}); the model itself is broken, so re-export it") from None


def _ort_reason(exc: Exception) -> str:
    """ORT's error on one line, without its error-code prefix and C++ source location."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"Status Message: /\S+:\d+ \S+?\(.*?\) ", "", text)
    return text if len(text) <= 300 else text[:297] + "..."


class _Model:
    def __init__(self, ort, model: str, opts: dict[str, Any], batch, shape) -> None:
        so = session_options(ort, threads=opts["threads"], inter_op_threads=opts["inter_op_threads"],
                             graph_optimization=opts["graph_optimization"])
        self.model = model
        self.session = open_session(ort, model, so, opts["provider"])
        self.feeds = make_feeds(self.session, batch, shape, source=model)
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self) -> None:
        run_session(self.session, self.outputs, self.feeds, self.model)


def parse_profile_events(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Node times from an ORT profile: name -> {op, durations_us[], wall_us[]} (one entry per run).

    ``durations_us`` is the kernel time ORT reports (``_kernel_time`` events, ``dur``); ``wall_us`` adds
    the gap since the previous node ended (or the run started), i.e. the dispatch overhead of that
    node, so that a run's wall times add up to its ``model_run`` duration less the tail.
    """
    runs = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    nodes = sorted((e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")),
                   key=lambda e: float(e.get("ts", 0)))
    out: dict[str, dict[str, Any]] = {}
    prev_end = None
    run_idx = -1
    for e in nodes:
        ts, dur = float(e.get("ts", 0)), float(e.get("dur", 0))
        while run_idx + 1 < len(runs) and runs[run_idx + 1][0] <= ts:
            run_idx += 1
            prev_end = runs[run_idx][0]
        name = e["name"][: -len("_kernel_time")]
        args = e.get("args", {})
        entry = out.setdefault(name, {"op": args.get("op_name", ""), "durations_us": [], "wall_us": [],
                                      "provider": args.get("provider", "")})
        entry["durations_us"].append(dur)
        start = prev_end if prev_end is not None and prev_end <= ts else ts
        entry["wall_us"].append(ts + dur - start)
        prev_end = ts + dur
    return out


def per_layer_times(ort, model: str, opts: dict[str, Any], *, warmup: int, runs: int, batch=None, shape=None
                    ) -> tuple[list[dict[str, Any]], list[float]]:
    """Per executed node: median kernel time over profiled runs, mapped back to ONNX nodes; plus the
    end-to-end times of those same runs (so the layer sum can be compared within one window)."""
    tmp = tempfile.mkdtemp(prefix="rlprune-ortprof-")
    try:
        so = session_options(ort, threads=opts["threads"], inter_op_threads=opts["inter_op_threads"],
                             graph_optimization=opts["graph_optimization"])
        optimized = os.path.join(tmp, "optimized.onnx")
        so.optimized_model_filepath = optimized
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "profile")
        sess = open_session(ort, model, so, opts["provider"])
        feeds = make_feeds(sess, batch, shape, source=model)
        for _ in range(warmup):
            run_session(sess, None, feeds, model)
        e2e = protocol.time_runs(lambda: run_session(sess, None, feeds, model), runs)
        profile_path = sess.end_profiling()
        with open(profile_path) as fh:
            events = json.load(fh)
        nodes = parse_profile_events(events)
        total_runs = warmup + runs
        mapping: dict[str, list[str]] = {}
        if os.path.isfile(optimized):
            try:
                mapping = nodemap.map_nodes(onnx_lite.load_graph(model), onnx_lite.load_graph(optimized))
            except (ValueError, IndexError):
                mapping = {}
        layers = []
        for name, info in nodes.items():
            durs, wall = info["durations_us"], info["wall_us"]
            if len(durs) >= total_runs:  # drop warm-up runs (events are in run order)
                keep_from = len(durs) - runs * (len(durs) // total_runs)
                durs, wall = durs[keep_from:], wall[keep_from:]
            layers.append({
                "name": name,
                "op": info["op"],
                "median_ms": float(np.median(durs)) / 1e3 if durs else 0.0,
                "wall_ms": float(np.median(wall)) / 1e3 if wall else 0.0,
                "onnx_nodes": mapping.get(name, []),
            })
        return layers, e2e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure(model: str, opts: dict[str, Any], *, warmup: int, runs: int, per_layer: bool = False,
            batch: int | None = None, shape: list[int] | None = None) -> dict[str, Any]:
    """End-to-end samples (and optionally per-layer times) of one model."""
    ort = import_ort()
    m = _Model(ort, model, opts, batch, shape)
    for _ in range(warmup):
        m()
    result = protocol.summarize(protocol.time_runs(m, runs))
    result["per_layer"] = []
    if per_layer:
        layers, e2e = per_layer_times(ort, model, opts, warmup=min(warmup, 10), runs=runs, batch=batch, shape=shape)
        result["per_layer"] = layers
        result["per_layer_e2e_median_ms"] = float(np.median(e2e))
    result["runtime"] = runtime_info(ort, opts["provider"], opts["threads"])
    return result


def compare(models: list[str], opts: dict[str, Any], *, blocks: int, warmup: int, runs: int,
            batch: int | None = None, shape: list[int] | None = None) -> dict[str, Any]:
    """Several models measured in interleaved blocks in one window; ratios vs the first."""
    ort = import_ort()
    runners = [_Model(ort, m, opts, batch, shape) for m in models]
    samples, ratios, block_ratios = protocol.interleaved(runners, blocks=blocks, runs=runs, warmup=warmup)
    results = []
    for s in samples:
        r = protocol.summarize(s)
        r["per_layer"] = []
        r["runtime"] = runtime_info(ort, opts["provider"], opts["threads"])
        results.append(r)
    return {"results": results, "ratios": ratios, "block_ratios": block_ratios}
