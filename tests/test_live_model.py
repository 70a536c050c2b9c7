"""`pipeline.compress` with a model object (issue 48): a notebook user compresses the module they hold;
its checkpoints reload with ``arch=`` a new dense model of the same architecture."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from rlprune_edge.checkpoint import load_checkpoint
from rlprune_edge.errors import UserError
from rlprune_edge.pipeline import CompressConfig, compress

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data.edgenet import EdgeNet  # noqa: E402
from helpers import tiny_profile  # noqa: E402

TINY = dict(latency_variants=2, kd_images=64, kd_epochs=1, pareto_test_size=64, test_images=64, quiet=True,
            probe_batches=1, screen_batches=1, final_batches=1, probe_top=0, depth_plans=0, ramps="",
            select_size=32, confirm_size=32, per_round=2, candidates=1, no_bundle=True, sparsity=0.4,
            reward="accuracy", device="cpu")


@pytest.mark.slow
def test_compress_a_model_object_and_reload_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    prof = tmp_path / "tiny.toml"
    prof.write_text(tiny_profile("tiny-cpu"))
    torch.manual_seed(0)
    net = EdgeNet(width=8)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = compress(CompressConfig.from_options(model=net, profile=str(prof), out=str(tmp_path / "run"), **TINY))
    assert result.report["model"].endswith("edgenet.EdgeNet") and result.report["model"].startswith("python:")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the caller's model untouched
    with pytest.raises(UserError, match=r"arch=<a new dense EdgeNet"):
        load_checkpoint(tmp_path / "run" / "model.pt")
    with pytest.raises(UserError, match="layers differ"):
        load_checkpoint(tmp_path / "run" / "model.pt", arch=EdgeNet(width=16))
    small, info = load_checkpoint(tmp_path / "run" / "model.pt", arch=EdgeNet(width=8))
    assert info.layer_shapes and info.source["kind"] == "object"
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in net.parameters())
    assert small(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_a_model_object_that_is_not_a_classifier_is_one_sentence(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))  # returns feature maps, not logits
    with pytest.raises(UserError, match="one row of class logits"):
        compress(CompressConfig(model=net, out=str(tmp_path / "run"), quiet=True))
    with pytest.raises(UserError, match="does not apply to a model object"):
        compress(CompressConfig(model=EdgeNet(width=4), model_args="width=4", out=str(tmp_path / "run2")))
