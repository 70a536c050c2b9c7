"""Export: verified ONNX of pruned models, INT8 on host-cpu, TensorRT path with a fake builder,
atomic bundles, the manifest, and the board example classify.py."""

from __future__ import annotations

import importlib.util
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from rlprune_edge.bundle import check_bundle
from rlprune_edge.checkpoint import ModelInfo, default_checkpoint_path, load_checkpoint
from rlprune_edge.data import load_data
from rlprune_edge.engine import build_engine, engine_provenance
from rlprune_edge.errors import DeviceError, UserError
from rlprune_edge.export import export_bundle
from rlprune_edge.graph import prunable_groups
from rlprune_edge.models import build_model
from rlprune_edge.onnx_io import (
    MAX_ABS_DIFF,
    MIN_TOP1_AGREEMENT,
    onnx_accuracy,
    ort_session,
    read_metadata,
    run_onnx,
)
from rlprune_edge.profiles import load_profile, parse_profile
from rlprune_edge.pruning import prune
from rlprune_edge.quantize import ArrayCalibrationReader, save_calibration

REPO = Path(__file__).resolve().parent.parent
FAST = {"verify_images": 120, "test_limit": 200}


@pytest.fixture(scope="module")
def fm():
    """A small Fashion-MNIST bundle (real images): 1800 train, 200 val, 2000 test."""
    return load_data("fashion-mnist", limit=2000)


def _info(model_name: str, width: float, bundle, **meta) -> ModelInfo:
    return ModelInfo(model_name, width, bundle.num_classes, tuple(bundle.input_shape), tuple(bundle.mean),
                     tuple(bundle.std), list(bundle.class_names), meta=dict(meta))


