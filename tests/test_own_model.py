"""Your own model class (issue 48): `--model FILE.py:FACTORY` / `package.module:FACTORY` with
`--model-args`, checkpoints that record the spec and the source's sha256, and reloads that need the
spec again (`--arch`): a checkpoint alone never imports code.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rlprune_edge.checkpoint import load_checkpoint, resolve_model, save_checkpoint
from rlprune_edge.cli import main
from rlprune_edge.errors import UserError
from rlprune_edge.models.user import parse_model_args

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import one_line_error, tiny_profile  # noqa: E402

EDGENET = textwrap.dedent('''
    import torch
    from torch import nn


    class Block(nn.Module):
        """Depthwise 3x3 + pointwise 1x1 with a residual add."""

        def __init__(self, c):
            super().__init__()
            self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.pw = nn.Conv2d(c, c, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)
            self.act = nn.Hardswish()

        def forward(self, x):
            return x + self.bn2(self.pw(self.act(self.bn1(self.dw(x)))))


    class EdgeNet(nn.Module):
        def __init__(self, num_classes=10, width=16):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                      nn.Hardswish())
            self.blocks = nn.Sequential(Block(width), Block(width))
            self.expand = nn.Sequential(nn.Conv2d(width, 2 * width, 1, bias=False), nn.BatchNorm2d(2 * width),
                                        nn.Hardswish())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(2 * width, num_classes)

        def forward(self, x):
            x = self.expand(self.blocks(self.stem(x)))
            return self.head(torch.flatten(self.pool(x), 1))


    def make_edgenet(width=8, num_classes=10):
        return EdgeNet(num_classes=num_classes, width=width)


    def boom(width=8):
        raise ValueError("width must be even")


    def not_a_model():
        return 42


    class FixedSize(nn.Module):
        """No adaptive pooling: runs on 64x64 only."""

        input_shape = (3, 64, 64)

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4 * 64 * 64, 10)

        def forward(self, x):
            return self.head(torch.flatten(self.conv(x), 1))


    class Segmenter(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 10, 3, padding=1)

        def forward(self, x):
            return self.conv(x)
''')


@pytest.fixture
def netfile(tmp_path) -> Path:
    path = tmp_path / "edgenet.py"
    path.write_text(EDGENET)
    return path


def _saved(tmp_path: Path, spec: str, args: str = "width=8", name: str = "own.pt") -> Path:
    torch.manual_seed(0)
    model, info = resolve_model(spec, model_args=args)
    return save_checkpoint(tmp_path / name, model, info)


def test_model_args_are_literals_never_code():
    assert parse_model_args("width=8,scale=0.5,name='edge',act=hswish,k=(3, 5),bn=True") == {
        "width": 8, "scale": 0.5, "name": "edge", "act": "hswish", "k": (3, 5), "bn": True}
    assert parse_model_args(None) == {} and parse_model_args("") == {}
    for bad in ("width=", "8", "width=__import__('os').system('true')", "**x", "width=8,,"):
        with pytest.raises(UserError):
            parse_model_args(bad)


def test_train_then_reload_needs_arch(tmp_path, netfile, capsys):
    """`train --model FILE.py:FACTORY --model-args`; the checkpoint reloads only with `--arch`."""
    ckpt = tmp_path / "edge.pt"
    assert main(["train", "--model", f"{netfile}:EdgeNet", "--model-args", "width=8", "--limit", "64",
                 "--epochs", "1", "--out", str(ckpt), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["inspect", "--model", str(ckpt)]) == 2
    err = one_line_error(capsys)
    assert f"{netfile}:EdgeNet" in err and "--arch" in err and "never" in err
    assert main(["inspect", "--model", str(ckpt), "--arch", f"{netfile}:EdgeNet", "--layers"]) == 0
    out = capsys.readouterr().out
    assert "EdgeNet" in out and "classes: 10" in out
    model, info = load_checkpoint(ckpt, arch=f"{netfile}:EdgeNet")
    assert info.source["args"] == {"width": 8} and info.source["kind"] == "file"
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_pruned_checkpoint_reloads_exactly(tmp_path, netfile):
    """A pruned copy of a factory-built model is recorded by layer shapes and rebuilt exactly."""
    from rlprune_edge.graph import prunable_groups
    from rlprune_edge.pruning import prune

    torch.manual_seed(0)
    model, info = resolve_model(f"{netfile}:make_edgenet", model_args="width=8")
    x = torch.randn(2, 3, 32, 32)
    keep = {g.name: max(1, g.channels // 2) for g in prunable_groups(model, x[:1]) if g.prunable}
    pruned = prune(model, x[:1], keep, importance="l1").eval()
    path = save_checkpoint(tmp_path / "pruned.pt", pruned, info)
    back, got = load_checkpoint(path, arch=f"{netfile}:make_edgenet")
    assert got.layer_shapes and torch.allclose(back(x), pruned(x))


@pytest.mark.slow
def test_import_compress_export_reload(tmp_path, netfile, monkeypatch, capsys):
    """Weights trained by the user's own script → import → compress → export → reload with --arch."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    prof = tmp_path / "tiny.toml"
    prof.write_text(tiny_profile("tiny-cpu"))
    torch.manual_seed(0)
    weights = tmp_path / "weights.pth"
    model, _ = resolve_model(f"{netfile}:EdgeNet", model_args="width=8")
    torch.save(model.state_dict(), weights)
    spec = f"{netfile}:EdgeNet"
    ckpt = tmp_path / "imported.pt"
    assert main(["import", str(weights), "--model", spec, "--model-args", "width=8", "--limit", "64",
                 "--out", str(ckpt)]) == 0
    out = tmp_path / "run"
    assert main(["compress", "--model", str(ckpt), "--arch", spec, "--latency-variants", "2", "--candidates", "2",
                 "--kd-images", "64", "--kd-epochs", "1", "--pareto-test-size", "64", "--test-images", "64",
                 "--quiet", "--probe-batches", "1", "--screen-batches", "1", "--final-batches", "1",
                 "--probe-top", "0", "--depth-plans", "0", "--ramps", "", "--select-size", "32",
                 "--confirm-size", "32", "--per-round", "2", "--no-bundle", "--profile", str(prof),
                 "--sparsity", "0.4", "--reward", "accuracy", "--device", "cpu", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["export", str(out / "model.pt"), "--profile", str(prof), "--out", str(tmp_path / "bundle")]) == 2
    assert "--arch" in one_line_error(capsys)
    assert main(["export", str(out / "model.pt"), "--arch", spec, "--profile", str(prof), "--out",
                 str(tmp_path / "bundle"), "--no-measure", "--verify-images", "32", "--calib-images", "32",
                 "--test-limit", "64"]) == 0
    assert (tmp_path / "bundle" / "model.onnx").is_file()
    dense, _ = load_checkpoint(ckpt, arch=spec)
    small, info = load_checkpoint(out / "model.pt", arch=spec)
    assert info.layer_shapes and info.source["spec"] == f"{netfile.resolve()}:EdgeNet"
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in dense.parameters())
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "bundle" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(1, *info.input_shape)  # the bundle's ONNX has the profile's batch, 1
    with torch.no_grad():
        want = small(x).numpy()
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))


