"""Board side: the runner's JSON protocol, ORT per-node mapping, interleaved blocks, TensorRT logic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rlprune_edge.board import nodemap, onnx_lite, protocol, runner, trt_measure
from rlprune_edge.onnx_io import export_onnx

ROOT = Path(__file__).resolve().parent.parent


class Net(nn.Module):
    """Conv-BN-ReLU chain, an unaligned (30-channel) conv, a residual add, pooling and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(16, 30, 3, padding=1), nn.ReLU())
        self.c3 = nn.Conv2d(30, 16, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = self.c1(x)
        y = torch.relu(self.c3(self.c2(y)) + y)
        return self.fc(torch.flatten(self.pool(y), 1))


@pytest.fixture(scope="module")
def net_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return export_onnx(Net().eval(), tmp_path_factory.mktemp("m") / "net.onnx", (3, 16, 16))


def test_onnx_lite_matches_onnx_package(net_onnx):
    import onnx

    ref = onnx.load(str(net_onnx))
    g = onnx_lite.load_graph(net_onnx)
    assert [n.name for n in g.nodes] == [n.name for n in ref.graph.node]
    assert [n.op_type for n in g.nodes] == [n.op_type for n in ref.graph.node]
    assert g.inputs == {"input": [1, 3, 16, 16]}
    for t in ref.graph.initializer:
        np.testing.assert_array_equal(g.initializers[t.name], onnx.numpy_helper.to_array(t))
    conv = next(n for n in g.nodes if n.op_type == "Conv")
    assert conv.attrs["kernel_shape"] == [3, 3]


def test_runner_script_measures_with_per_layer_mapping(net_onnx):
    """The runner as a plain script (what runs on a board) prints one JSON document."""
    out = subprocess.run([sys.executable, str(ROOT / "devices" / "runner.py"), "measure", "--model", str(net_onnx),
                          "--threads", "1", "--warmup", "2", "--runs", "5", "--per-layer"],
                         capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert {"median_ms", "p90_ms", "p99_ms", "samples_ms", "per_layer", "device", "runtime"} <= set(doc)
    assert len(doc["samples_ms"]) == 5 and doc["runtime"]["name"] == "onnxruntime" and doc["runtime"]["threads"] == 1
    covered = {n for layer in doc["per_layer"] for n in layer["onnx_nodes"]}
    onnx_nodes = {n.name for n in onnx_lite.load_graph(net_onnx).nodes}
    # every ONNX compute node is attributed to exactly one executed layer
    convs = {n.name for n in onnx_lite.load_graph(net_onnx).nodes if n.op_type in ("Conv", "Gemm")}
    assert convs <= covered <= onnx_nodes
    owners = [n for layer in doc["per_layer"] for n in layer["onnx_nodes"]]
    assert len(owners) == len(set(owners))


def test_runner_compare_gives_ratios(net_onnx):
    code, doc = runner.run(["measure", "--model", str(net_onnx), "--compare", str(net_onnx), "--threads", "1",
                            "--warmup", "1", "--runs", "4", "--blocks", "2"])
    assert code == 0
    assert len(doc["results"]) == 2 and doc["ratios"][0] == 1.0 and doc["ratios"][1] > 0
    assert all(len(r["samples_ms"]) == 4 for r in doc["results"])


def test_runner_errors_are_json_with_exit_codes(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_text("not a model")
    code, doc = runner.run(["measure", "--model", str(bad)])
    assert code == 2 and doc["error"] == "bad_model"
    code, doc = runner.run(["measure", "--model", str(bad), "--provider", "NoSuchProvider"])
    assert code == 3 and doc["error"] == "missing_provider" and doc["package"] == "onnxruntime"
    code, doc = runner.run(["measure"])
    assert code == 2 and doc["error"] == "bad_arguments"
    code, doc = runner.run(["measure", "--model", str(bad), "--runtime", "tensorrt"])
    assert code == 3 and doc["error"] == "missing_runtime" and doc["package"] in ("tensorrt", "pycuda")


def test_runner_missing_onnxruntime_exit_3(tmp_path, net_onnx):
    """A board without onnxruntime: the runner copied alone with a python that cannot import it."""
    board = tmp_path / "board"
    board.mkdir()
    for f in (ROOT / "rlprune_edge" / "board").glob("*.py"):
        (board / f.name).write_text(f.read_text())
    (board / "onnxruntime.py").write_text("raise ImportError('no onnxruntime here')\n")
    out = subprocess.run([sys.executable, str(board / "runner.py"), "measure", "--model", str(net_onnx)],
                         capture_output=True, text=True, timeout=60, cwd=str(board),
                         env={**os.environ, "PYTHONPATH": str(board)})
    assert out.returncode == 3
    doc = json.loads(out.stdout)
    assert doc["error"] == "missing_runtime" and doc["package"] == "onnxruntime"


def test_dynamic_shape_needs_shape(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    path = tmp_path / "dyn.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 8, 8),), str(path), input_names=["input"], output_names=["out"],
                      dynamic_axes={"input": {0: "b", 2: "h", 3: "w"}}, dynamo=False)
    code, doc = runner.run(["measure", "--model", str(path), "--runs", "2", "--warmup", "0"])
    assert code == 2 and doc["error"] == "dynamic_shape"
    code, doc = runner.run(["measure", "--model", str(path), "--runs", "2", "--warmup", "0", "--shape", "3,8,8"])
    assert code == 0 and len(doc["samples_ms"]) == 2


def test_nodemap_fingerprint_survives_reorder_and_padding():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((30, 16, 3, 3)).astype(np.float32)
    padded = np.zeros((32, 16, 3, 3), np.float32)
    padded[:30] = w
    reordered = padded.reshape(4, 8, 16, 9).transpose(0, 2, 3, 1).copy()
    assert nodemap.fingerprint(w) == nodemap.fingerprint(reordered)
    assert nodemap.fingerprint(w) != nodemap.fingerprint(w * 2)


def test_nodemap_maps_fused_and_renamed_nodes():
    """Executed graph with renamed weights, fused activation and a renamed fused node."""
    rng = np.random.default_rng(1)
    w1, w2 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32), rng.standard_normal((8, 8, 1, 1)).astype(np.float32)
    N = onnx_lite.Node
    orig = onnx_lite.Graph(
        nodes=[N("conv_a", "Conv", "", ["x", "wa"], ["a"]), N("relu_a", "Relu", "", ["a"], ["ra"]),
               N("conv_b", "Conv", "", ["ra", "wb"], ["b"]), N("add", "Add", "", ["b", "ra"], ["s"]),
               N("relu_s", "Relu", "", ["s"], ["y"])],
        initializers={"wa": w1, "wb": w2}, inputs={"x": [1, 3, 8, 8]}, outputs=["y"])
    opt = onnx_lite.Graph(
        nodes=[N("ra_nchwc", "Conv", "com.microsoft.nchwc", ["x", "reorder"], ["t0"]),
               N("y_nchwc", "Conv", "com.microsoft.nchwc", ["t0", "reorder_1", "t0"], ["t1"]),
               N("ReorderOutput", "ReorderOutput", "com.microsoft.nchwc", ["t1"], ["y"])],
        initializers={"reorder": w1.transpose(0, 2, 3, 1).copy(), "reorder_1": w2.copy()},
        inputs={"x": [1, 3, 8, 8]}, outputs=["y"])
    m = nodemap.map_nodes(orig, opt)
    assert m["ra_nchwc"] == ["conv_a", "relu_a"]
    assert m["y_nchwc"] == ["conv_b", "add", "relu_s"]
    assert m["ReorderOutput"] == []


def test_interleaved_blocks_alternate_and_report_ratios():
    calls: list[int] = []
    costs = [1.0, 2.0]

    def make(i):
        return lambda: calls.append(i)

    def fake_timer(run_once, n):
        before = len(calls)
        for _ in range(n):
            run_once()
        return [costs[calls[before]]] * n

    samples, ratios, block_ratios = protocol.interleaved([make(0), make(1)], blocks=3, runs=6, warmup=1,
                                                         timer=fake_timer)
    assert ratios == [1.0, 2.0] and block_ratios[1] == [2.0, 2.0, 2.0]
    assert [len(s) for s in samples] == [6, 6]
    # warm-up then blocks: A B | B A | A B (protocol.block_orders for two models), each turn opened
    # by one untimed settle run of the same model
    turns = calls[2:]
    assert turns[:3] == [0, 0, 0] and turns[3:6] == [1, 1, 1] and turns[6:9] == [1, 1, 1] and turns[9:12] == [0, 0, 0]
    assert len(calls) == 2 + 3 * 2 * 3


def _warm_cold_reading(n_models: int, settle: int, warm_after: int = 1, runs: int = 12) -> list[float]:
    """Ratios of identical models whose run is fast only after `warm_after` runs of the same model in a row."""
    calls: list[int] = []

    def make(i):
        return lambda: calls.append(i)

    def timer(run_once, n):
        out = []
        for _ in range(n):
            before = calls[-warm_after:]
            run_once()
            warm = len(before) == warm_after and all(c == calls[-1] for c in before)
            out.append(1.0 if warm else 1.5)  # cold while other models' runs are recent
        return out

    blocks = 2 * n_models * 2  # whole cycles of the block orders
    _, ratios, _ = protocol.interleaved([make(i) for i in range(n_models)], blocks=blocks, runs=runs, warmup=0,
                                        timer=timer, settle=settle)
    return ratios


@pytest.mark.parametrize("n_models", [3, 4, 5])
def test_interleaved_has_no_list_position_bias(n_models):
    """Identical models read identically at every list position, even when warming takes several runs.

    With the earlier forward/reversed order the list's two ends ran twice in a row at block
    boundaries and read faster than the middle ones (measured: 5% on a ResNet-18 plan); the settle
    run hid that only when one run warms a model.
    """
    for settle, warm_after in ((0, 1), (1, 1), (1, 3)):
        ratios = _warm_cold_reading(n_models, settle, warm_after, runs=2 * 2 * n_models * 2)
        assert ratios == [1.0] * n_models, (settle, warm_after, ratios)
    assert _warm_cold_reading(n_models, settle=1) == [1.0] * n_models


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7])
def test_block_orders_balance_positions_and_predecessors(n):
    from collections import Counter

    rows = protocol.block_orders(n)
    assert all(sorted(r) == list(range(n)) for r in rows)
    positions = Counter((i, r[i]) for r in rows for i in range(n))
    assert len(set(positions.values())) == 1 and len(positions) == n * n  # each model at each position equally
    pairs = Counter((r[i], r[i + 1]) for r in rows for i in range(n - 1))
    assert len(set(pairs.values())) == 1 and len(pairs) == n * (n - 1)  # each model after each other equally
    if n == 2:
        assert rows == [[0, 1], [1, 0]]  # A B | B A, as before
    else:
        assert all(rows[k][-1] != rows[(k + 1) % len(rows)][0] for k in range(len(rows)))  # no model twice in a row