def _random_prune(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    example = torch.randn(1, 3, 32, 32)
    keep = {}
    for g in prunable_groups(model, example):
        if g.prunable and g.channels > 1:
            keep[g.name] = int(torch.randint(1, g.channels + 1, (1,), generator=gen))
    pruned = prune(model, example, keep, importance="l1")
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    return pruned.eval()


def _fast_profile(tmp_path: Path, name: str = "fast-cpu", runtime: str = "onnxruntime", **extra) -> object:
    doc = {"name": name, "runtime": {"name": runtime, "threads": 1, "precision": "fp32"},
           "measure": {"warmup": 2, "runs": 10, "blocks": 2}, **extra}
    return parse_profile(doc, f"{name}.toml", tmp_path / f"{name}.toml")


def _assert_verified_bundle(out: Path, manifest: dict, model: nn.Module, data, batch: int | None) -> None:
    ver = manifest["verification"]
    assert ver["passed"] and ver["images"] >= 100
    assert ver["max_abs_diff"] <= MAX_ABS_DIFF and ver["top1_agreement"] >= MIN_TOP1_AGREEMENT
    assert check_bundle(out) == []
    path = out / manifest["model_file"]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert (dim0.dim_value if dim0.HasField("dim_value") else None) == batch
    meta = read_metadata(path)
    assert meta["rlprune_edge.profile"] == manifest["profile"]
    assert json.loads(meta["rlprune_edge.class_names"]) == list(data.class_names)
    assert json.loads(meta["rlprune_edge.mean"]) == pytest.approx(list(data.mean))
    assert json.loads(meta["rlprune_edge.test_acc"]) == pytest.approx(manifest["accuracy"]["test_acc"])
    # independent check on test images the export never saw
    x, _ = next(iter(data.loader("test", 64, limit=64)))
    with torch.no_grad():
        ref = model(x).numpy()
    got = run_onnx(ort_session(path), x.numpy(), batch)
    assert np.abs(got - ref).max() <= MAX_ABS_DIFF
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert (out / "classify.py").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.fixture(scope="module")
def vgg_bundle(fm, tmp_path_factory):
    """fp32 bundle of a randomly pruned VGG-11 (width 0.125) on host-cpu, timed with a tiny protocol."""
    torch.manual_seed(0)
    model = _random_prune(build_model("vgg11", 0.125, 10), seed=1)
    out = tmp_path_factory.mktemp("vgg") / "bundle"
    profile = _fast_profile(out.parent)
    manifest = export_bundle(model, _info("vgg11", 0.125, fm, data="fashion-mnist"), profile, out, data=fm, **FAST)
    return model, out, manifest


def test_pruned_vgg_fp32_bundle_is_verified(vgg_bundle, fm):
    model, out, manifest = vgg_bundle
    _assert_verified_bundle(out, manifest, model, fm, batch=1)
    assert manifest["precision"] == "fp32" and manifest["model_file"] == "model.onnx"
    assert manifest["input"] == {"name": "input", "shape": [1, 3, 32, 32], "dynamic_batch": False,
                                 "dtype": "float32", "layout": "NCHW"}
    prep = manifest["preprocessing"]
    assert prep["mean"] == pytest.approx(list(fm.mean)) and prep["resize"] == [32, 32] and prep["channels"] == 3
    assert prep["resize_method"] == "pad"
    lat = manifest["latency"]
    assert lat["median_ms"] > 0 and lat["p90_ms"] >= lat["median_ms"] and "timed runs" in lat["how"]
    assert set(manifest["versions"]) >= {"torch", "onnx", "onnxruntime", "rlprune-edge"}
    # test accuracy is the ONNX graph's, recomputed here
    acc = onnx_accuracy(out / "model.onnx", fm.loader("test", 256, limit=200))
    assert manifest["accuracy"]["test_acc"] == pytest.approx(acc)
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_pruned_mobilenetv3_fp32_dynamic_batch(fm, tmp_path):
    torch.manual_seed(0)
    model = _random_prune(build_model("mobilenetv3_small", 0.25, 10), seed=2)
    out = tmp_path / "mbv3"
    manifest = export_bundle(model, _info("mobilenetv3_small", 0.25, fm), load_profile("host-cpu"), out,
                             data=fm, dynamic_batch=True, measure=False, **FAST)
    _assert_verified_bundle(out, manifest, model, fm, batch=None)
    assert manifest["input"]["shape"] == [None, 3, 32, 32] and manifest["latency"] is None
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    assert ort_session(out / "model.onnx").run(None, {"input": x})[0].shape == (5, 10)


def _trained_model(data) -> tuple[nn.Module, ModelInfo]:
    """The shipped default model when present, else VGG-11 w0.125 trained 2 epochs on 1800 images."""
    if default_checkpoint_path().is_file():
        return load_checkpoint(default_checkpoint_path())
    torch.manual_seed(0)
    model = build_model("vgg11", 0.125, 10)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for epoch in range(2):
        model.train()
        for x, y in data.loader("train", 64, shuffle=True, seed=epoch):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval(), _info("vgg11", 0.125, data)


@pytest.mark.slow
def test_int8_on_host_cpu_keeps_accuracy(fm, tmp_path):
    model, info = _trained_model(fm)
    out = tmp_path / "int8"
    manifest = export_bundle(model, info, _fast_profile(tmp_path), out, precision="int8", data=fm,
                             verify_images=120, test_limit=1000, calib_images=256)
    acc = manifest["accuracy"]
    assert acc["fp32_test_acc"] > 0.6, "the model should be trained"
    assert acc["fp32_test_acc"] - acc["test_acc"] <= 0.01
    assert acc["images"] == 1000
    # the numbers in the manifest are those of the files in the bundle
    assert onnx_accuracy(out / "model.onnx", fm.loader("test", 256, limit=1000)) == pytest.approx(acc["test_acc"])
    proto = onnx.load(str(out / "model.onnx"))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    per_channel = [i for i in proto.graph.initializer if i.name.endswith("_scale") and len(i.dims) == 1 and i.dims[0] > 1]
    assert per_channel, "weights should be quantized per channel"
    assert manifest["calibration"]["images"] == 256 and manifest["calibration"]["split"] == "train"
    lat = manifest["latency"]
    assert lat["precision"] == "int8" and lat["fp32_median_ms"] > 0 and lat["speedup_vs_fp32"] > 0
    assert "interleaved" in lat["how"]
    assert read_metadata(out / "model_fp32.onnx")["rlprune_edge.precision"] == "fp32"
    assert check_bundle(out) == []


class _OnnxLiar(nn.Module):
    """Computes something else while being exported: the ONNX graph must not match PyTorch."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return y * 1.01 if torch.onnx.is_in_onnx_export() else y


def test_mismatching_onnx_is_an_error_and_keeps_the_previous_bundle(vgg_bundle, fm):
    _, out, _ = vgg_bundle
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(UserError, match="does not match PyTorch"):
        export_bundle(_OnnxLiar(), _info("vgg11", 0.125, fm), "host-cpu", out, data=fm, measure=False, **FAST)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_refuses_to_replace_a_directory_that_is_not_a_bundle(fm, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an rlprune-edge bundle"):
        export_bundle(_OnnxLiar(), _info("vgg11", 0.125, fm), "host-cpu", out, data=fm, measure=False)
    assert (out / "notes.txt").read_text() == "keep me"


def test_bad_precision_and_data_mismatch(fm, tmp_path):
    info = _info("vgg11", 0.125, fm)
    with pytest.raises(UserError, match="fp16 needs a TensorRT profile"):
        export_bundle(_OnnxLiar(), info, "host-cpu", tmp_path / "a", precision="fp16", data=fm)
    wrong = ModelInfo("vgg11", 0.125, 5, (3, 32, 32), info.mean, info.std, [str(i) for i in range(5)])
    with pytest.raises(UserError, match="classes"):
        export_bundle(_OnnxLiar(), wrong, "host-cpu", tmp_path / "b", data=fm)
    with pytest.raises(UserError, match="data spec"):
        export_bundle(_OnnxLiar(), info, "host-cpu", tmp_path / "c")
    assert list(tmp_path.iterdir()) == []


# --- TensorRT: everything but the GPU ------------------------------------------------------------


class _FakeBuilder:
    """Stands in for the on-device TensorRT build; records what it was given."""

    def __init__(self, provenance: dict | None = None) -> None:
        self.calls: list[dict] = []
        self.provenance = {"tensorrt_version": "10.3.0", "gpu_name": "Orin (fake)"} if provenance is None else provenance

    def __call__(self, profile, onnx_path, out_path, precision, calib):
        calib_arr = np.load(calib) if calib is not None else None
        self.calls.append({"profile": profile.name, "onnx": onnx_path.name, "precision": precision,
                           "calib": calib_arr, "onnx_exists": onnx_path.is_file()})
        out_path.write_bytes(b"fake engine " + precision.encode())
        return dict(self.provenance)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tensorrt_bundle_with_fake_builder(fm, tmp_path, precision):
    torch.manual_seed(0)
    model = build_model("vgg11", 0.125, 10).eval()
    builder = _FakeBuilder()
    out = tmp_path / "trt"
    manifest = export_bundle(model, _info("vgg11", 0.125, fm), "jetson-orin-nano", out, precision=precision,
                             data=fm, measure=False, engine_builder=builder, calib_images=64, **FAST)
    (call,) = builder.calls
    assert call["precision"] == precision and call["onnx"] == "model.onnx" and call["onnx_exists"]
    if precision == "int8":
        calib = call["calib"]
        assert calib.shape == (64, 3, 32, 32) and calib.dtype == np.float32
        # normalised training images, as the model sees them
        assert abs(float(calib.mean())) < 1.0 and 0.5 < float(calib.std()) < 2.0
        assert manifest["calibration"]["split"] == "train"
    else:
        assert call["calib"] is None
    assert manifest["model_file"] == "model.engine" and manifest["precision"] == precision
    assert manifest["tensorrt_version"] == "10.3.0" and manifest["gpu_name"] == "Orin (fake)"
    assert manifest["engine"]["precision"] == precision
    assert set(manifest["files"]) == {"model.engine", "model.onnx", "classify.py"}
    assert (out / "model.engine").read_bytes() == b"fake engine " + precision.encode()
    assert check_bundle(out) == []


def test_tensorrt_builder_without_provenance_fails_cleanly(fm, tmp_path):
    out = tmp_path / "trt"
    with pytest.raises(DeviceError, match="tensorrt_version"):
        export_bundle(build_model("vgg11", 0.125, 10).eval(), _info("vgg11", 0.125, fm), "jetson-orin-nano", out,
                      precision="fp16", data=fm, measure=False, engine_builder=_FakeBuilder({"gpu_name": "x"}), **FAST)
    assert list(tmp_path.iterdir()) == []


def test_local_engine_build_without_tensorrt_is_a_device_error(tmp_path):
    pytest.importorskip("onnx")
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    model = build_model("vgg11", 0.125, 10).eval()
    from rlprune_edge.onnx_io import export_onnx

    onnx_path = export_onnx(model, tmp_path / "m.onnx", (3, 32, 32))
    with pytest.raises(DeviceError, match="tensorrt"):
        build_engine(load_profile("desktop-gpu-tensorrt"), onnx_path, tmp_path / "m.engine", "fp16")
    assert not (tmp_path / "m.engine").exists()


def test_local_engine_build_calls_the_board_runner(tmp_path, monkeypatch):
    """The in-process path: runner argv, calib passed through, provenance from reply + facts."""
    from rlprune_edge.board import runner

    seen = {}

    def fake_run(argv):
        seen["argv"] = argv
        out = argv[argv.index("--out") + 1]
        Path(out).write_bytes(b"engine")
        return 0, {"engine": out, "bytes": 6, "tensorrt_version": "10.0.1", "precision": "int8"}

    monkeypatch.setattr(runner, "run", fake_run)
    monkeypatch.setattr(runner, "collect_facts", lambda: {"packages": {"tensorrt": "10.0.1"}})
    monkeypatch.setattr("rlprune_edge.engine.local_gpu_name", lambda: "NVIDIA RTX A2000")
    calib = save_calibration(np.zeros((4, 3, 8, 8), np.float32), tmp_path / "c.npy")
    got = build_engine(load_profile("desktop-gpu-tensorrt"), tmp_path / "m.onnx", tmp_path / "m.engine", "int8", calib)
    argv = seen["argv"]
    assert argv[:2] == ["build-engine", "--onnx"] and argv[argv.index("--precision") + 1] == "int8"
    assert argv[argv.index("--calib") + 1] == str(calib) and argv[argv.index("--workspace-mb") + 1] == "2048"
    assert got["tensorrt_version"] == "10.0.1" and got["gpu_name"] == "NVIDIA RTX A2000" and "engine" not in got


def test_engine_provenance_from_builder_and_facts():
    facts = {"board_model": "NVIDIA Jetson Orin Nano Developer Kit", "packages": {"tensorrt": "8.6.2"},
             "l4t_release": "R36.3.0"}
    got = engine_provenance({}, facts)
    assert got["tensorrt_version"] == "8.6.2" and got["gpu_name"].startswith("NVIDIA Jetson Orin Nano")
    assert got["l4t_release"] == "R36.3.0"
    got = engine_provenance({"tensorrt_version": "10.1", "gpu_name": "RTX 4090", "build_s": 3.5}, facts)
    assert got["tensorrt_version"] == "10.1" and got["gpu_name"] == "RTX 4090" and got["build_s"] == 3.5


def test_calibration_helpers(tmp_path):
    imgs = np.random.default_rng(0).standard_normal((10, 3, 8, 8)).astype(np.float32)
    reader = ArrayCalibrationReader(imgs, batch=4)
    feeds = []
    while (f := reader.get_next()) is not None:
        feeds.append(f["input"])
    assert [f.shape[0] for f in feeds] == [4, 4]  # static batch: the short tail is dropped
    reader.rewind()
    assert reader.get_next()["input"].shape == (4, 3, 8, 8)
    dyn = ArrayCalibrationReader(imgs, batch=None)
    assert sum(len(f["input"]) for f in iter(dyn.get_next, None)) == 10
    p = save_calibration(imgs.astype(np.float64), tmp_path / "calib.npy")
    back = np.load(p)
    assert back.dtype == np.float32 and np.array_equal(back, imgs)
    imgs[0, 0, 0, 0] = np.nan
    with pytest.raises(UserError, match="NaN"):
        save_calibration(imgs, tmp_path / "bad.npy")
    with pytest.raises(UserError):
        save_calibration(np.zeros((0, 3, 8, 8), np.float32), tmp_path / "empty.npy")


# --- the board example --------------------------------------------------------------------------


def _load_classify():
    spec = importlib.util.spec_from_file_location("board_classify", REPO / "devices" / "classify.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _png(img: np.ndarray, color: int, palette: np.ndarray | None = None) -> bytes:
    """Encode uint8 H x W x C as PNG, cycling through all five row filters."""
    h, w, c = img.shape
    bpp = c
    raw = bytearray()
    prev = np.zeros(w * c, dtype=np.int32)
    for y in range(h):
        row = img[y].reshape(-1).astype(np.int32)
        ftype = y % 5
        left = np.concatenate([np.zeros(bpp, np.int32), row[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        if ftype == 0:
            f = row
        elif ftype == 1:
            f = row - left
        elif ftype == 2:
            f = row - prev
        elif ftype == 3:
            f = row - (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = np.abs(p - left), np.abs(p - prev), np.abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
            f = row - pred
        raw.append(ftype)
        raw.extend((f & 0xFF).astype(np.uint8).tobytes())
        prev = row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    plte = chunk(b"PLTE", palette.astype(np.uint8).tobytes()) if palette is not None else b""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)) + plte
            + chunk(b"IDAT", zlib.compress(bytes(raw))) + chunk(b"IEND", b""))


def test_classify_png_decoder_all_filters(tmp_path):
    cls = _load_classify()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (11, 7, 3), dtype=np.uint8)
    (tmp_path / "rgb.png").write_bytes(_png(rgb, 2))
    assert np.array_equal(cls.read_png(str(tmp_path / "rgb.png")), rgb)
    grey = rng.integers(0, 256, (6, 9, 1), dtype=np.uint8)
    (tmp_path / "g.png").write_bytes(_png(grey, 0))
    assert np.array_equal(cls.read_png(str(tmp_path / "g.png")), grey)
    rgba = rng.integers(0, 256, (4, 5, 4), dtype=np.uint8)
    (tmp_path / "a.png").write_bytes(_png(rgba, 6))
    assert np.array_equal(cls.read_png(str(tmp_path / "a.png")), rgba[:, :, :3])
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    idx = rng.integers(0, 16, (5, 6, 1), dtype=np.uint8)
    (tmp_path / "p.png").write_bytes(_png(idx, 3, palette))
    assert np.array_equal(cls.read_png(str(tmp_path / "p.png")), palette[idx[:, :, 0]])


def test_classify_script_runs_on_a_bundle(vgg_bundle, fm, tmp_path):
    model, out, manifest = vgg_bundle
    images = fm.test.images[:3]  # uint8 [3, 1, 32, 32]: 28x28 Fashion-MNIST zero-padded to 32
    x = fm.test.normalize(images)
    with torch.no_grad():
        expected = [manifest["class_names"][i] for i in model(x).argmax(1).tolist()]
    raw = images[:, 0, 2:30, 2:30].numpy()  # the original 28x28 pictures
    files = []
    for i, pic in enumerate(raw):
        if i == 0:
            path = tmp_path / "shoe.png"
            path.write_bytes(_png(pic[:, :, None], 0))
        elif i == 1:
            path = tmp_path / "item.pgm"
            path.write_bytes(b"P5\n# fashion\n28 28\n255\n" + pic.tobytes())
        else:
            path = tmp_path / "item.npy"
            np.save(path, pic)
        files.append(path)
    for path, want in zip(files, expected, strict=True):
        res = subprocess.run([sys.executable, str(out / "classify.py"), str(path)], capture_output=True, text=True,
                             timeout=120, check=False)
        assert res.returncode == 0, res.stderr
        assert res.stdout.split("\t")[0] == want
    res = subprocess.run([sys.executable, str(out / "classify.py"), str(files[0]), "--json", "--top", "3"],
                         capture_output=True, text=True, timeout=120, check=False)
    doc = json.loads(res.stdout)
    assert doc["top"][0]["class"] == expected[0] and len(doc["top"]) == 3
    assert sum(t["prob"] for t in doc["top"]) <= 1.0 + 1e-6
    bad = tmp_path / "bad.txt"
    bad.write_text("not an image")
    res = subprocess.run([sys.executable, str(out / "classify.py"), str(bad)], capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 2 and "unsupported image format" in res.stderr