def test_package_module_spec(tmp_path, monkeypatch, capsys):
    """`package.module:FACTORY` from sys.path; its file's sha256 is recorded and checked."""
    pkg = tmp_path / "own_pkg_a"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(EDGENET)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["inspect", "--model", "own_pkg_a.nets:make_edgenet", "--model-args", "width=4,num_classes=5"]) == 0
    out = capsys.readouterr().out  # no data: the class count is the model's own
    assert "own_pkg_a.nets:make_edgenet" in out and "classes: 5" in out
    path = _saved(tmp_path, "own_pkg_a.nets:make_edgenet", "width=4")
    import rlprune_edge

    model, info = rlprune_edge.load_checkpoint(path, arch="own_pkg_a.nets:make_edgenet")
    assert info.source["kind"] == "module" and info.source["file"] == str((pkg / "nets.py").resolve())
    with pytest.raises(UserError, match="records own_pkg_a.nets:make_edgenet"):
        load_checkpoint(path, arch=f"{pkg / 'nets.py'}:make_edgenet")


@pytest.mark.hostile("checkpoint of your own model class, loaded without --arch (its recorded source would run code)",
                     "exit 2 before any import: names the recorded spec and says to pass it with --arch; the source "
                     "is never imported")
def test_checkpoint_alone_never_imports(tmp_path, netfile, capsys):
    marker = tmp_path / "imported.marker"
    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').write('ran')\n" + EDGENET)
    good = _saved(tmp_path, f"{netfile}:EdgeNet")
    payload = torch.load(good, weights_only=True)
    from rlprune_edge.fsutil import sha256_file
    payload["info"]["source"].update(file=str(evil), spec=f"{evil}:EdgeNet", sha256=sha256_file(evil))
    crafted = tmp_path / "crafted.pt"
    torch.save(payload, crafted)
    for argv in (["inspect", "--model", str(crafted)],
                 ["export", str(crafted), "--profile", "host-cpu", "--out", str(tmp_path / "b")],
                 ["latency-check", "--model", str(crafted), "--profile", "host-cpu", "--json", str(tmp_path / "l.json")]):
        assert main(argv) == 2
        err = one_line_error(capsys)
        assert f"--arch {evil}:EdgeNet" in err, err
    with pytest.raises(UserError, match="never makes rlprune-edge import code"):
        load_checkpoint(crafted)
    assert not marker.exists()


