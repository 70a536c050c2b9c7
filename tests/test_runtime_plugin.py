"""Runtimes are plug-ins (issue 47): a new runtime is one class plus its profile, and nothing else changes.

The toy runtime "fake" below lives only in this file. Its backend measures modules and answers with
latencies proportional to each layer's MACs (``ns_per_mac``, an option of its own); registering it is
all it takes for profile validation, ``profiles show``/``check``/``list``, ``bench`` and the latency
model's fit and check (``latency-check``) to run on it.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from rlprune_edge.cli import main
from rlprune_edge.errors import UserError
from rlprune_edge.flops import count_flops
from rlprune_edge.layers import filter_bank, leaf_modules
from rlprune_edge.models import build_model
from rlprune_edge.profiles import load_profile
from rlprune_edge.runtimes import get_runtime, register_runtime, runtime_names, unregister_runtime
from rlprune_edge.runtimes.backend import LayerTime, Measurement, write_tiny_onnx
from rlprune_edge.runtimes.base import MODULE, Option, Runtime


def layer_macs(model: nn.Module) -> dict[str, int]:
    """MACs of every leaf module of `model` for one input of its ``input_shape`` (0 for non-filter banks)."""
    macs = {name: 0 for name, _ in leaf_modules(model)}
    hooks = []
    for name, mod in leaf_modules(model):
        if filter_bank(mod) is not None:
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, name=name: macs.__setitem__(name, macs[name] + filter_bank(m).macs(m, i[0], o))))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *model.input_shape))
    finally:
        for h in hooks:
            h.remove()
    return macs


class FakeBackend:
    """Deterministic 'latency': ``ns_per_mac`` nanoseconds per multiply-accumulate, per layer."""

    name = "fake"

    def __init__(self, profile):
        self.profile = profile
        self.ms_per_mac = profile.runtime.ns_per_mac * 1e-6

    def measure(self, model, *, warmup=None, runs=None, per_layer=False) -> Measurement:
        if not isinstance(model, nn.Module):
            raise UserError(f"profile {self.profile.name}: the fake runtime measures modules, not {model}.")
        per = {n: macs * self.ms_per_mac for n, macs in layer_macs(model).items()}
        total = sum(per.values())
        runs = self.profile.measure.runs if runs is None else runs
        layers = [LayerTime(name=n, op=type(model.get_submodule(n)).__name__, median_ms=t, onnx_nodes=[n])
                  for n, t in per.items()] if per_layer else []
        return Measurement(median_ms=total, p90_ms=total, p99_ms=total, samples_ms=[total] * runs, per_layer=layers,
                           runtime={"name": "fake", "version": "0", "ns_per_mac": self.profile.runtime.ns_per_mac})

    def compare(self, models, *, blocks=None, warmup=None, runs=None) -> list[Measurement]:
        out = [self.measure(m, runs=runs) for m in models]
        for m in out:
            m.ratio = m.median_ms / out[0].median_ms
        return out

    def self_test(self) -> dict:
        tiny = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        tiny.input_shape = (3, 16, 16)
        m = self.measure(tiny, runs=3)
        return {"ok": True, "runtime": m.runtime, "device": {}, "smoke_median_ms": m.median_ms}


class FakeRuntime(Runtime):
    name = "fake"
    options = (Option("ns_per_mac", 1.0, positive=True, help="nanoseconds per multiply-accumulate"),)
    precisions = ("fp32",)
    artifact = MODULE

    def backend(self, profile):
        return FakeBackend(profile)


@pytest.fixture
def fake():
    rt = register_runtime(FakeRuntime)
    yield rt
    unregister_runtime("fake")


def _profile(tmp_path, runtime: str = 'name = "fake"\nns_per_mac = 2.0', extra: str = "") -> str:
    path = tmp_path / "fake-board.toml"
    path.write_text(f'name = "fake-board"\ndescription = "a toy runtime"\n[runtime]\n{runtime}\n'
                    f'[pruning]\nchannel_multiple = 8\n[measure]\nwarmup = 0\nruns = 4\nblocks = 2\n{extra}')
    return str(path)


def test_the_registry_lists_the_new_runtime_and_profiles_validate_its_options(tmp_path, capsys, monkeypatch, fake):
    assert "fake" in runtime_names() and get_runtime("fake") is fake
    p = load_profile(_profile(tmp_path))
    assert (p.runtime.name, p.runtime.precision, p.runtime.ns_per_mac) == ("fake", "fp32", 2.0)
    assert p.to_dict()["runtime"] == {"name": "fake", "precision": "fp32", "ns_per_mac": 2.0}
    assert load_profile(_profile(tmp_path, 'name = "fake"')).runtime.ns_per_mac == 1.0  # the option's default
    for runtime, needle in [
        ('name = "fake"\nns_per_mac = "fast"', "[runtime] ns_per_mac must be a number, got 'fast'"),
        ('name = "fake"\nns_per_mac = 0', "[runtime] ns_per_mac must be > 0"),
        ('name = "fake"\nns_per_mac_x = 1', "ns_per_mac_x is not a known key (did you mean 'ns_per_mac'?)"),
        ('name = "fake"\nthreads = 2', "threads is not a known key; known keys for runtime fake (threads is an "
                                       "option of onnxruntime, torch): name, precision, ns_per_mac"),
        ('name = "fake"\nprecision = "int8"', "[runtime] precision (runtime fake) must be one of fp32"),
    ]:
        with pytest.raises(UserError) as exc:
            load_profile(_profile(tmp_path, runtime))
        assert needle in str(exc.value) and "fake-board.toml" in str(exc.value)
    with pytest.raises(UserError, match='"fake" runs on this machine only'):  # no board runner for it
        load_profile(_profile(tmp_path, extra='[connection]\nkind = "ssh"\ndestination = "pi@board"\n'))

    path = _profile(tmp_path)
    assert main(["profiles", "show", path]) == 0
    out = capsys.readouterr().out
    assert "name = 'fake'" in out and "ns_per_mac = 2.0" in out
    assert main(["profiles", "check", path, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and doc["runtime"]["name"] == "fake" and doc["smoke_median_ms"] == pytest.approx(16 * 16 * 8 * 27 * 2e-6)
    monkeypatch.setenv("RLPRUNE_EDGE_PROFILES_DIR", str(tmp_path))
    assert main(["profiles", "list"]) == 0
    out = capsys.readouterr().out
    assert "fake-board" in out and "fake" in out.splitlines()[-1]  # the runtimes line names it


def test_bench_on_the_new_runtime_measures_the_module(tmp_path, capsys, fake):
    path = _profile(tmp_path)
    assert main(["bench", "resnet20", "--profile", path, "--runs", "3", "--per-layer", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    macs = count_flops(build_model("resnet20"), (3, 32, 32))
    assert doc["runtime"]["name"] == "fake" and doc["samples_ms"] == [doc["median_ms"]] * 3
    assert doc["median_ms"] == pytest.approx(macs * 2e-6) and doc["per_layer_sum_ms"] == pytest.approx(macs * 2e-6)
    assert {layer["op"] for layer in doc["per_layer"]} >= {"Conv2d", "BatchNorm2d", "Linear"}
    # a module runtime takes no ONNX file: the same sentence torch profiles give, naming the runtime
    assert main(["bench", str(write_tiny_onnx(tmp_path / "tiny.onnx")), "--profile", path]) == 2
    assert "runs fake and measures modules, not ONNX files" in capsys.readouterr().err


def test_latency_model_fit_and_check_on_the_new_runtime(tmp_path, capsys, monkeypatch, fake):
    """latency-check: the latency model is fitted from the fake per-layer times and checked against the
    fake end-to-end times. Its slots are lines in each layer's work with channels in blocks of 8 (out)
    and 4 (in); with keep counts in multiples of 8 that is the MAC count, so the check is near exact."""
    monkeypatch.setenv("RLPRUNE_EDGE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "lc.json"
    assert main(["latency-check", "--model", "vgg11", "--width", "0.125", "--profile", _profile(tmp_path),
                 "--variants", "3", "--fit-variants", "3", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert len(doc["variants"]) == 3 and doc["median_abs_rel_error"] < 0.02
    for v in doc["variants"]:
        assert v["measured_ms"] > 0 and v["predicted_ms"] > 0


def test_unknown_runtime_is_refused_with_the_registry_list(tmp_path, fake):
    with pytest.raises(UserError) as exc:
        load_profile(_profile(tmp_path, 'name = "openvino"'))
    msg = str(exc.value)
    assert "fake-board.toml: [runtime] name must be one of " + ", ".join(runtime_names()) + ", got 'openvino'" in msg
    assert "fake" in runtime_names()
    unregister_runtime("fake")  # gone from the registry: a profile naming it is refused the same way
    with pytest.raises(UserError, match=r"name must be one of onnxruntime, tensorrt, torch, got 'fake'"):
        load_profile(_profile(tmp_path))
    with pytest.raises(UserError, match="unknown runtime 'fake'; known runtimes: onnxruntime, tensorrt, torch"):
        get_runtime("fake")


def test_board_runner_arguments_come_from_the_runtime_class(tmp_path, fake):
    """A runtime the board runner has passes its own options as flags; the shipped ones keep theirs."""
    ort = load_profile("raspberry-pi-4")
    assert get_runtime("onnxruntime").runner_args(ort) == [
        "--runtime", "onnxruntime", "--precision", "fp32", "--provider", "CPUExecutionProvider", "--threads", "4",
        "--inter-op-threads", "1", "--graph-optimization", "all", "--batch", "1"]
    trt = load_profile("jetson-orin-nano")
    assert get_runtime("tensorrt").runner_args(trt) == [
        "--runtime", "tensorrt", "--precision", "fp16", "--workspace-mb", "1024", "--batch", "1"]
    assert fake.runner_args(load_profile(_profile(tmp_path))) == [
        "--runtime", "fake", "--precision", "fp32", "--ns-per-mac", "2.0", "--batch", "1"]
    with pytest.raises(ValueError, match="already registered"):
        register_runtime(FakeRuntime())
    with pytest.raises(ValueError, match="shadow"):
        register_runtime(type("Bad", (FakeRuntime,), {"name": "bad", "options": (Option("precision", "x"),)}))


def test_export_asks_the_runtime_what_a_bundle_holds(tmp_path, fake):
    from rlprune_edge.export import _check_precision

    p = load_profile(_profile(tmp_path))
    _check_precision(p, "fp32")
    with pytest.raises(UserError, match="precision int8 needs an onnxruntime or TensorRT profile, but profile "
                                        "'fake-board' runs fake; use precision fp32"):
        _check_precision(p, "int8")
    with pytest.raises(UserError, match="precision fp16 needs a TensorRT profile"):
        _check_precision(load_profile("host-cpu"), "fp16")
