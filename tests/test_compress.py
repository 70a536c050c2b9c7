"""`rlprune-edge compress` end to end on a tiny setting: outputs, bad input, resume == uninterrupted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlprune_edge.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import tiny_profile  # noqa: E402

pytest.importorskip("rlprune_edge.pruning")
pytest.importorskip("rlprune_edge.importance")

PROFILE = tiny_profile("tiny-cpu")

TINY = ["--model", "vgg11", "--width", "0.0625", "--latency-variants", "2", "--val-size", "64",
        "--candidates", "2", "--rounds", "1", "--kd-images", "128", "--step-kd-batches", "1", "--pareto-test-size", "64", "--test-images", "200",
        "--no-bundle", "--quiet"]


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    prof = tmp_path / "tiny.toml"
    prof.write_text(PROFILE)
    return tmp_path, str(prof)


def test_compress_outputs_and_resume_matches_uninterrupted(env):
    """One uninterrupted run (checks every output), one cut after a step and resumed: same result."""
    tmp, prof = env
    common = [*TINY, "--profile", prof, "--sparsity", "0.4", "--step-ratio", "0.15", "--reward", "accuracy",
              "--seed", "3", "--search", "paper", "--device", "cpu"]  # bit-exact resume: CPU kernels
    out = tmp / "full"
    assert main(["compress", *common, "--out", str(out)]) == 0
    for name in ("model.pt", "model.onnx", "report.json", "pareto.png"):
        assert (out / name).stat().st_size > 0, name
    rep = json.loads((out / "report.json").read_text())
    for key in ("profile", "target", "base", "final", "measured_speedup", "steps", "wall_s"):
        assert key in rep
    for part in ("base", "final"):
        assert 0.0 <= rep[part]["test_acc"] <= 1.0 and rep[part]["latency_ms"] > 0
    assert rep["final"]["params"] < rep["base"]["params"] and rep["final"]["flops"] < rep["base"]["flops"]
    assert len(rep["steps"]) >= 2 and rep["steps"][-1]["sparsity"] >= 0.4 - 0.05
    assert rep["search"]["channel_multiple"] == 2  # the profile's, recorded
    assert rep["search"]["channel_multiple_basis"] == "the profile"
    for s in rep["steps"]:
        assert s["measured_latency_ms"] > 0 and s["predicted_latency_ms"] > 0 and 0 <= s["val_acc"] <= 1
        assert 0 <= s["test_acc"] <= 1
    from rlprune_edge.checkpoint import load_checkpoint

    model, info = load_checkpoint(out / "model.pt")  # weights_only inside
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(1, *info.input_shape)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert torch.allclose(model.eval()(x).detach(), torch.from_numpy(got), atol=1e-4)

    cut = tmp / "cut"
    assert main(["compress", *common, "--out", str(cut), "--stop-after", "1"]) == 0
    assert len(json.loads((cut / "search" / "state.json").read_text())["steps"]) == 1
    assert not (cut / "report.json").exists()
    assert main(["compress", *common, "--out", str(cut), "--resume"]) == 0
    full = json.loads((out / "search" / "state.json").read_text())["steps"]
    resumed = json.loads((cut / "search" / "state.json").read_text())["steps"]
    assert [s["keep"] for s in resumed] == [s["keep"] for s in full]
    assert [s["val_acc"] for s in resumed] == [s["val_acc"] for s in full]
    sa = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    sb = torch.load(cut / "model.pt", weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _nothing_written(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("args", [["--sparsity", "1.5"], ["--sparsity", "0"], ["--target-latency", "fast"],
                                  ["--target-latency", "2x"], ["--threads", "0"],
                                  ["--channel-multiple", "0"], ["--ramps=-1.5,steep"], ["--ramps=-9"]])
def test_bad_targets_exit_2_and_write_nothing(env, args, capsys):
    tmp, prof = env
    out = tmp / "bad"
    assert main(["compress", *TINY, "--profile", prof, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert _nothing_written(out)


def test_unreachable_target_and_class_mismatch_exit_2_keep_old_outputs(env, capsys):
    tmp, prof = env
    out = tmp / "keep"
    (out / "search").mkdir(parents=True)  # an earlier run of ours: the failing runs must not touch it
    (out / ".rlprune-edge-run").write_text('{"tool": "rlprune-edge compress"}\n')
    (out / "report.json").write_text("old")
    assert main(["compress", *TINY, "--profile", prof, "--target-latency", "0.0001ms", "--out", str(out)]) == 2
    assert "not reachable" in capsys.readouterr().err
    from rlprune_edge.checkpoint import resolve_model, save_checkpoint

    model, info = resolve_model("vgg11", width=0.0625, num_classes=5)
    ckpt = tmp / "five.pt"
    save_checkpoint(ckpt, model, info)
    args = [str(ckpt) if a == "vgg11" else a for a in TINY]
    assert main(["compress", *args, "--profile", prof, "--sparsity", "0.3", "--out", str(out)]) == 2
    assert "classes" in capsys.readouterr().err
    assert (out / "report.json").read_text() == "old"
    # vgg11 w0.0625 (groups of 4..32 channels): 0.8 sparsity fits the profile's multiple of 2, not a multiple of 8
    assert main(["compress", *TINY, "--profile", prof, "--sparsity", "0.8", "--channel-multiple", "8",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "at most" in err and "--min-keep" in err and "--channel-multiple" in err
    assert (out / "report.json").read_text() == "old"
    assert main(["compress", *TINY, "--profile", prof, "--sparsity", "0.8", "--channel-multiple", "8",
                 "--search", "paper", "--out", str(out)]) == 2
    assert "every group cut to 8 channels" in capsys.readouterr().err


PLAN = ["--probe-batches", "2", "--screen-batches", "1", "--select-size", "64", "--confirm-size", "64",
        "--per-round", "2"]


def test_plan_search_outputs_report_and_resume_matches_uninterrupted(env):
    """The default search end to end (sparsity target: no timing in the search), cut after a round and resumed."""
    tmp, prof = env
    common = [*TINY, *PLAN, "--candidates", "4", "--profile", prof, "--sparsity", "0.4", "--reward", "accuracy",
              "--seed", "1", "--device", "cpu"]  # bit-exact resume: CPU kernels
    out = tmp / "plan"
    assert main(["compress", *common, "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    s = rep["search"]
    assert s["method"] == "plan" and s["candidates"] == 4 and len(rep["steps"]) == 2
    depth = [r for r in s["plans"] if r["kind"].startswith("depth")]
    # VGG-11's last three conv units, one set per count (a sparsity target); two ramps fill round 0's
    # two slots, so the depth plans come beyond the budget of 4 (round 1: two sampled)
    assert [len(r["removed"]) for r in depth] == [1, 2, 3] and len(s["plans"]) == 1 + 4 + 3
    assert s["uniform"]["proxy_acc"] is not None and s["chosen"]["confirm_acc"] is not None
    assert isinstance(s["fallback_to_uniform"], bool) and len(s["probes"]) >= 1
    assert rep["final"]["params"] < rep["base"]["params"] and 0 < rep["measured_ratio"]
    cut = tmp / "plan-cut"
    assert main(["compress", *common, "--out", str(cut), "--stop-after", "1"]) == 0
    assert not (cut / "report.json").exists()
    assert main(["compress", *common, "--out", str(cut), "--resume"]) == 0
    a = json.loads((out / "search" / "plan_state.json").read_text())
    b = json.loads((cut / "search" / "plan_state.json").read_text())
    def plans(state):  # predicted ms depends on each run's own dense measurement; plans and scores must not
        return [(r["keep"], r["acc"], r["kl"]) for r in state["records"]]

    assert plans(a) == plans(b) and a["decision"] == b["decision"]
    sa = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    sb = torch.load(cut / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_uniform_search_with_a_latency_target_measures_and_reports(env):
    tmp, prof = env
    out = tmp / "uniform"
    assert main(["compress", *TINY, *PLAN, "--profile", prof, "--target-latency", "0.9x", "--search", "uniform",
                 "--channel-multiple", "2", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    s = rep["search"]
    assert s["method"] == "uniform" and s["fallback_to_uniform"] and len(s["plans"]) == 1
    assert (s["channel_multiple"], s["channel_multiple_basis"]) == (2, "--channel-multiple 2")
    assert s["measurements"] and s["uniform"]["measured_ratio"] is not None
    assert rep["measured_ratio"] > 0 and "windows" in rep["latency_statistic"]
    # every latency decision says how many of its sessions ran at the steady speed
    steady = rep["steady_speed"]
    sessions = 2  # the test profile's [measure] decision_sessions (helpers.tiny_profile)
    assert steady["used_sessions"] >= 1 and steady["sessions"] >= sessions and steady["reference_dense_ms"] > 0
    assert all("steady" in m and m["steady"]["sessions"] >= sessions for m in s["measurements"])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp: Path, args: list[str]) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 -m rlprune_edge compress ARGS` (2 CPU processes, gloo)."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "rlprune_edge", "compress", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)


def test_compress_under_torchrun_two_gloo_processes(env):
    """Rank 0 searches alone; both ranks then distil together (DDP); rank 0 writes the outputs."""
    tmp, prof = env
    out = tmp / "ddp"
    res = _torchrun(tmp, [*TINY, "--profile", prof, "--sparsity", "0.3", "--step-ratio", "0.15", "--reward",
                          "accuracy", "--kd-epochs", "1", "--out", str(out)])
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["distill"]["processes"] == 2 and rep["distill"]["kd_s"] > 0
    assert rep["final"]["params"] < rep["base"]["params"]
    assert (out / "model.onnx").stat().st_size > 0
    from rlprune_edge.checkpoint import load_checkpoint
    from rlprune_edge.flops import count_params

    model, _ = load_checkpoint(out / "model.pt")
    assert count_params(model) == rep["final"]["params"]


def test_compress_under_torchrun_bad_input_ends_without_hanging(env):
    """Rank 0 rejects the target; the waiting rank is released instead of waiting for a search."""
    tmp, prof = env
    out = tmp / "ddp-bad"
    res = _torchrun(tmp, [*TINY, "--profile", prof, "--target-latency", "0.0001ms", "--out", str(out)])
    assert res.returncode != 0
    assert "not reachable" in res.stderr and "Traceback (most recent call last)" not in res.stderr.split("error:")[0]
    assert not (out / "report.json").exists()


TORCH_PROFILE = tiny_profile("tiny-torch", 'name = "torch"\ndevice = "cpu"')


def test_compress_on_a_torch_cpu_profile_measures_modules_end_to_end(tmp_path, monkeypatch):
    """Issue 16: a torch profile runs the whole pipeline (latency model, search, final measurement)."""
    monkeypatch.setenv("RLPRUNE_EDGE_CACHE", str(tmp_path / "cache"))
    prof = tmp_path / "torch.toml"
    prof.write_text(TORCH_PROFILE)
    out = tmp_path / "torch-out"
    assert main(["compress", *TINY, *PLAN, "--candidates", "2", "--profile", str(prof), "--target-latency", "0.9x",
                 "--device", "cpu", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["profile"] == "tiny-torch" and rep["measured_ratio"] > 0 and rep["final"]["latency_ms"] > 0
    assert rep["search"]["measurements"]  # plans were measured as modules on the torch backend
    fits = [json.loads(f.read_text()) for f in (tmp_path / "cache").rglob("*.json")]
    slots = next(d["slots"] for d in fits if "slots" in d)
    assert any(name.startswith("features.") for name in slots)  # leaf-module names, not ONNX node names


def test_a_floor_no_faster_than_dense_is_refused_with_both_measured_figures(env, monkeypatch, capsys):
    """Launch-bound runtime (eager CUDA at batch 1): exit 2, both figures and what to change, nothing written."""
    tmp, prof = env
    import rlprune_edge.latency.campaign as windows

    monkeypatch.setattr(windows, "robust_ratios", lambda backend, profile, dense, paths, **kw: ([0.99], 1.05, [[0.99]]))
    out = tmp / "flat"
    assert main(["compress", *TINY, *PLAN, "--profile", prof, "--target-latency", "0.3x", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "1.050 ms" in err and "1.040 ms" in err and "cuda_graphs" in err and "batch" in err
    assert not out.exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (tools/gpu_check.sh runs it there)")
def test_compress_searches_and_distils_on_the_gpu(env):
    """--device cuda: importance, probes, scoring and the final KD on the GPU; outputs on the CPU as usual."""
    tmp, prof = env
    out = tmp / "gpu"
    assert main(["compress", *TINY, *PLAN, "--candidates", "2", "--profile", prof, "--sparsity", "0.3",
                 "--reward", "accuracy", "--device", "cuda", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["final"]["params"] < rep["base"]["params"] and 0 <= rep["final"]["test_acc"] <= 1
    sd = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert all(t.device.type == "cpu" for t in sd.values())
