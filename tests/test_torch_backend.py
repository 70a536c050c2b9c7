"""The torch backend as a first-class backend: modules through the latency model, per-layer times
named like the latency model's nodes, device and process-group choice (issue 16; no GPU needed)."""

from __future__ import annotations

import json

import pytest
import torch

from rlprune_edge.cli import main
from rlprune_edge.compute import process_group_backend, rank_device, resolve_device
from rlprune_edge.errors import UserError
from rlprune_edge.graph import prunable_groups
from rlprune_edge.latency.artifacts import (
    materialize,
    module_node_dims,
    node_dims,
    onnx_node_dims,
    takes_modules,
)
from rlprune_edge.latency.campaign import check_model, fit_latency_model
from rlprune_edge.latency.model import uniform_keep
from rlprune_edge.latency.registry import get_backend
from rlprune_edge.models import build_model
from rlprune_edge.onnx_io import export_onnx
from rlprune_edge.profiles import load_profile, parse_profile
from rlprune_edge.runtimes.torch_backend import _run_times

TORCH_CPU = {"name": "torch-cpu-test", "runtime": {"name": "torch", "device": "cpu", "threads": 1},
             "pruning": {"channel_multiple": 2}, "measure": {"warmup": 2, "runs": 12, "blocks": 3}}


def _profile():
    return parse_profile(TORCH_CPU, "torch-cpu-test.toml")


def test_module_dims_agree_with_the_onnx_export_for_every_conv_and_linear(tmp_path):
    torch.manual_seed(0)
    model = build_model("mobilenetv3_small", width=0.5).eval()
    mod = module_node_dims(model, (3, 32, 32))
    onx = onnx_node_dims(export_onnx(model, tmp_path / "m.onnx", (3, 32, 32)))
    onnx_convs = sorted((d["cin"], d["cout"], d["groups"], d["k"], d["hw_out"]) for d in onx.values() if d["op"] == "Conv")
    mod_convs = sorted((d["cin"], d["cout"], d["groups"], d["k"], d["hw_out"]) for d in mod.values() if d["op"] == "Conv")
    assert mod_convs == onnx_convs and len(mod_convs) > 20
    gemm = [(d["cin"], d["cout"]) for d in mod.values() if d["op"] == "Gemm"]
    assert sorted(gemm) == sorted((d["cin"], d["cout"]) for d in onx.values() if d["op"] == "Gemm")


def test_materialize_gives_torch_a_module_and_ort_a_file(tmp_path):
    model = build_model("vgg11", width=0.0625).eval()
    torch_backend = get_backend(_profile())
    art = materialize(torch_backend, model, tmp_path / "x.onnx", (3, 32, 32), 1)
    assert takes_modules(torch_backend) and isinstance(art, torch.nn.Module) and not (tmp_path / "x.onnx").exists()
    assert art is not model and art.input_shape == (3, 32, 32)
    assert set(node_dims(art)) == {n for n, m in model.named_modules() if n and not list(m.children())}
    ort = get_backend(load_profile("host-cpu"))
    path = materialize(ort, model, tmp_path / "x.onnx", (3, 32, 32), 1)
    assert not takes_modules(ort) and path.is_file()


def test_per_layer_times_are_named_by_leaf_module_and_walls_cover_own_time():
    backend = get_backend(_profile())
    model = build_model("resnet20", width=0.25).eval()
    model.input_shape = (3, 32, 32)
    m = backend.measure(model, warmup=1, runs=5, per_layer=True)
    leaves = {n for n, mod in model.named_modules() if n and not list(mod.children())}
    assert {layer.name for layer in m.per_layer} <= leaves and len(m.per_layer) >= 0.9 * len(leaves)
    for layer in m.per_layer:
        assert layer.onnx_nodes == [layer.name] and layer.wall_ms >= layer.median_ms > 0
    assert m.per_layer_e2e_median_ms > 0 and m.runtime["name"] == "torch"


def test_run_times_charge_gaps_to_the_next_leaf_and_add_repeated_calls():
    stamps = [("pre", "a", 1.0), ("post", "a", 3.0), ("pre", "b", 4.0), ("post", "b", 5.0),
              ("pre", "a", 5.5), ("post", "a", 6.0)]
    own, wall, calls = _run_times(stamps, 0.0, lambda s, e: e - s)
    assert own == {"a": 2.5, "b": 1.0} and calls == {"a": 2, "b": 1}
    assert wall == {"a": 3.0 + 1.0, "b": 2.0}  # a: 0->3 and 5->6; b: 3->5 (the gap 3->4 is b's)


def test_latency_model_fits_and_checks_modules_on_a_torch_profile():
    """No ONNX in between: the slots are the model's leaf modules."""
    profile = _profile()
    backend = get_backend(profile)
    torch.manual_seed(0)
    model = build_model("vgg11", width=0.125).eval()
    x = torch.zeros(1, 3, 32, 32)
    groups = prunable_groups(model, x)
    lm = fit_latency_model(model, x, groups, backend, profile, n_variants=6, runs=12)
    convs = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert convs <= set(lm.slots) and lm.dense_ms > 0
    # the calibration covers the small end of the search space, not only random keeps in [0.25, 1]
    low = uniform_keep([g for g in groups if g.prunable], 0.15, 2)
    assert low in lm.meta["calibration"]["keeps"]
    full = {g.name: g.channels for g in groups if g.prunable}
    half = {k: max(2, v // 2) for k, v in full.items()}
    assert lm.predict(half) < lm.predict(full)
    res = check_model(lm, model, x, groups, backend, profile, n_variants=2, runs=12)
    assert len(res["variants"]) == 2 and all(v["measured_ms"] > 0 for v in res["variants"])


def test_latency_check_cli_on_a_torch_profile(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    prof = tmp_path / "t.toml"
    prof.write_text('name = "t"\n[runtime]\nname = "torch"\ndevice = "cpu"\nthreads = 1\n'
                    '[pruning]\nchannel_multiple = 2\n[measure]\nwarmup = 1\nruns = 10\nblocks = 2\n')
    out = tmp_path / "lc.json"
    assert main(["latency-check", "--model", "vgg11", "--width", "0.0625", "--profile", str(prof), "--variants", "2",
                 "--fit-variants", "3", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert len(doc["variants"]) == 2 and doc["median_abs_rel_error"] >= 0


def test_device_choice_and_process_group_backend(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu" and resolve_device("cpu").type == "cpu"
    with pytest.raises(UserError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(UserError, match="not one of"):
        resolve_device("tpu")
    # torchrun with 2 ranks on a machine with 1 GPU: every rank on the CPU with gloo
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert rank_device("auto").type == "cpu" and process_group_backend(rank_device("auto")) == "gloo"
    # one GPU per rank: NCCL on this rank's own GPU; --device cpu: gloo anyway
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert rank_device("auto") == torch.device("cuda", 1) and process_group_backend(rank_device("auto")) == "nccl"
    assert rank_device("cpu").type == "cpu"


def test_shipped_gpu_profiles_time_graph_replay():
    for name in ("cuda-torch", "cuda-torch-b64"):
        p = load_profile(name)
        assert p.runtime.name == "torch" and p.runtime.device == "cuda" and p.runtime.cuda_graphs
    assert load_profile("cuda-torch-b64").input.batch == 64
    assert load_profile("cpu-torch").runtime.device == "cpu"
