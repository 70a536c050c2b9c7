"""`rlprune-edge export` on the command line: success, clear errors (exit 2), atomic bundles."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlprune_edge.bundle import check_bundle
from rlprune_edge.checkpoint import ModelInfo, save_checkpoint
from rlprune_edge.cli import main
from rlprune_edge.data import FASHION_MNIST_CLASSES
from rlprune_edge.errors import UserError
from rlprune_edge.models import build_model

REPO = Path(__file__).resolve().parent.parent
FAST = ["--no-measure", "--verify-images", "100", "--test-limit", "100"]


def _checkpoint(path: Path, width: float = 0.125, num_classes: int = 10) -> Path:
    torch.manual_seed(0)
    model = build_model("vgg11", width, num_classes)
    info = ModelInfo("vgg11", width, num_classes, (3, 32, 32), (0.219,) * 3, (0.3318,) * 3,
                     list(FASHION_MNIST_CLASSES)[:num_classes], meta={"data": "fashion-mnist"})
    save_checkpoint(path, model, info)
    return path


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "vgg11.pt")


@pytest.fixture(scope="module")
def bundle(ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "bundle"
    assert main(["export", str(ckpt), "--profile", "host-cpu", "--out", str(out), *FAST]) == 0
    return out


def test_export_cli_writes_a_verified_bundle(bundle, capsys):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["profile"] == "host-cpu" and manifest["precision"] == "fp32"
    assert manifest["verification"]["passed"] and manifest["accuracy"]["images"] == 100
    assert manifest["class_names"] == list(FASHION_MNIST_CLASSES)
    assert check_bundle(bundle) == []
    assert oct(bundle.stat().st_mode & 0o777) == "0o755"
    assert _leftovers(bundle.parent) == []


def test_corrupt_checkpoint_exit_2_and_no_bundle(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(os.urandom(2048))
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "rlprune_edge", "export", str(bad), "--profile", "host-cpu",
                          "--out", str(out)], capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 2
    assert "corrupt" in res.stderr and "broken.pt" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists() and _leftovers(tmp_path) == []


def test_mismatched_checkpoint_exit_2(tmp_path, capsys):
    path = _checkpoint(tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["info"]["width"] = 0.25  # weights no longer fit the recorded architecture
    torch.save(payload, path)
    out = tmp_path / "out"
    assert main(["export", str(path), "--profile", "host-cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not match" in err and "m.pt" in err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_checkpoint_for_other_data_exit_2(tmp_path, capsys):
    path = _checkpoint(tmp_path / "five.pt", num_classes=5)
    out = tmp_path / "out"
    assert main(["export", str(path), "--profile", "host-cpu", "--data", "fashion-mnist", "--out", str(out)]) == 2
    assert "5 outputs" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--profile", "no-such-board"], "unknown profile"),
        (["--profile", "host-cpu", "--precision", "fp16"], "fp16 needs a TensorRT profile"),
        (["--profile", "host-cpu", "--opset", "13"], "--opset must be >= 17"),
    ],
)
def test_bad_arguments_exit_2(ckpt, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert main(["export", str(ckpt), *extra, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_existing_bundle_survives_a_failed_export(ckpt, bundle, monkeypatch, capsys):
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}

    def fail(*_args, **_kwargs):
        raise UserError("simulated failure after the ONNX files were written")

    monkeypatch.setattr("rlprune_edge.export.onnx_accuracy", fail)
    assert main(["export", str(ckpt), "--profile", "host-cpu", "--out", str(bundle), *FAST]) == 2
    assert "simulated failure" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before
    assert _leftovers(bundle.parent) == []


def test_rerun_replaces_a_previous_bundle(ckpt, bundle, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["stale.onnx"] = {"sha256": "0" * 64, "bytes": 3}  # a file an older export wrote
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "stale.onnx").write_bytes(b"old")
    assert main(["export", str(ckpt), "--profile", "host-cpu", "--out", str(out), *FAST, "--json"]) == 0
    assert not (out / "stale.onnx").exists() and check_bundle(out) == []
    assert _leftovers(tmp_path) == []


def test_help_lists_the_options():
    res = subprocess.run([sys.executable, "-m", "rlprune_edge", "export", "--help"], capture_output=True, text=True,
                         timeout=120, check=False, cwd=REPO)
    assert res.returncode == 0
    for flag in ("--profile", "--precision", "--dynamic-batch", "--data", "--out"):
        assert flag in res.stdout
