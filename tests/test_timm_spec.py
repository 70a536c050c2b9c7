"""`--model timm:NAME` (issue 48): timm's CNN families through import → compress → export → reload.

Each family: weights saved by "the user's own training" (a timm model's state_dict) are imported
onto ``timm:NAME``, compressed with a tiny budget, exported, and the reloaded pruned checkpoint is
compared with ONNX Runtime on the bundle's ONNX (rel. ≤ 1e-4). Refusals are one sentence, exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlprune_edge.checkpoint import load_checkpoint, resolve_model
from rlprune_edge.cli import main
from rlprune_edge.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import one_line_error, tiny_profile  # noqa: E402

timm = pytest.importorskip("timm")

# eight families beside the zoo (inverted residuals with SE, plain residuals, RegNet groups, LCNet,
# MnasNet, EfficientNet-Lite, TinyNet, GhostNet); the smallest variant of each keeps the test fast
FAMILIES = ("mobilenetv3_small_050", "efficientnet_lite0", "regnetx_002", "lcnet_050", "mnasnet_small",
            "tinynet_e", "resnet10t", "ghostnet_050")
TINY_COMPRESS = ["--latency-variants", "2", "--kd-images", "64", "--kd-epochs", "1", "--kd-lr", "0.001", "--pareto-test-size", "64",
                 "--test-images", "64", "--quiet", "--probe-batches", "1", "--screen-batches", "1",
                 "--final-batches", "1", "--probe-top", "0", "--depth-plans", "0", "--ramps", "",
                 "--select-size", "32", "--confirm-size", "32", "--per-round", "2", "--candidates", "1",
                 "--sparsity", "0.4", "--reward", "accuracy", "--device", "cpu"]


def _as_if_trained(model: torch.nn.Module) -> torch.nn.Module:
    """Batch-norm statistics of real activations, as a trained model has (timm's random init leaves
    running_var at 1, so the logits of its eval mode reach ~1e4 and float32 rounding with them)."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # a cumulative average over the passes below
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(16, 3, 32, 32))
    return model.eval()


def _ort_outputs(onnx_path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_timm_family_import_compress_export_reload(family, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    prof = tmp_path / "tiny.toml"
    prof.write_text(tiny_profile("tiny-cpu"))
    torch.manual_seed(0)
    spec = f"timm:{family}"
    weights = tmp_path / "weights.pth"
    torch.save(_as_if_trained(timm.create_model(family, num_classes=10)).state_dict(), weights)
    ckpt = tmp_path / "imported.pt"
    assert main(["import", str(weights), "--model", spec, "--limit", "64", "--out", str(ckpt)]) == 0
    out = tmp_path / "run"
    assert main(["compress", "--model", str(ckpt), *TINY_COMPRESS, "--no-bundle", "--profile", str(prof),
                 "--out", str(out)]) == 0
    assert main(["export", str(out / "model.pt"), "--profile", str(prof), "--out", str(tmp_path / "bundle"),
                 "--no-measure", "--verify-images", "32", "--calib-images", "32", "--test-limit", "64"]) == 0
    capsys.readouterr()
    dense, _ = load_checkpoint(ckpt)
    small, info = load_checkpoint(out / "model.pt")  # a timm name rebuilds without --arch: no user code
    assert info.model == spec and info.source is None and info.layer_shapes
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in dense.parameters())
    x = torch.randn(1, *info.input_shape)  # the bundle's ONNX has the profile's batch, 1
    with torch.no_grad():
        want = small(x).numpy()
    got = _ort_outputs(tmp_path / "bundle" / "model.onnx", x)
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))


def test_timm_spec_builds_by_name_with_the_data_shape():
    from rlprune_edge.data import load_data

    data = load_data("fashion-mnist", limit=64)
    model, info = resolve_model("timm:lcnet_050", data=data)
    assert info.model == "timm:lcnet_050" and info.source is None and tuple(info.input_shape) == (3, 32, 32)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.hostile("`--model timm:NAME` with a name timm does not have", "exit 2: close names listed")
def test_unknown_timm_name_is_one_sentence(capsys):
    assert main(["inspect", "--model", "timm:mobilenetv3_smal"]) == 2
    err = one_line_error(capsys)
    assert "unknown timm model 'mobilenetv3_smal'" in err and "mobilenetv3_small_100" in err


def test_timm_refuses_width_and_model_args(capsys):
    with pytest.raises(UserError, match="width multiplier applies only"):
        resolve_model("timm:lcnet_050", width=0.5)
    with pytest.raises(UserError, match="--model-args applies only"):
        resolve_model("timm:lcnet_050", model_args="num_classes=10")


@pytest.mark.hostile("`--model timm:NAME` without timm installed", "exit 2: the extra to install")
def test_timm_missing_is_one_sentence(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    assert main(["inspect", "--model", "timm:lcnet_050"]) == 2
    assert "pip install 'rlprune-edge[timm]'" in one_line_error(capsys)
