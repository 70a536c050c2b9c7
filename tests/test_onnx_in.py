"""An ONNX classifier as the model (issue 48, "ONNX in"): `--model model.onnx` and `import model.onnx`,
converted by onnx2torch, pruned, distilled and exported like any other model; checkpoints of it
reload only with `--arch model.onnx` (the same file, by sha256).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rlprune_edge.checkpoint import load_checkpoint, resolve_model, save_checkpoint
from rlprune_edge.cli import main
from rlprune_edge.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import one_line_error, randomize_bn, tiny_profile  # noqa: E402

pytest.importorskip("onnx2torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
LIMIT = ["--limit", "64"]


class Block(nn.Module):
    """Depthwise 3x3 + BN + Hardswish + pointwise 1x1 + BN, with a residual add."""

    def __init__(self, c: int):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.act = nn.Hardswish()
        self.pw = nn.Conv2d(c, c, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return x + self.bn2(self.pw(self.act(self.bn1(self.dw(x)))))


class TinyNet(nn.Module):
    """stem -> residual depthwise block -> expand [-> squeeze-excitation] -> adaptive pool -> Linear;
    `flatten` picks how the pooled features become rows (flatten, view or squeeze)."""

    def __init__(self, num_classes: int = 10, width: int = 8, flatten: str = "flatten", se: bool = False):
        super().__init__()
        self.flatten = flatten
        self.se = nn.Linear(2 * width, 2 * width) if se else None
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.Hardswish())
        self.block = Block(width)
        self.expand = nn.Sequential(nn.Conv2d(width, 2 * width, 1, bias=False), nn.BatchNorm2d(2 * width),
                                    nn.Hardswish())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.expand(self.block(self.stem(x)))
        if self.se is not None:
            b, c = x.shape[:2]
            x = x * torch.sigmoid(self.se(x.mean((2, 3)))).view(b, c, 1, 1)
        x = self.pool(x)
        if self.flatten == "squeeze":
            return self.head(x.squeeze(-1).squeeze(-1))
        return self.head(torch.flatten(x, 1) if self.flatten == "flatten" else x.view(x.size(0), -1))


class Segmenter(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 10, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def export(model: nn.Module, path: Path, *, fold: bool = True, dynamic: bool = True, seed: int = 0) -> Path:
    """torch.onnx.export at opset 17 (dynamic batch unless `dynamic` is False); `fold=False` keeps
    BatchNormalization."""
    torch.manual_seed(seed)
    randomize_bn(model, seed).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(path), input_names=["image"],
                          output_names=["scores"], opset_version=17, dynamo=False, do_constant_folding=fold,
                          dynamic_axes={"image": {0: "n"}, "scores": {0: "n"}} if dynamic else None)
    return path


def ort_rel(model: nn.Module, onnx_path: Path, x: torch.Tensor) -> float:
    """max |ORT - torch| / max |ORT| of `onnx_path` (run by ONNX Runtime) against `model` on `x`."""
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    want = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        got = model.eval()(x).numpy()
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))


@pytest.fixture
def tinynet(tmp_path) -> Path:
    return export(TinyNet(), tmp_path / "tiny.onnx")


def test_converted_model_matches_onnx_runtime(tmp_path, tinynet, capsys):
    """`--model model.onnx` builds the converted module directly: same outputs as ONNX Runtime, prunable groups."""
    model, info = resolve_model(str(tinynet))
    assert info.source["kind"] == "onnx" and info.source["spec"] == str(tinynet.resolve())
    assert info.model == str(tinynet) and info.input_shape == (3, 32, 32) and info.num_classes == 10
    assert ort_rel(model, tinynet, torch.randn(4, 3, 32, 32)) <= 1e-4
    assert main(["inspect", "--model", str(tinynet)]) == 0
    out = capsys.readouterr().out
    assert "classes: 10" in out and "prunable groups:" in out


def test_pruned_converted_model_reloads_and_exports(tmp_path):
    """A pruned GraphModule (BatchNorm kept) is recorded by onnx2torch's module names, rebuilt exactly
    with --arch, and exports to an ONNX that ONNX Runtime runs to the same outputs."""
    from rlprune_edge.graph import prunable_groups
    from rlprune_edge.onnx_io import export_onnx
    from rlprune_edge.pruning import prune

    path = export(TinyNet(), tmp_path / "bn.onnx", fold=False)
    model, info = resolve_model(str(path))
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(2, 3, 32, 32)
    keep = {g.name: max(1, g.channels // 2) for g in prunable_groups(model, x[:1]) if g.prunable}
    assert keep
    pruned = prune(model, x[:1], keep, importance="l1").eval()
    saved = save_checkpoint(tmp_path / "pruned.pt", pruned, info)
    back, got = load_checkpoint(saved, arch=str(path))
    assert got.layer_shapes and all("/" in name for name in got.layer_shapes)
    assert torch.equal(back(x), pruned(x))
    exported = export_onnx(back, tmp_path / "pruned.onnx", (3, 32, 32), dynamic_batch=True)
    assert ort_rel(back, exported, x) <= 1e-4


@pytest.mark.parametrize("flatten, se, dynamic", [("view", True, False), ("squeeze", False, True)])
def test_reshapes_follow_batch_and_pruned_channels(tmp_path, flatten, se, dynamic):
    """A static-batch export bakes `view(x.size(0), -1)` and an SE block's `view(b, c, 1, 1)` into constant
    Reshapes ([1, C], [1, C, 1, 1]); they become Flatten and Unsqueeze, so the model runs on any batch and
    after its channels are pruned. Converted Squeeze/Shape/Gather modules export back to ONNX."""
    from rlprune_edge.graph import prunable_groups
    from rlprune_edge.onnx_io import export_onnx
    from rlprune_edge.pruning import prune

    path = export(TinyNet(flatten=flatten, se=se), tmp_path / "m.onnx", dynamic=dynamic)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ("Reshape" in ops) if not dynamic else ("Squeeze" in ops)
    model, _ = resolve_model(str(path))
    x = torch.randn(3, 3, 32, 32)
    assert max(ort_rel(model, path, x[i:i + 1]) for i in range(3)) <= 1e-4
    keep = {g.name: max(1, g.channels // 2) for g in prunable_groups(model, x[:1]) if g.prunable}
    assert len(keep) >= 2
    pruned = prune(model, x[:1], keep, importance="l1").eval()
    assert pruned(x).shape == (3, 10)
    assert ort_rel(pruned, export_onnx(pruned, tmp_path / "back.onnx", (3, 32, 32), dynamic_batch=True), x) <= 1e-4


@pytest.mark.slow
def test_import_compress_export_reload(tmp_path, monkeypatch, capsys):
    """import model.onnx -> compress (tiny budget) -> export; the pruned model reloads with --arch and
    matches ONNX Runtime on the exported ONNX."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    prof = tmp_path / "tiny.toml"
    prof.write_text(tiny_profile("tiny-cpu"))
    src = export(TinyNet(), tmp_path / "net.onnx", fold=False)
    ckpt = tmp_path / "imported.pt"
    assert main(["import", str(src), "--out", str(ckpt), *LIMIT]) == 0
    out_text = capsys.readouterr().out
    assert "checked against ONNX Runtime" in out_text and f"--arch {src.resolve()}" in out_text
    run = tmp_path / "run"
    assert main(["compress", "--model", str(ckpt), "--arch", str(src), "--latency-variants", "2", "--candidates", "2",
                 "--kd-images", "64", "--kd-epochs", "1", "--pareto-test-size", "64", "--test-images", "64",
                 "--quiet", "--probe-batches", "1", "--screen-batches", "1", "--final-batches", "1",
                 "--probe-top", "0", "--depth-plans", "0", "--ramps", "", "--select-size", "32",
                 "--confirm-size", "32", "--per-round", "2", "--no-bundle", "--profile", str(prof),
                 "--sparsity", "0.4", "--reward", "accuracy", "--device", "cpu", "--out", str(run)]) == 0
    capsys.readouterr()
    bundle = tmp_path / "bundle"
    assert main(["export", str(run / "model.pt"), "--profile", str(prof), "--out", str(bundle)]) == 2
    assert f"--arch {src.resolve()}" in one_line_error(capsys)
    assert main(["export", str(run / "model.pt"), "--arch", str(src), "--profile", str(prof), "--out", str(bundle),
                 "--no-measure", "--verify-images", "32", "--calib-images", "32", "--test-limit", "64"]) == 0
    dense, _ = load_checkpoint(ckpt, arch=str(src))
    small, info = load_checkpoint(run / "model.pt", arch=str(src))
    assert info.layer_shapes and info.source["kind"] == "onnx"
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in dense.parameters())
    x = torch.randn(3, 3, 32, 32)  # the bundle's graph takes batch 1
    assert max(ort_rel(small, bundle / "model.onnx", x[i:i + 1]) for i in range(3)) <= 1e-4


