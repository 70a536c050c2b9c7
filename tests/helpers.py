"""Small helpers shared by test modules (not fixtures)."""

from __future__ import annotations

import importlib
from types import ModuleType

import torch


def load_tool(name: str) -> ModuleType:
    """The tool tools/NAME.py, imported as the module ``tools.NAME`` (the repository root is on the
    tests' path: pyproject.toml's ``pythonpath``)."""
    return importlib.import_module(f"tools.{name}")


def load_study(name: str) -> ModuleType:
    """The study benchmarks/studies/NAME.py, imported as the module ``benchmarks.studies.NAME``."""
    return importlib.import_module(f"benchmarks.studies.{name}")


def randomize_bn(model, seed: int):
    """Non-trivial BatchNorm statistics/affine so that a wrongly sliced BN shows in the outputs (in place)."""
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return model


def param_count(model) -> int:
    """Number of parameters of `model`."""
    return sum(p.numel() for p in model.parameters())


def ort_relative_error(model, x: torch.Tensor, path) -> float:
    """max |ORT - torch| / max |torch| on `x` for the model exported by rlprune_edge.onnx_io."""
    import numpy as np
    import onnxruntime as ort

    from rlprune_edge.onnx_io import export_onnx

    onnx_path = export_onnx(model, path, tuple(x.shape[1:]))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))


def tiny_profile(name: str, runtime: str = 'name = "onnxruntime"\nprovider = "CPUExecutionProvider"') -> str:
    """A test profile's TOML: `runtime` lines, one thread, channel multiple 2, a few short runs."""
    return (f'name = "{name}"\ndescription = "test profile: few runs"\n[runtime]\n{runtime}\nthreads = 1\n'
            "[pruning]\nchannel_multiple = 2\n[measure]\nwarmup = 2\nruns = 8\nblocks = 2\n"
            "decision_runs = 32\ndecision_windows = 2\ndecision_sessions = 2\ndecision_pause_s = 0\n")



def tiny_depth_compress(tmp_path, monkeypatch, model: str, width: float) -> list[str]:
    """`compress` arguments for a tiny plan search with two depth-plan sets (sparsity target, tiny
    profile written under `tmp_path`, cache redirected there); the output is ``tmp_path / "out"``."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    prof = tmp_path / "tiny.toml"
    prof.write_text(tiny_profile("tiny-cpu"))
    return ["compress", "--model", model, "--width", str(width), "--latency-variants", "2", "--kd-images", "128",
            "--pareto-test-size", "64", "--test-images", "200", "--no-bundle", "--quiet", "--probe-batches", "2",
            "--screen-batches", "1", "--select-size", "64", "--confirm-size", "64", "--per-round", "2",
            "--candidates", "2", "--ramps", "", "--depth-plans", "2", "--profile", str(prof),
            "--sparsity", "0.3", "--reward", "accuracy", "--device", "cpu", "--out", str(tmp_path / "out")]


def fake_latency_model(tmp_path, monkeypatch, model, x):
    """(latency model fitted on `test_latency_model.FakeBackend`, whose per-node time is exactly linear
    in work; that backend; the model's groups), cache under `tmp_path`."""
    from test_latency_model import FakeBackend

    from rlprune_edge.graph import prunable_groups
    from rlprune_edge.latency import cache
    from rlprune_edge.profiles import load_profile

    monkeypatch.setenv("RLPRUNE_EDGE_CACHE", str(tmp_path / "cache"))
    groups = prunable_groups(model, x)
    backend = FakeBackend()
    lm = cache.get_or_fit(model, x, groups, backend, load_profile("host-cpu"), n_variants=3, seed=0, runs=2)
    return lm, backend, groups


def one_line_error(capture) -> str:
    """The one stderr line a refused command printed (`capture`: capsys, or capfd for a runtime's own
    log lines); fails on a traceback, an "unexpected failure" or more than one line."""
    err = capture.readouterr().err
    assert "Traceback" not in err, err
    assert "unexpected failure" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]
