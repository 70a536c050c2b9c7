"""Every input bounded; messages that name the real cause (issue 46, the input side).

Each test runs the real command line (`rlprune_edge.cli.main`, or the installed script in a
subprocess where a library's own warning would reach the terminal) on tiny synthetic input and
asserts exit code 2 with one sentence on stderr naming the cause, never a traceback, an
"unexpected failure" or a hang: a `deadline` alarm turns a regression that blocks (a FIFO opened as
data, a count that never ends) into a failure. Each carries a `hostile(case, behaviour)` marker,
the row it proves in docs/robustness.md.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from rlprune_edge.cli import main
from rlprune_edge.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import one_line_error as _one_line_error  # noqa: E402

LOCAL_PROFILE = 'name = "bounds"\n[runtime]\nname = "onnxruntime"\n'
CLI = [sys.executable, "-m", "rlprune_edge"]


class Hang(BaseException):
    """Raised by the deadline alarm (a BaseException, so the CLI's `except Exception` cannot swallow it)."""


@pytest.fixture(autouse=True)
def deadline():
    """Fail, instead of hanging, a command that blocks for over 60 s (FIFO opened, endless loop)."""
    def alarm(_signum, _frame):
        raise Hang("the command blocked for 60 s")

    before = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, before)


def _run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The command in a fresh interpreter (warnings reach stderr as they would in a terminal)."""
    env = {**os.environ, "RLPRUNE_EDGE_CACHE": str(cwd / "cache")}
    return subprocess.run([*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _png(path: Path, width: int = 8, height: int = 8, value: int = 0) -> None:
    from PIL import Image

    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)


def _png_header(path: Path, width: int, height: int) -> None:
    """A tiny PNG file whose header declares `width` x `height` (no pixel data: a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """imagefolder DIR: train/ and test/ with classes a and b, two 8x8 images each."""
    root = tmp_path / "imgs"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                _png(root / split / cls / f"{i}.png", value=60 * i + (100 if cls == "b" else 0))
    return root


def _train(data: str, out: Path) -> list[str]:
    return ["train", "--model", "vgg11", "--width", "0.0625", "--epochs", "1", "--limit", "4", "--quiet",
            "--data", data, "--out", str(out)]


def _weights(tmp_path: Path, edit=None, name: str = "w.pt") -> Path:
    """A state_dict file of VGG-11 at width 0.0625 for 2 classes, with `edit(state)` applied."""
    torch.manual_seed(0)
    state = build_model("vgg11", 0.0625, 2).state_dict()
    if edit is not None:
        edit(state)
    path = tmp_path / name
    torch.save(state, path)
    return path


def _import(weights: Path, folder: Path, out: Path) -> list[str]:
    return ["import", str(weights), "--model", "vgg11", "--width", "0.0625", "--data", f"imagefolder:{folder}",
            "--out", str(out)]


# --- 1, 2. imported weights -------------------------------------------------------------------------

@pytest.mark.hostile("`import` of finite weights that give non-finite outputs (every weight x 1e30: float32 overflows)",
                     "exit 2 before the checkpoint is written: 'give NaN or infinite outputs on a random input (the "
                     "largest weight is 1e+30 ...)'; no --out file, no temp file")
def test_import_weights_with_non_finite_outputs(tmp_path, image_folder, capfd):
    def blow_up(state):
        for k, v in state.items():
            if k.endswith("weight"):
                state[k] = v * 1e30

    weights = _weights(tmp_path, blow_up)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "model.pt"
    assert main(_import(weights, image_folder, out)) == 2
    err = _one_line_error(capfd)
    assert "w.pt give NaN or infinite outputs" in err and "largest weight is 1e+30" in err
    assert list(out.parent.iterdir()) == []  # no checkpoint, no temp file


def _sparse(t):
    return t.to_sparse()


def _quantized(t):
    return torch.quantize_per_tensor(t, 0.1, 0, torch.qint8)


@pytest.mark.hostile("`import` of a state_dict holding a sparse, quantized, complex, float8 or meta tensor",
                     "exit 2 before the data loads, naming the key and the layout/dtype and how to re-save it; "
                     "torch's own load warnings are not printed")
@pytest.mark.parametrize(("convert", "needle"), [
    (_sparse, "a sparse coo tensor at 'features.0.weight'"),
    (_quantized, "a quantized tensor (qint8) at 'features.0.weight'"),
    (lambda t: t.to(torch.complex64), "a complex64 tensor at 'features.0.weight'"),
    (lambda t: t.to(torch.float8_e4m3fn), "a float8_e4m3fn tensor at 'features.0.weight'"),
    (lambda t: t.to("meta"), "a tensor on the 'meta' device"),
], ids=["sparse", "quantized", "complex", "float8", "meta"])
def test_import_weights_of_exotic_tensor_kinds(tmp_path, image_folder, capfd, convert, needle):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # creating a quantized tensor warns here, in the test itself
        weights = _weights(tmp_path, lambda s: s.__setitem__("features.0.weight", convert(s["features.0.weight"])))
    out = tmp_path / "model.pt"
    assert main(_import(weights, image_folder, out)) == 2
    err = _one_line_error(capfd)
    assert "w.pt hold" in err and needle in err and "dense real-valued weights only" in err
    assert not out.exists()


@pytest.mark.hostile("`import` of a sparse state_dict, in a terminal (torch.load warns about sparse tensors)",
                     "one line on stderr: torch's UserWarning is silenced where the sentence says it")
def test_import_sparse_prints_no_torch_warning(tmp_path, image_folder):
    weights = _weights(tmp_path, lambda s: s.__setitem__("features.0.weight", s["features.0.weight"].to_sparse()))
    proc = _run_cli(_import(weights, image_folder, tmp_path / "model.pt"), tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert "sparse coo tensor" in proc.stderr and "Warning" not in proc.stderr


# --- 3. digits that are not ASCII ---------------------------------------------------------------

@pytest.mark.hostile("`imagefolder@3²:DIR` or `imagefolder@٣٢:DIR` (str.isdigit() accepts them; int() does not, "
                     "or reads another script's digits)",
                     "exit 2: 'the image size after '@' must be an integer in 8..1024, got '3²''")
@pytest.mark.parametrize("size", ["3²", "٣٢", "３２"])
def test_data_spec_size_with_non_ascii_digits(tmp_path, image_folder, capfd, size):
    assert main(_train(f"imagefolder@{size}:{image_folder}", tmp_path / "m.pt")) == 2
    err = _one_line_error(capfd)
    assert "the image size after '@' must be an integer in 8..1024" in err and repr(size) in err


@pytest.mark.hostile("profile `ssh_options = [\"Port=2²\"]` (a superscript digit)",
                     "exit 2 at load: 'has an invalid value for Port: expected a port number 1-65535'")
def test_ssh_port_with_a_superscript_digit(tmp_path, capfd):
    path = tmp_path / "p.toml"
    path.write_text(LOCAL_PROFILE + '[connection]\nkind = "ssh"\ndestination = "board.invalid"\n'
                    'ssh_options = ["Port=2²"]\n')
    assert main(["profiles", "show", str(path)]) == 2
    assert "invalid value for Port: expected a port number 1-65535" in _one_line_error(capfd)


# --- 4, 5. data that expands ----------------------------------------------------------------------

@pytest.mark.hostile("an image folder holding a PNG whose header claims 20000x20000 or 10000x10000 (a decompression "
                     "bomb: tiny file, gigabytes decoded)",
                     "exit 2 from the header alone, nothing decoded: names the image, its declared size and the "
                     "limit (67,108,864 pixels)")
@pytest.mark.parametrize(("side", "needle"), [(20000, "declares more than"), (10000, "declares 10000x10000 pixels")])
def test_image_folder_decompression_bomb(tmp_path, image_folder, capfd, side, needle):
    _png_header(image_folder / "train" / "a" / "bomb.png", side, side)
    out = tmp_path / "m.pt"
    assert main(_train(f"imagefolder:{image_folder}", out)) == 2
    err = _one_line_error(capfd)
    assert "bomb.png" in err and needle in err and "over the limit of 67,108,864 pixels" in err
    assert not out.exists()


def _cifar_dir(tmp_path: Path, data: object) -> Path:
    root = tmp_path / "cifar"
    root.mkdir()
    raw = pickle.dumps({b"data": data, b"labels": [0]}, protocol=4)
    assert len(raw) < 1024
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(raw)
    return root


class _HugeArray:
    """Pickles as numpy's array constructor called with a 10**10-element shape (allocated at load)."""

    def __reduce__(self):
        try:
            from numpy._core.multiarray import _reconstruct
        except ImportError:  # numpy 1.x
            from numpy.core.multiarray import _reconstruct
        return (_reconstruct, (np.ndarray, (10**10,), b"b"))


def _nested_refs():
    x = [0] * 10
    for _ in range(9):
        x = [x] * 10  # ten references to one list per level: 10**10 elements from a few hundred bytes
    return x


@pytest.mark.hostile("a CIFAR batch of under 1 KB that expands to a 10**10-element array (nested repeated "
                     "references, or numpy's array constructor with a huge shape)",
                     "exit 2 before anything is allocated: 'holds more values than the file has bytes' / 'an "
                     "array of shape (10000000000,) is larger than the file'")
@pytest.mark.parametrize(("data", "needle"), [
    (_nested_refs(), "its 'data' holds more values than the file has bytes"),
    (_HugeArray(), "an array of shape (10000000000,) is larger than the file"),
], ids=["nested-lists", "reconstruct"])
def test_cifar_batch_expanding_beyond_its_size(tmp_path, capfd, data, needle):
    folder = _cifar_dir(tmp_path, data)
    out = tmp_path / "m.pt"
    assert main(_train(f"cifar10:{folder}", out)) == 2
    err = _one_line_error(capfd)
    assert "CIFAR batch" in err and "data_batch_1" in err and needle in err
    assert not out.exists()


# --- 6. ONNX models given to bench ------------------------------------------------------------------

def _onnx(path: Path, nodes, inputs, outputs, initializers=()) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(helper.make_graph(nodes, "m", inputs, outputs, list(initializers)),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.hostile("`bench` of an ONNX model that loads but fails when onnxruntime runs it (a Reshape to an "
                     "impossible shape)",
                     "exit 2: 'MODEL loads but fails when onnxruntime runs it (... cannot be reshaped ...); the "
                     "model itself is broken, so re-export it'; onnxruntime's own log line is not printed")
@pytest.mark.parametrize("per_layer", [False, True])
def test_bench_onnx_failing_at_run_time(tmp_path, capfd, per_layer):
    from onnx import TensorProto, helper

    path = _onnx(tmp_path / "broken.onnx", [helper.make_node("Reshape", ["input", "shape"], ["output"])],
                 [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
                 [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
                 [helper.make_tensor("shape", TensorProto.INT64, [1], [7])])
    assert main(["bench", str(path), "--runs", "2", "--warmup", "0", *(["--per-layer"] if per_layer else [])]) == 2
    err = _one_line_error(capfd)
    assert "broken.onnx loads but fails when onnxruntime runs it" in err and "cannot be reshaped" in err


@pytest.mark.hostile("`bench` of an ONNX model declaring a 30000x30000 input (10.8 GB of float32 to allocate)",
                     "exit 2 before the input is allocated: 'declares its input 'input' of shape [1, 3, 30000, "
                     "30000]: 2,700,000,000 values, over the limit of 134,217,728'")
def test_bench_onnx_declaring_a_huge_input(tmp_path, capfd):
    from onnx import TensorProto, helper

    shape = [1, 3, 30000, 30000]
    path = _onnx(tmp_path / "big.onnx", [helper.make_node("Relu", ["input"], ["output"])],
                 [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                 [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)])
    assert main(["bench", str(path), "--runs", "2"]) == 2
    err = _one_line_error(capfd)
    assert "big.onnx declares its input 'input' of shape [1, 3, 30000, 30000]" in err
    assert "over the limit of 134,217,728" in err


# --- 7. a model too big for this machine ------------------------------------------------------------

@pytest.mark.hostile("`inspect`/`compress --model vgg19 --width 64` (82 billion parameters, 305 GiB of weights)",
                     "exit 2 before anything is built (parameters counted on torch's meta device): names the count, "
                     "the GiB and the memory available, and the largest width that fits; no run directory")
@pytest.mark.parametrize("command", ["inspect", "compress"])
def test_huge_width_refused_before_building(tmp_path, image_folder, capfd, monkeypatch, command):
    monkeypatch.setattr("rlprune_edge.limits.available_memory", lambda: 16 * 2**30)
    out = tmp_path / "run"
    args = ["--model", "vgg19", "--width", "64"]
    if command == "compress":
        args += ["--data", f"imagefolder:{image_folder}", "--out", str(out), "--quiet"]
    assert main([command, *args]) == 2
    err = _one_line_error(capfd)
    assert "vgg19 at width 64 has 82.0 billion parameters" in err and "305.4 GiB" in err
    assert "of the 16.0 GiB of memory available" in err and "at most about 10 here" in err
    assert not out.exists()


# --- 8, 9. profiles -------------------------------------------------------------------------------

@pytest.mark.hostile("profile counts and timeouts beyond reason ([connection] connect_timeout_s = 1e308, "
                     "[runtime] threads = 100000000, [measure] runs = 10**20, port 70000, batch 10**7, ...)",
                     "exit 2 at load naming the file, section and key: 'must be at most 86,400 seconds (a day)', "
                     "'[runtime] threads must be at most 1,024' (was reported as a bad ONNX model, or hung)")
@pytest.mark.parametrize(("section", "key", "value", "bound"), [
    ("connection", "connect_timeout_s", "1e308", "at most 86,400 seconds (a day)"),
    ("connection", "command_timeout_s", "86401", "at most 86,400 seconds (a day)"),
    ("connection", "command_timeout_s", "1" + "0" * 400, "must be a finite number"),
    ("connection", "port", "70000", "at most 65,535"),
    ("runtime", "threads", "100000000", "at most 1,024"),
    ("runtime", "inter_op_threads", "5000", "at most 1,024"),
    ("runtime", "workspace_mb", "10000000000", "at most 1,048,576"),
    ("measure", "runs", "100000000000000000000", "at most 100,000"),
    ("measure", "warmup", "1000000", "at most 100,000"),
    ("measure", "blocks", "100000", "at most 1,000"),
    ("measure", "rounds", "100000", "at most 1,000"),
    ("input", "batch", "10000000", "at most 65,536"),
    ("pruning", "channel_multiple", "4096", "at most 256"),
])
def test_profile_counts_and_timeouts_bounded(tmp_path, capfd, section, key, value, bound):
    path = tmp_path / "p.toml"
    base = LOCAL_PROFILE if key != "workspace_mb" else LOCAL_PROFILE.replace('"onnxruntime"', '"tensorrt"')
    path.write_text(f"{base}[{section}]\n{key} = {value}\n" if section != "runtime" else f"{base}{key} = {value}\n")
    assert main(["profiles", "show", str(path)]) == 2
    err = _one_line_error(capfd)
    assert f"p.toml: [{section}] {key} must be" in err and bound in err


@pytest.mark.hostile("`bench --profile P.toml` whose [runtime] threads = 100000000",
                     "exit 2 at profile load: '[runtime] threads must be at most 1,024' (was a hang creating threads, "
                     "or 'could not be loaded as an ONNX model')")
def test_bench_profile_threads_refused_at_load(tmp_path, capfd):
    path = tmp_path / "thr.toml"
    path.write_text(f"{LOCAL_PROFILE}threads = 100000000\n")
    assert main(["bench", str(tmp_path / "any.onnx"), "--profile", str(path)]) == 2
    assert "thr.toml: [runtime] threads must be at most 1,024, got 100000000" in _one_line_error(capfd)


@pytest.mark.hostile("profile [input] shape = [3, 30000, 30000]",
                     "exit 2 at load: batch x shape over 134,217,728 input values")
def test_profile_input_shape_bounded(tmp_path, capfd):
    path = tmp_path / "p.toml"
    path.write_text(f"{LOCAL_PROFILE}[input]\nshape = [3, 30000, 30000]\n")
    assert main(["profiles", "show", str(path)]) == 2
    assert "p.toml: [input] batch 1 x shape [3, 30000, 30000] is over 134,217,728 input values" in _one_line_error(capfd)


@pytest.mark.hostile("profile TOML nested 5,000 deep (arrays or inline tables), or over 1 MiB",
                     "exit 2: 'nested too deeply to be a profile' / 'over 1024 KiB, far more than a profile' (was a "
                     "RecursionError, exit 1)")
@pytest.mark.parametrize(("body", "needle"), [
    ("a = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply to be a profile"),
    ("a = " + "{b = " * 5000 + "1" + "}" * 5000 + "\n", "nested too deeply to be a profile"),
    (LOCAL_PROFILE + "# " + "x" * (1 << 20) + "\n", "over 1024 KiB, far more than a profile"),
], ids=["arrays", "tables", "huge"])
def test_profile_nested_too_deep_or_too_big(tmp_path, capfd, body, needle):
    path = tmp_path / "deep.toml"
    path.write_text(body)
    assert main(["profiles", "show", str(path)]) == 2
    err = _one_line_error(capfd)
    assert "deep.toml" in err and needle in err


# --- 10. hangs: FIFOs opened as data, endless counts --------------------------------------------------

@pytest.mark.hostile("a FIFO named `x.png` in an image folder",
                     "exit 2 without opening it: 'image DIR/train/a/x.png is a named pipe (FIFO), not a regular file; "
                     "remove it from the image folder' (was a hang)")
def test_image_folder_fifo(tmp_path, image_folder, capfd):
    os.mkfifo(image_folder / "train" / "a" / "x.png")
    assert main(_train(f"imagefolder:{image_folder}", tmp_path / "m.pt")) == 2
    err = _one_line_error(capfd)
    assert "x.png is a named pipe (FIFO), not a regular file" in err


@pytest.mark.hostile("a FIFO `*.toml` in a profile directory (`profiles list`, `--profile NAME`) or given as "
                     "`--profile path.toml`",
                     "exit 2 without opening it: 'profile file ... is a named pipe (FIFO), not a regular file' (was a "
                     "hang)")
@pytest.mark.parametrize("how", ["list", "name", "path"])
def test_profile_fifo(tmp_path, capfd, monkeypatch, how):
    pdir = tmp_path / "profiles"
    pdir.mkdir()
    os.mkfifo(pdir / "board.toml")
    monkeypatch.setenv("RLPRUNE_EDGE_PROFILES_DIR", str(pdir))
    args = {"list": ["profiles", "list"], "name": ["profiles", "show", "board"],
            "path": ["bench", "m.onnx", "--profile", str(pdir / "board.toml")]}[how]
    assert main(args) == 2
    err = _one_line_error(capfd)
    assert "board.toml is a named pipe (FIFO), not a regular file" in err


@pytest.mark.hostile("`bench --runs 99999999999999999999` (or --warmup huge)",
                     "exit 2 before measuring: '--runs must be an integer in 1..100,000' (was a hang)")
@pytest.mark.parametrize("flag", ["--runs", "--warmup"])
def test_bench_runs_bounded(tmp_path, capfd, flag):
    from rlprune_edge.runtimes.backend import write_tiny_onnx

    path = write_tiny_onnx(tmp_path / "tiny.onnx")
    assert main(["bench", str(path), flag, "99999999999999999999"]) == 2
    assert f"{flag} must be an integer in" in _one_line_error(capfd)


@pytest.mark.hostile("`latency-check --runs 10**20` or `--fit-variants 10**11`",
                     "exit 2 before anything is measured: names the flag and its range (1..100,000 runs, 2..10,000 "
                     "variants)")
@pytest.mark.parametrize(("flag", "value", "needle"), [
    ("--runs", "99999999999999999999", "--runs (timed runs per measurement) must be an integer in 1..100,000"),
    ("--fit-variants", "99999999999", "--fit-variants (variants profiled to fit the latency model) must be an integer "
                                      "in 2..10,000"),
])
def test_latency_check_counts_bounded(tmp_path, capfd, monkeypatch, flag, value, needle):
    monkeypatch.setenv("RLPRUNE_EDGE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "fit.json"
    assert main(["latency-check", "--model", "vgg11", "--width", "0.0625", flag, value, "--json", str(out)]) == 2
    assert needle in _one_line_error(capfd)
    assert not out.exists()


@pytest.mark.hostile("`compress` counts beyond reason (--kd-epochs 10**11, --kd-images 10**12, --candidates 10**6, "
                     "--latency-variants 10**6, --threads 10**6, --step-kd-batches 10**12)",
                     "exit 2 before anything is loaded or written: '--kd-epochs 99999999999 is too large; give at "
                     "most 10,000' (--threads 10**6 was a segmentation fault in torch)")
@pytest.mark.parametrize(("flag", "value", "most"), [
    ("--kd-epochs", "99999999999", "10,000"), ("--kd-images", "1000000000000", "10,000,000"),
    ("--candidates", "1000000", "1,000"), ("--latency-variants", "1000000", "10,000"),
    ("--threads", "1000000", "1,024"), ("--step-kd-batches", "1000000000000", "10,000,000"),
])
def test_compress_counts_bounded(tmp_path, capfd, flag, value, most):
    out = tmp_path / "run"
    assert main(["compress", flag, value, "--out", str(out), "--quiet"]) == 2
    assert f"{flag} {value} is too large; give at most {most}." in _one_line_error(capfd)
    assert not out.exists()


# --- 11. messages that name the real cause ------------------------------------------------------------

@pytest.mark.hostile("an input path that is a directory or a FIFO (bench MODEL, import WEIGHTS, --profile path, "
                     "--data imagefolder:/cifar10:/fashion-mnist: naming a file)",
                     "exit 2 naming what it is: 'is a directory', 'is a named pipe (FIFO), not a regular file', "
                     "'is a regular file, not a directory' (was 'does not exist')")
@pytest.mark.parametrize(("make", "command", "needle"), [
    ("dir", lambda p, t: ["bench", str(p)], "model file {p} is a directory"),
    ("fifo", lambda p, t: ["bench", str(p)], "model file {p} is a named pipe (FIFO), not a regular file"),
    ("dir", lambda p, t: ["profiles", "show", str(p)], "profile file {p} is a directory"),
    ("dir", lambda p, t: _import(p, t, t / "o.pt"), "weights file {p} is a directory"),
    ("fifo", lambda p, t: _import(p, t, t / "o.pt"), "weights file {p} is a named pipe (FIFO), not a regular file"),
    ("file", lambda p, t: _train(f"imagefolder:{p}", t / "o.pt"), "imagefolder directory {p} is a regular file, "
                                                                  "not a directory"),
    ("file", lambda p, t: _train(f"cifar10:{p}", t / "o.pt"), "cifar10 directory {p} is a regular file, not a "
                                                              "directory"),
    ("file", lambda p, t: _train(f"fashion-mnist:{p}", t / "o.pt"), "Fashion-MNIST directory {p} is a regular file"),
], ids=["bench-dir", "bench-fifo", "profile-dir", "import-dir", "import-fifo", "imagefolder-file", "cifar-file",
        "fashion-file"])
def test_input_path_names_what_it_is(tmp_path, capfd, make, command, needle):
    path = tmp_path / "x.toml"
    if make == "dir":
        path.mkdir()
    elif make == "fifo":
        os.mkfifo(path)
    else:
        path.write_text("not a directory\n")
    assert main(command(path, tmp_path)) == 2
    err = _one_line_error(capfd)
    assert needle.format(p=path) in err and "does not exist" not in err


@pytest.mark.hostile("`compress --target-latency ''` (silently meant the default 0.5x)",
                     "exit 2 before anything is loaded or written: '--target-latency is empty; give a fraction of the "
                     "dense latency such as 0.5x or a time such as 3ms'")
@pytest.mark.parametrize("value", ["", "  "])
def test_compress_empty_target_latency(tmp_path, capfd, value):
    out = tmp_path / "run"
    assert main(["compress", "--target-latency", value, "--out", str(out), "--quiet"]) == 2
    assert "--target-latency is empty; give a fraction of the dense latency" in _one_line_error(capfd)
    assert not out.exists()
