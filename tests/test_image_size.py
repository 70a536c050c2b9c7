"""`imagefolder@SIZE:DIR`: models for inputs other than 32x32, from training or import through compress."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlprune_edge.cli import main
from rlprune_edge.data import load_data, parse_spec
from rlprune_edge.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import tiny_profile  # noqa: E402

SIZE = 48


def _image_folder(root: Path, per_class: int = 8) -> Path:
    """Two classes told apart by brightness, images of mixed sizes (resized on load)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", per_class // 2)):
        for label, cls in enumerate(("dark", "light")):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                base = 60 + 120 * label
                img = np.clip(rng.normal(base, 30, (40 + 8 * (i % 3), 56, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


def test_spec_sizes_parse_and_bad_ones_are_refused():
    assert parse_spec("imagefolder@128:/d")[2] == 128
    assert parse_spec("imagefolder:/d")[2] == 32 and parse_spec("fashion-mnist")[2] == 32
    for bad, match in (("imagefolder@0:/d", "integer in 8..1024"), ("imagefolder@big:/d", "integer in 8..1024"),
                       ("imagefolder@4096:/d", "integer in 8..1024"), ("cifar10@64:/d", "imagefolder only")):
        with pytest.raises(UserError, match=match):
            parse_spec(bad)


def test_imagefolder_at_a_size_loads_at_that_size_and_augments(tmp_path):
    data = load_data(f"imagefolder@{SIZE}:{_image_folder(tmp_path)}", val_fraction=0.25)
    assert data.input_shape == (3, SIZE, SIZE) and data.train.images.shape[1:] == (3, SIZE, SIZE)
    x, _ = next(iter(data.loader("train", 4, shuffle=True, augment=True)))
    assert x.shape == (4, 3, SIZE, SIZE)


def test_a_model_that_cannot_take_the_size_is_refused_with_what_fits(tmp_path, capsys):
    """VGG's five 2x2 pools need at least 32 pixels: 16x16 images are refused before training."""
    folder = _image_folder(tmp_path / "imgs")
    assert main(["train", "--model", "vgg11", "--width", "0.125", "--data", f"imagefolder@16:{folder}",
                 "--epochs", "1", "--out", str(tmp_path / "m.pt"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "does not run on 16x16 inputs" in err and "imagefolder@32:DIR" in err
    assert not (tmp_path / "m.pt").exists()


def test_train_import_compress_at_48_pixels(tmp_path, monkeypatch, capsys, single_thread):
    """A torchvision model at 48x48: trained by the tool, re-imported from its bare weights, then compressed."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    spec = f"imagefolder@{SIZE}:{_image_folder(tmp_path / 'imgs', per_class=60)}"
    trained = tmp_path / "trained.pt"
    assert main(["train", "--model", "torchvision:mobilenet_v3_small", "--data", spec, "--epochs", "1",
                 "--batch-size", "8", "--out", str(trained), "--quiet"]) == 0
    from rlprune_edge.checkpoint import load_checkpoint

    model, info = load_checkpoint(trained)
    assert tuple(info.input_shape) == (3, SIZE, SIZE)
    weights = tmp_path / "weights.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, weights)
    imported = tmp_path / "imported.pt"
    assert main(["import", str(weights), "--model", "torchvision:mobilenet_v3_small", "--data", spec,
                 "--out", str(imported)]) == 0
    again, again_info = load_checkpoint(imported)
    assert tuple(again_info.input_shape) == (3, SIZE, SIZE)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(again(x), model(x), atol=1e-5)
    prof = tmp_path / "tiny.toml"
    prof.write_text(tiny_profile("tiny-cpu"))
    out = tmp_path / "run"
    assert main(["compress", "--model", str(imported), "--profile", str(prof), "--sparsity", "0.3",
                 "--search", "uniform", "--latency-variants", "2", "--val-size", "10", "--rounds", "1",
                 "--kd-images", "16", "--kd-epochs", "1", "--pareto-test-size", "16", "--test-images", "16",
                 "--no-bundle", "--quiet", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["final"]["params"] < report["base"]["params"]
    final, final_info = load_checkpoint(out / "model.pt")
    assert tuple(final_info.input_shape) == (3, SIZE, SIZE)
    import onnx

    dims = [d.dim_value for d in onnx.load(str(out / "model.onnx")).graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, SIZE, SIZE]