@pytest.mark.hostile("checkpoint of your own model class whose source file changed, or another --arch",
                     "exit 2 before the changed file is imported: names the file and both sha256 prefixes; "
                     "another spec is refused naming the recorded one")
def test_changed_source_or_other_spec_refused(tmp_path, netfile, capsys):
    ckpt = _saved(tmp_path, f"{netfile}:EdgeNet")
    assert main(["inspect", "--model", str(ckpt), "--arch", f"{netfile}:make_edgenet"]) == 2
    assert f"it records {netfile}:EdgeNet" in one_line_error(capsys)
    netfile.write_text(EDGENET + "\nraise SystemExit('the changed file ran')\n")
    assert main(["inspect", "--model", str(ckpt), "--arch", f"{netfile}:EdgeNet"]) == 2
    err = one_line_error(capsys)
    assert "has changed since the checkpoint was saved" in err and str(netfile) in err


@pytest.mark.hostile("--model FILE.py:FACTORY that cannot be built: missing file or attribute, no ':FACTORY', "
                     "bad --model-args, a factory that raises or returns no nn.Module",
                     "exit 2, one sentence: the file/attribute, the exception type and message, what the factory "
                     "returned, or the k=v literal syntax")
@pytest.mark.parametrize("spec, args, expect", [
    ("missing.py:EdgeNet", None, "does not exist"),
    ("{f}:Nope", None, "has no attribute 'Nope'"),
    ("{f}", None, "without its factory"),
    ("{f}:EdgeNet", "width=8,,", "not a list of k=v pairs"),
    ("{f}:EdgeNet", "width=open('x')", "not a Python literal"),
    ("{f}:boom", None, "raised ValueError: width must be even"),
    ("{f}:not_a_model", None, "returned an int, not a torch.nn.Module"),
    ("{f}:EdgeNet", "depth=3", "raised TypeError"),
    ("no_such_pkg_xyz.nets:make", None, "was not found"),
])
def test_unbuildable_model_refused(tmp_path, netfile, capsys, spec, args, expect):
    argv = ["inspect", "--model", spec.format(f=netfile)] + (["--model-args", args] if args else [])
    assert main(argv) == 2
    assert expect in one_line_error(capsys)


@pytest.mark.hostile("--model FILE.py:FACTORY that does not fit the data: another input size, not (N, classes) "
                     "logits, another class count",
                     "exit 2 before training, one sentence: the input size and the error, the output's shape "
                     "('for now' only classifiers), or both class counts and --model-args num_classes=N")
@pytest.mark.parametrize("factory, args, expect", [
    ("FixedSize", None, "does not run on 32x32 inputs"),
    ("Segmenter", None, "for now a model must return one row of class logits per image"),
    ("EdgeNet", "num_classes=5,width=4", "predicts 5 classes but the data has 10"),
])
def test_model_not_fitting_data_refused(tmp_path, netfile, capsys, factory, args, expect):
    argv = ["train", "--model", f"{netfile}:{factory}", "--limit", "64", "--epochs", "1",
            "--out", str(tmp_path / "x.pt"), "--quiet"] + (["--model-args", args] if args else [])
    assert main(argv) == 2
    assert expect in one_line_error(capsys)
    assert not (tmp_path / "x.pt").exists()


def test_bench_takes_arch_only_for_module_runtimes(capsys):
    """`bench --arch/--model-args` rebuild your own class for a torch profile; an ONNX profile measures the file."""
    assert main(["bench", "model.onnx", "--profile", "host-cpu", "--arch", "mynet.py:EdgeNet"]) == 2
    assert "apply to module runtimes" in one_line_error(capsys)
