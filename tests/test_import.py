"""`rlprune-edge import`: weights trained by a user's own script become a checkpoint `compress` takes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from rlprune_edge.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import needs_fashion_mnist  # noqa: E402
from helpers import randomize_bn, tiny_profile  # noqa: E402

pytestmark = needs_fashion_mnist
LIMIT = ["--limit", "256"]  # 256 test images, as the tiny_data fixture


def _user_vgg(seed: int = 0):
    """What a user's own training script would hold: a zoo VGG-11 at width 0.125 with non-trivial BN."""
    from rlprune_edge.models import build_model

    torch.manual_seed(seed)
    return randomize_bn(build_model("vgg11", 0.125, 10), seed).eval()


def _logits(model, n: int = 4) -> torch.Tensor:
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(x)


def test_lightning_style_weights_import_to_the_same_model(tmp_path, capsys, tiny_data, single_thread):
    """{'state_dict': {'model.<key>': ...}} → the same outputs, the test accuracy of the original, data recorded."""
    from rlprune_edge.checkpoint import load_checkpoint
    from rlprune_edge.train import evaluate

    user = _user_vgg()
    weights = tmp_path / "epoch=3.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in user.state_dict().items()}, "epoch": 3,
                "hyper_parameters": {"lr": 0.1}}, weights)
    out = tmp_path / "imported.pt"
    assert main(["import", str(weights), "--model", "vgg11", "--width", "0.125", "--out", str(out), *LIMIT]) == 0
    printed = capsys.readouterr().out
    assert "state_dict under 'state_dict'" in printed and "key prefix 'model.' removed" in printed
    model, info = load_checkpoint(out)
    assert torch.equal(_logits(model), _logits(user))
    assert info.meta["test_acc"] == pytest.approx(evaluate(user, tiny_data.loader("test", 64)))
    assert info.meta["data"] == "fashion-mnist" and info.meta["stripped_prefix"] == "model."
    assert (info.model, info.width, info.num_classes) == ("vgg11", 0.125, 10)
    assert tuple(info.mean) == tuple(tiny_data.mean) and info.class_names == tiny_data.class_names
    capsys.readouterr()
    assert main(["inspect", "--model", str(out)]) == 0
    assert "imported:     from epoch=3.ckpt" in capsys.readouterr().out


