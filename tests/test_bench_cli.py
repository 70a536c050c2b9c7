"""`rlprune-edge bench` and `latency-check` end to end on host-cpu, and their bad-input errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from rlprune_edge.cli import main
from rlprune_edge.onnx_io import export_onnx
from rlprune_edge.runtimes.backend import write_tiny_onnx

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory) -> Path:
    from rlprune_edge.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet20", width=0.25).eval()
    return export_onnx(model, tmp_path_factory.mktemp("b") / "resnet20.onnx", (3, 32, 32))


def test_bench_json_shape_and_per_layer(cnn_onnx, capsys):
    assert main(["bench", str(cnn_onnx), "--profile", "host-cpu", "--runs", "5", "--warmup", "1", "--per-layer",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"median_ms", "p90_ms", "p99_ms", "samples_ms", "per_layer", "device", "runtime"} <= set(doc)
    assert len(doc["samples_ms"]) == 5 and doc["median_ms"] > 0
    assert doc["runtime"]["name"] == "onnxruntime" and doc["runtime"]["version"]
    assert doc["runtime"]["provider"] == "CPUExecutionProvider" and doc["runtime"]["threads"] == 2
    assert all({"name", "op", "median_ms", "onnx_nodes"} <= set(layer) for layer in doc["per_layer"])
    import onnx

    convs = {n.name for n in onnx.load(str(cnn_onnx)).graph.node if n.op_type == "Conv"}
    mapped = {n for layer in doc["per_layer"] for n in layer["onnx_nodes"]}
    assert convs <= mapped  # every conv's time is attributed to it, whatever ORT fused or renamed
    assert doc["per_layer_sum_ms"] == pytest.approx(sum(layer["median_ms"] for layer in doc["per_layer"]))


def test_bench_table_by_default(cnn_onnx, capsys):
    assert main(["bench", str(cnn_onnx), "--runs", "3", "--warmup", "0", "--per-layer"]) == 0
    out = capsys.readouterr().out
    assert "median" in out and "p90" in out and "sum of layers" in out and "onnx nodes" in out


def test_bench_with_profile_path_and_shape(tmp_path, capsys):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    dyn = tmp_path / "dyn.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 8, 8),), str(dyn), input_names=["input"], output_names=["out"],
                      dynamic_axes={"input": {0: "b", 2: "h", 3: "w"}}, dynamo=False)
    # no shape in the profile -> one clear sentence, exit 2
    assert main(["bench", str(dyn), "--runs", "2", "--warmup", "0"]) == 2
    err = capsys.readouterr().err
    assert "dynamic shape" in err and "[input]" in err and "Traceback" not in err
    prof = tmp_path / "mine.toml"
    prof.write_text('name = "mine"\n[runtime]\nname = "onnxruntime"\nthreads = 1\n[input]\nshape = [3, 12, 12]\n')
    assert main(["bench", str(dyn), "--profile", str(prof), "--runs", "2", "--warmup", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runtime"]["threads"] == 1


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["bench", "{txt}", "--runs", "2"], "is not an ONNX model"),
        (["bench", "{missing}", "--runs", "2"], "does not exist"),
        (["bench", "{tiny}", "--profile", "no-such-board"], "unknown profile 'no-such-board'"),
        (["bench", "{tiny}", "--profile", "desktop-gpu-tensorrt"], "TensorRT is not installed"),
        (["bench", "{tiny}", "--runs", "0"], "--runs must be an integer in 1..100,000, got 0"),
    ],
)
def test_bench_bad_input_exit_2(tmp_path, argv, needle):
    txt = tmp_path / "model.onnx"
    txt.write_text("hello, not a protobuf")
    tiny = write_tiny_onnx(tmp_path / "tiny.onnx")
    subs = {"{txt}": str(txt), "{missing}": str(tmp_path / "nope.onnx"), "{tiny}": str(tiny)}
    argv = [subs.get(a, a) for a in argv]
    if "desktop-gpu-tensorrt" in argv:
        pytest.importorskip("onnx")
        try:
            import tensorrt  # noqa: F401

            pytest.skip("TensorRT is installed here")
        except ImportError:
            pass
    out = subprocess.run([sys.executable, "-m", "rlprune_edge", *argv], capture_output=True, text=True, timeout=120,
                         cwd=str(ROOT))
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_latency_check_writes_report(tmp_path, monkeypatch, capsys):
    """Real fit and real measurements on a tiny model (numbers not asserted: timing is noise here)."""
    monkeypatch.setenv("RLPRUNE_EDGE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "check.json"
    assert main(["latency-check", "--model", "resnet20", "--width", "0.5", "--profile", "host-cpu", "--variants", "2",
                 "--fit-variants", "2", "--runs", "4", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert len(doc["variants"]) == 2
    for v in doc["variants"]:
        assert v["predicted_ms"] > 0 and v["measured_ms"] > 0
        assert v["rel_error"] == pytest.approx(v["predicted_ms"] / v["measured_ms"] - 1)
    errs = sorted(abs(v["rel_error"]) for v in doc["variants"])
    assert doc["median_abs_rel_error"] == pytest.approx(sum(errs) / 2)
    assert Path(doc["latency_model"]).is_file()  # cached for the next run
    capsys.readouterr()
    assert main(["latency-check", "--model", "resnet20", "--profile", "host-cpu", "--variants", "0",
                 "--json", str(out)]) == 2


def test_bench_torch_cpu_profile_takes_a_model_name(tmp_path, capsys):
    prof = tmp_path / "torch-cpu.toml"
    prof.write_text('name = "torch-cpu"\n[runtime]\nname = "torch"\ndevice = "cpu"\nthreads = 1\n')
    assert main(["bench", "resnet20", "--profile", str(prof), "--runs", "3", "--warmup", "1", "--per-layer",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["runtime"]["name"] == "torch" and len(doc["samples_ms"]) == 3
    assert any(layer["op"] == "Conv2d" for layer in doc["per_layer"])
    # an ONNX file cannot run in eager torch: one sentence, exit 2
    tiny = write_tiny_onnx(tmp_path / "tiny.onnx")
    assert main(["bench", str(tiny), "--profile", str(prof)]) == 2
    assert "measures modules, not ONNX files" in capsys.readouterr().err