def _graph(path: Path, node, domains=()) -> Path:
    """A hand-made ONNX classifier: Conv -> `node` -> Flatten -> Gemm (10 classes), image input 1x3x8x8."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]), node,
             helper.make_node("Flatten", ["p"], ["f"], name="flat"), helper.make_node("Gemm", ["f", "fc"], ["scores"],
                                                                                       name="fc", transB=1)]
    graph = helper.make_graph(nodes, "hand", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 10])], inits)
    opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, 1) for d in domains)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def _global_max_pool(tmp_path: Path) -> Path:
    from onnx import helper

    return _graph(tmp_path / "gmp.onnx", helper.make_node("GlobalMaxPool", ["c"], ["p"], name="GlobalMaxPool_3"))


def _custom_op(tmp_path: Path) -> Path:
    from onnx import helper

    node = helper.make_node("FancyPool", ["c"], ["p"], name="Foo_3", domain="com.acme")
    return _graph(tmp_path / "custom.onnx", node, domains=["com.acme"])


def _two_inputs(tmp_path: Path) -> Path:
    from onnx import TensorProto, helper

    x = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3]) for n in ("a", "b")]
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "two", x,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "two.onnx"))
    return tmp_path / "two.onnx"


def _rank2(tmp_path: Path) -> Path:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "flat",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "flat.onnx"))
    return tmp_path / "flat.onnx"


def _not_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "notes.onnx"
    path.write_bytes(b"\xff\xfe this is a text file, not a model \x00\x01")
    return path


def _directory(tmp_path: Path) -> Path:
    (tmp_path / "dir.onnx").mkdir()
    return tmp_path / "dir.onnx"


@pytest.mark.hostile("--model / import of an ONNX file that cannot be converted: an op onnx2torch has no converter "
                     "for (GlobalMaxPool, a custom-domain op), not an ONNX file, a directory, two graph inputs, "
                     "an input that is not (N, C, H, W)",
                     "exit 2 before any conversion, one sentence: the node name, op type, domain and opset, and to "
                     "export without it; 'is not an ONNX model'; what the path is; the input count or rank")
@pytest.mark.parametrize("make, expect", [
    (_global_max_pool, "node 'GlobalMaxPool_3' uses op GlobalMaxPool (opset 17), which onnx2torch cannot convert"),
    (_custom_op, "node 'Foo_3' uses op FancyPool of domain 'com.acme' (opset 1), which onnx2torch cannot convert"),
    (_not_onnx, "is not an ONNX model"),
    (_directory, "is a directory"),
    (_two_inputs, "has 2 graph inputs (a, b)"),
    (_rank2, "has rank 2, not 4"),
])
def test_unconvertible_onnx_refused(tmp_path, capsys, make, expect):
    path = make(tmp_path)
    assert main(["inspect", "--model", str(path)]) == 2
    assert expect in one_line_error(capsys)
    assert main(["import", str(path), "--out", str(tmp_path / "x.pt"), *LIMIT]) == 2
    assert expect in one_line_error(capsys)
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.hostile("`import model.onnx` that does not fit the data: not (N, classes) logits, another class count, "
                     "a fixed input size other than the data's; --model/--width given with an ONNX file",
                     "exit 2, nothing written, one sentence: the output's shape, both class counts, the file's and "
                     "the data's input size, or that the file carries its own architecture")
@pytest.mark.parametrize("make, extra, expect", [
    (lambda tmp: export(Segmenter(), tmp / "m.onnx"), [],
     "returns shape (2, 10, 32, 32); for now a model must return one row of class logits"),
    (lambda tmp: export(TinyNet(num_classes=5), tmp / "m.onnx"), [], "predicts 5 classes but the data has 10"),
    (lambda tmp: _global_average_8x8(tmp), [], "takes inputs of height 8 (the data's 32), width 8 (the data's 32)"),
    (lambda tmp: export(TinyNet(), tmp / "m.onnx"), ["--model", "vgg11"], "--model does not apply to an ONNX file"),
    (lambda tmp: export(TinyNet(), tmp / "m.onnx"), ["--width", "0.5"], "--width does not apply to an ONNX file"),
])
def test_onnx_not_fitting_data_refused(tmp_path, capsys, make, extra, expect):
    path = make(tmp_path)
    assert main(["import", str(path), "--out", str(tmp_path / "x.pt"), *extra, *LIMIT]) == 2
    assert expect in one_line_error(capsys)
    assert not (tmp_path / "x.pt").exists()


def _global_average_8x8(tmp_path: Path) -> Path:
    from onnx import helper

    return _graph(tmp_path / "gap.onnx", helper.make_node("GlobalAveragePool", ["c"], ["p"], name="gap"))


def test_fixed_input_size_is_the_files_own(tmp_path):
    """Without data (inspect), a converted model takes the input size fixed in the file."""
    model, info = resolve_model(str(_global_average_8x8(tmp_path)))
    assert info.input_shape == (3, 8, 8) and model(torch.zeros(2, 3, 8, 8)).shape == (2, 10)


@pytest.mark.hostile("checkpoint of a model converted from ONNX, loaded without --arch, with another file, or after "
                     "the ONNX file changed",
                     "exit 2, one sentence: names the recorded ONNX file and says to pass it with --arch; a changed "
                     "file is refused with both sha256 prefixes; another file names the recorded one")
def test_reload_needs_the_same_onnx_file(tmp_path, tinynet, capsys):
    ckpt = tmp_path / "imported.pt"
    assert main(["import", str(tinynet), "--out", str(ckpt), *LIMIT]) == 0
    capsys.readouterr()
    recorded = str(tinynet.resolve())
    assert main(["inspect", "--model", str(ckpt)]) == 2
    err = one_line_error(capsys)
    assert f"--arch {recorded}" in err and "ONNX file" in err
    assert main(["inspect", "--model", str(ckpt), "--arch", str(tinynet)]) == 0
    capsys.readouterr()
    model, info = load_checkpoint(ckpt, arch=str(tinynet))
    assert ort_rel(model, tinynet, torch.randn(2, 3, 32, 32)) <= 1e-4 and info.meta["data"] == "fashion-mnist"
    other = export(TinyNet(), tmp_path / "other.onnx", seed=1)
    assert main(["inspect", "--model", str(ckpt), "--arch", str(other)]) == 2
    assert f"is not the ONNX file recorded ({recorded}" in one_line_error(capsys)
    export(TinyNet(), tinynet, seed=2)  # the recorded file is replaced by another model
    assert main(["inspect", "--model", str(ckpt), "--arch", str(tinynet)]) == 2
    err = one_line_error(capsys)
    assert "has changed since the checkpoint was saved" in err and recorded in err
    with pytest.raises(UserError, match="is an ONNX model, not an rlprune-edge checkpoint"):
        load_checkpoint(tinynet)


@pytest.mark.hostile("--model model.onnx without the optional onnx2torch package",
                     "exit 2, one sentence: needs onnx2torch: pip install 'rlprune-edge[onnx]'")
def test_missing_onnx2torch_is_one_sentence(tmp_path, tinynet, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx2torch", None)  # `import onnx2torch` raises ImportError
    assert main(["inspect", "--model", str(tinynet)]) == 2
    assert "needs onnx2torch: pip install 'rlprune-edge[onnx]'" in one_line_error(capsys)
    assert main(["import", str(tinynet), "--out", str(tmp_path / "x.pt"), *LIMIT]) == 2
    assert "needs onnx2torch: pip install 'rlprune-edge[onnx]'" in one_line_error(capsys)


def test_weights_file_still_needs_model(tmp_path, capsys):
    """--model became optional for `import` (an .onnx file carries its architecture); a weights file still needs it."""
    weights = tmp_path / "w.pth"
    torch.save(TinyNet().state_dict(), weights)
    assert main(["import", str(weights), "--out", str(tmp_path / "x.pt")]) == 2
    assert "needs --model ARCH" in one_line_error(capsys)
