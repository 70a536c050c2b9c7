"""`rlprune-edge train` and `inspect`: happy paths, and bad input → exit 2 with one line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlprune_edge.checkpoint import load_checkpoint, save_checkpoint
from rlprune_edge.cli import main
from rlprune_edge.models import build_model

CLI = Path(sys.executable).parent / "rlprune-edge"


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def test_train_then_inspect(tmp_path, capsys, tiny_data, single_thread):
    out = tmp_path / "ckpt" / "r20.pt"
    rc = main(["train", "--model", "resnet20", "--width", "0.25", "--epochs", "1", "--limit", "128",
               "--batch-size", "64", "--out", str(out), "--quiet"])
    assert rc == 0
    assert "test acc" in capsys.readouterr().out
    model, info = load_checkpoint(out)
    assert info.model == "resnet20" and info.meta["epochs"] == 1 and 0.0 <= info.meta["test_acc"] <= 1.0
    assert info.meta["data"] == "fashion-mnist" and info.class_names[0] == "T-shirt/top"
    assert info.meta["torch_threads"] == 1  # the single_thread fixture's setting, recorded for reproducibility
    assert not [p for p in out.parent.iterdir() if p.name != "r20.pt"]  # no temp files left behind

    assert main(["inspect", "--model", str(out), "--layers"]) == 0
    text = capsys.readouterr().out
    assert "resnet20" in text and "MACs/image" in text and "parameters" in text and "layer1.0.conv1" in text


def test_inspect_by_name(capsys):
    assert main(["inspect", "--model", "vgg11", "--width", "0.125"]) == 0
    text = capsys.readouterr().out
    assert "vgg11" in text and "MACs/image" in text


def test_interrupted_train_leaves_previous_checkpoint(tmp_path, capsys, monkeypatch, tiny_data, single_thread):
    out = tmp_path / "keep.pt"
    model = build_model("resnet20", 0.25)
    from rlprune_edge.checkpoint import resolve_model

    _, info = resolve_model("resnet20", width=0.25)
    save_checkpoint(out, model, info)
    before = out.read_bytes()

    import rlprune_edge.train as train_mod

    real = train_mod.train_model

    def interrupted(*args, **kwargs):
        def stop(epoch, stats):
            raise KeyboardInterrupt

        kwargs["on_epoch_end"] = stop
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_model", interrupted)
    rc = main(["train", "--model", "resnet20", "--width", "0.25", "--epochs", "2", "--limit", "64",
               "--out", str(out), "--quiet", "--save-each-epoch"])
    assert rc == 130
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.pt"]


@pytest.mark.parametrize("argv, match", [
    (["train", "--model", "vgg12", "--epochs", "1", "--out", "{tmp}/x.pt"], "unknown model 'vgg12'"),
    (["train", "--model", "vgg11", "--width", "0", "--epochs", "1", "--out", "{tmp}/x.pt"], "width"),
    (["train", "--model", "vgg11", "--width", "-0.5", "--epochs", "1", "--out", "{tmp}/x.pt"], "width"),
    (["train", "--model", "vgg11", "--epochs", "0", "--out", "{tmp}/x.pt"], "epochs"),
    (["train", "--model", "vgg11", "--data", "cifar10:{tmp}/no_such_dir", "--epochs", "1", "--out", "{tmp}/x.pt"],
     "no_such_dir"),
    (["train", "--model", "vgg11", "--data", "fashion-mnist:{tmp}/no_such_dir", "--epochs", "1",
      "--out", "{tmp}/x.pt"], "no_such_dir"),
    (["train", "--model", "vgg11", "--epochs", "1", "--out", "{tmp}/blocker/x.pt"], "cannot write"),
    (["train", "--model", "vgg11", "--epochs", "1", "--out", "{tmp}"], "is a directory"),
    (["inspect", "--model", "nonsense"], "neither an existing checkpoint"),
    (["inspect", "--model", "vgg11", "--width", "0"], "width"),
    (["inspect", "--model", "{tmp}/corrupt.pt"], "corrupt.pt"),
    (["inspect", "--model", "{tmp}/other_arch.pt"], "other_arch.pt"),
])
def test_bad_input_exits_2_with_one_line(argv, match, tmp_path, capsys):
    (tmp_path / "blocker").write_text("a file where a directory is expected")
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage")
    _, info = __import__("rlprune_edge.checkpoint", fromlist=["resolve_model"]).resolve_model("vgg11", width=0.125)
    torch.save({"format": "rlprune-edge-checkpoint", "version": 1, "info": info.to_dict(),
                "state_dict": build_model("resnet20", 0.25).state_dict()}, tmp_path / "other_arch.pt")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert match in err, err


@pytest.mark.skipif(not CLI.exists(), reason="console script not installed in this environment")
def test_console_script_imagefolder_without_train(tmp_path):
    locked = tmp_path / "empty"
    locked.mkdir()
    env = {**os.environ, "RLPRUNE_EDGE_DEBUG": ""}
    proc = subprocess.run([str(CLI), "train", "--model", "vgg11", "--data", f"imagefolder:{locked}", "--epochs", "1",
                           "--out", str(tmp_path / "m.pt")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert str(locked) in proc.stderr and "train/" in proc.stderr