def test_summarize_percentiles():
    s = protocol.summarize([float(i) for i in range(1, 101)])
    assert s["median_ms"] == 50.5 and s["p90_ms"] == pytest.approx(90.1) and s["p99_ms"] == pytest.approx(99.01)
    with pytest.raises(protocol.BoardError):
        protocol.summarize([])


# --- TensorRT logic that needs no GPU ------------------------------------------------------------


def test_trt_builder_flags():
    assert trt_measure.builder_flags("fp32") == []
    assert trt_measure.builder_flags("fp16") == ["FP16"]
    assert trt_measure.builder_flags("int8") == ["INT8", "FP16"]
    with pytest.raises(protocol.BoardError):
        trt_measure.builder_flags("fp8")


def test_trt_inspector_parsing_maps_fused_layers():
    names = {"/0/Conv", "/2/Relu", "/3/Conv", "/5/Relu", "/6/MaxPool"}
    info = json.dumps({"Layers": [
        {"Name": "/0/Conv + /2/Relu", "LayerType": "CaskConvolution",
         "Metadata": "[ONNX Layer: /0/Conv]\x1e[ONNX Layer: /2/Relu]"},
        {"Name": "/3/Conv + /5/Relu", "LayerType": "CaskConvolution"},  # no metadata: name parts
        {"Name": "Reformatting CopyNode for Input Tensor 0 to /6/MaxPool", "LayerType": "Reformat"},
        "/6/MaxPool",
    ]})
    m = trt_measure.parse_inspector(info, names)
    assert m["/0/Conv + /2/Relu"] == ["/0/Conv", "/2/Relu"]
    assert m["/3/Conv + /5/Relu"] == ["/3/Conv", "/5/Relu"]
    assert m["Reformatting CopyNode for Input Tensor 0 to /6/MaxPool"] == []
    assert m["/6/MaxPool"] == ["/6/MaxPool"]