def test_imported_checkpoint_compresses(tmp_path, monkeypatch, single_thread):
    """The user's journey: train elsewhere → import → compress (a tiny uniform run) → a smaller model."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    weights = tmp_path / "weights.pth"
    torch.save({f"module.{k}": v for k, v in _user_vgg().state_dict().items()}, weights)
    ckpt = tmp_path / "vgg11.pt"
    assert main(["import", str(weights), "--model", "vgg11", "--width", "0.125", "--out", str(ckpt), *LIMIT]) == 0
    prof = tmp_path / "tiny.toml"
    prof.write_text(tiny_profile("tiny-cpu"))
    out = tmp_path / "run"
    assert main(["compress", "--model", str(ckpt), "--profile", str(prof), "--sparsity", "0.3", "--search", "uniform",
                 "--latency-variants", "2", "--val-size", "64", "--rounds", "1", "--kd-images", "128",
                 "--kd-epochs", "1", "--pareto-test-size", "64", "--test-images", "200", "--no-bundle", "--quiet",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["final"]["params"] < report["base"]["params"]


def test_torchvision_weights_with_ddp_prefix_and_auxiliary_heads(tmp_path, capsys, single_thread):
    """torchvision googlenet trained with aux heads under DDP: the heads are dropped, the network kept exactly."""
    import torchvision

    torch.manual_seed(0)
    user = torchvision.models.googlenet(weights=None, num_classes=10, aux_logits=True, init_weights=True).eval()
    weights = tmp_path / "googlenet.pt"
    torch.save({f"module.{k}": v for k, v in user.state_dict().items()}, weights)
    out = tmp_path / "googlenet_ckpt.pt"
    assert main(["import", str(weights), "--model", "torchvision:googlenet", "--out", str(out), "--limit", "16"]) == 0
    printed = capsys.readouterr().out
    assert "training-only auxiliary heads" in printed and "key prefix 'module.' removed" in printed
    from rlprune_edge.checkpoint import load_checkpoint

    model, _ = load_checkpoint(out)
    assert torch.allclose(_logits(model, 2), _logits(user, 2), atol=1e-5)


def test_safetensors_weights_import_to_the_same_model(tmp_path, capsys, single_thread):
    """A .safetensors file (read by the safetensors package, never unpickled), also under another suffix."""
    from safetensors.torch import save_file

    from rlprune_edge.checkpoint import load_checkpoint

    user = _user_vgg(2)
    for name in ("model.safetensors", "weights.bin"):  # the suffix, or the header when the suffix says nothing
        weights = tmp_path / name
        save_file({k: v.contiguous() for k, v in user.state_dict().items()}, str(weights))
        out = tmp_path / f"{name}.pt"
        assert main(["import", str(weights), "--model", "vgg11", "--width", "0.125", "--out", str(out), *LIMIT]) == 0
        model, _ = load_checkpoint(out)
        assert torch.equal(_logits(model), _logits(user))


def test_safetensors_without_the_package_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    from safetensors.torch import save_file

    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in _user_vgg().state_dict().items()}, str(weights))
    monkeypatch.setitem(sys.modules, "safetensors", None)  # as on an install without the extra
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    assert main(["import", str(weights), "--model", "vgg11", "--width", "0.125", "--out", str(tmp_path / "o.pt")]) == 2
    assert "pip install 'rlprune-edge[safetensors]'" in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()


def test_random_weights_warn_that_accuracy_is_at_chance(tmp_path, capsys, single_thread):
    from rlprune_edge.models import build_model

    torch.manual_seed(0)
    weights = tmp_path / "untrained.pt"
    torch.save(build_model("vgg11", 0.125, 10).state_dict(), weights)
    assert main(["import", str(weights), "--model", "vgg11", "--width", "0.125", "--out", str(tmp_path / "o.pt"),
                 *LIMIT]) == 0
    err = capsys.readouterr().err
    assert "close to chance for 10 classes" in err and "normalisation" in err


def test_library_call_without_evaluation(tmp_path, tiny_data):
    from rlprune_edge.weights_import import import_weights

    user = _user_vgg(1)
    weights = tmp_path / "w.pt"
    torch.save({"model_state_dict": user.state_dict(), "optimizer": {"lr": 0.1}}, weights)
    result = import_weights(weights, "vgg11", 0.125, tiny_data, evaluate_split=None)
    assert result.test_acc is None and result.wrapper_key == "model_state_dict" and result.stripped_prefix == ""
    assert torch.equal(_logits(result.model), _logits(user))


def _write_pickled_model(path: Path) -> None:
    torch.save(_user_vgg(), path)


def _write_garbage(path: Path) -> None:
    path.write_bytes(b"PK\x03\x04 this is not a zip archive")


def _write_no_tensors(path: Path) -> None:
    torch.save({"epoch": 3, "best_acc": 0.9}, path)


def _write_nan(path: Path) -> None:
    state = _user_vgg().state_dict()
    state["features.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, path)


def _write_imagenet_head(path: Path) -> None:
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)


def _write_bad_safetensors(path: Path) -> None:
    path.write_bytes((64).to_bytes(8, "little") + b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}')


def _write_checkpoint(path: Path) -> None:
    from rlprune_edge.checkpoint import resolve_model, save_checkpoint

    model, info = resolve_model("vgg11", width=0.125)
    save_checkpoint(path, model, info)


@pytest.mark.hostile("`import` of a bad weights file: a pickled whole model, not a torch file, a dict without tensors, "
                     "NaN weights, a truncated safetensors file, an ImageNet head for 10-class data, weights of another width, a file that is "
                     "already a checkpoint, --model given a file",
                     "exit 2 before anything is written, one sentence: never unpickles objects (says to save "
                     "model.state_dict()), names the class counts, the first tensor of another shape and the zoo "
                     "architecture and width that fit; an existing --out file is untouched")
@pytest.mark.parametrize(("writer", "argv", "match"), [
    (_write_pickled_model, ["--model", "vgg11", "--width", "0.125"], "never loaded for safety"),
    (_write_garbage, ["--model", "vgg11", "--width", "0.125"], "is not a torch weights file"),
    (_write_no_tensors, ["--model", "vgg11", "--width", "0.125"], "holds no state_dict"),
    (_write_nan, ["--model", "vgg11", "--width", "0.125"], "NaN or infinite values"),
    (_write_bad_safetensors, ["--model", "vgg11", "--width", "0.125"], "not a readable safetensors file"),
    (_write_imagenet_head, ["--model", "torchvision:resnet18"], "predict 1000 classes but the data has 10"),
    (_write_checkpoint, ["--model", "vgg11"], "already an rlprune-edge checkpoint"),
    (lambda p: torch.save(_user_vgg().state_dict(), p), ["--model", "vgg11", "--width", "0.25"],
     "They fit vgg11 at width 0.125: pass --model vgg11 --width 0.125"),
    (lambda p: torch.save(_user_vgg().state_dict(), p), ["--model", "resnet20"], "They fit vgg11 at width 0.125"),
    (lambda p: torch.save(_user_vgg().state_dict(), p), ["--model", "WEIGHTS"], "takes an architecture name"),
])
def test_bad_weights_exit_2_and_keep_the_old_output(tmp_path, capsys, writer, argv, match, single_thread):
    weights = tmp_path / "weights.pt"
    writer(weights)
    from rlprune_edge.checkpoint import resolve_model, save_checkpoint

    out = save_checkpoint(tmp_path / "model.pt", *resolve_model("vgg11", width=0.0625))  # an earlier import of ours
    before = out.read_bytes()
    argv = [str(weights) if a == "WEIGHTS" else a for a in argv]
    assert main(["import", str(weights), *argv, "--out", str(out), *LIMIT]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and err.count("\n") == 1
    assert out.read_bytes() == before