def test_trt_profiler_aggregation():
    sink = trt_measure.LayerTimes()
    for run in range(3):
        sink.report_layer_time("a + b", 1.0 + run)
        sink.report_layer_time("c", 0.5)
    rows = sink.summary({"a + b": ["a", "b"]})
    assert rows == [{"name": "a + b", "op": "trt", "median_ms": 2.0, "onnx_nodes": ["a", "b"]},
                    {"name": "c", "op": "trt", "median_ms": 0.5, "onnx_nodes": []}]


def test_tensorrt_backend_absent_is_a_clear_device_error():
    from rlprune_edge.cli import main
    from rlprune_edge.errors import DeviceError
    from rlprune_edge.latency.registry import get_backend

    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    with pytest.raises(DeviceError, match=r"pip install 'rlprune-edge\[tensorrt\]'"):
        get_backend("desktop-gpu-tensorrt")
    assert main(["profiles", "check", "desktop-gpu-tensorrt"]) == 2


def test_parse_ort_profile_kernel_and_wall_times():
    from rlprune_edge.board.ort_measure import parse_profile_events

    def node(name, ts, dur, op="Conv"):
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    events = [
        {"cat": "Session", "name": "model_run", "ts": 100, "dur": 60},
        node("a", 110, 20), {"cat": "Node", "name": "a_fence_before", "ts": 109, "dur": 0}, node("b", 135, 10, "Relu"),
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 40},
        node("a", 202, 18), node("b", 221, 9, "Relu"),
    ]
    out = parse_profile_events(events)
    assert out["a"]["durations_us"] == [20, 18] and out["a"]["wall_us"] == [30, 20]
    assert out["b"]["durations_us"] == [10, 9] and out["b"]["wall_us"] == [15, 10]
    assert out["b"]["op"] == "Relu"


def test_session_options_stop_spinning_between_runs():
    """Interleaved A/B blocks need idle threads to stop spinning when Run() returns (see ort_measure)."""
    import onnxruntime as ort

    from rlprune_edge.board import ort_measure

    so = ort_measure.session_options(ort, threads=2, inter_op_threads=1, graph_optimization="all")
    assert so.get_session_config_entry("session.force_spinning_stop") == "1"
    assert so.intra_op_num_threads == 2
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_registry_names_backends_and_imports_them_on_use():
    import subprocess
    import sys

    from rlprune_edge.latency import registry
    from rlprune_edge.profiles import load_profile
    from rlprune_edge.runtimes import get_runtime, runtime_names
    from rlprune_edge.runtimes.onnxruntime import OrtBackend

    assert {"onnxruntime", "tensorrt", "torch"} <= set(runtime_names())
    assert isinstance(registry.get_backend(load_profile("host-cpu")), OrtBackend)
    assert get_runtime("tensorrt").on_board and not get_runtime("torch").on_board
    for spec in registry.CONNECTION_BACKENDS.values():
        assert isinstance(registry.resolve(spec), type)
    # importing the interface or the registry loads no backend module, and loading a profile no runtime
    code = ("import sys, rlprune_edge.latency.registry, rlprune_edge.runtimes.backend; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('rlprune_edge.latency.')))); "
            "from rlprune_edge.profiles import load_profile; load_profile('cuda-torch'); "
            "print(' '.join(m for m in ('torch', 'onnxruntime', 'tensorrt', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["rlprune_edge.latency.registry", ""]
