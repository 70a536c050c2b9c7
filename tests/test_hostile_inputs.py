"""Hostile and careless input (issue 17): one sentence on stderr, exit code 2, never a traceback.

Every test runs the real command line (`rlprune_edge.cli.main`) and fails before any long work:
no training, no measuring, no export. Each carries a `hostile(case, behaviour)` marker, the row
it proves in docs/robustness.md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlprune_edge.checkpoint import resolve_model, save_checkpoint
from rlprune_edge.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import one_line_error as _one_line_error  # noqa: E402

LOCAL_PROFILE = 'name = "hostile"\n[runtime]\nname = "onnxruntime"\n'
SSH_PROFILE = LOCAL_PROFILE + '[connection]\nkind = "ssh"\ndestination = "board.invalid"\n'


def _profile(tmp_path: Path, body: str, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


@pytest.fixture
def tiny_ckpt(tmp_path) -> Path:
    """A real checkpoint of VGG-11 at width 0.0625 (4..32 channels)."""
    torch.manual_seed(0)
    model, info = resolve_model("vgg11", width=0.0625)
    return save_checkpoint(tmp_path / "tiny.pt", model, info)


def _crafted(tmp_path: Path, tiny_ckpt: Path, edit) -> Path:
    """The tiny checkpoint's payload with `edit(payload)` applied, saved with torch.save."""
    payload = torch.load(tiny_ckpt, weights_only=True)
    edit(payload)
    path = tmp_path / "crafted.pt"
    torch.save(payload, path)
    return path


# --- 1. profiles ---------------------------------------------------------------------------------

@pytest.mark.hostile("profile file that is not UTF-8",
         "exit 2: names the file, the offending byte and says a profile must be UTF-8 TOML")
def test_profile_not_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'name = "caf\xe9"\n[runtime]\nname = "onnxruntime"\n')
    assert main(["profiles", "show", str(path)]) == 2
    err = _one_line_error(capsys)
    assert "latin1.toml: not UTF-8 text (byte 0xe9" in err and "must be UTF-8 TOML" in err


@pytest.mark.hostile("profile float key that is nan or inf ([reward] latency = nan, [connection] command_timeout_s = inf)",
         "exit 2 at load: names the file, section and key and says it must be a finite number")
@pytest.mark.parametrize(("section", "key", "value"), [
    ("reward", "latency", "nan"),
    ("reward", "flops", "inf"),
    ("reward", "params", "-inf"),
    ("connection", "connect_timeout_s", "nan"),
    ("connection", "command_timeout_s", "inf"),
])
def test_profile_non_finite_float(tmp_path, capsys, section, key, value):
    path = _profile(tmp_path, f"{LOCAL_PROFILE}[{section}]\n{key} = {value}\n")
    assert main(["profiles", "show", str(path)]) == 2
    err = _one_line_error(capsys)
    assert f"p.toml: [{section}] {key} must be a finite number" in err and value in err


@pytest.mark.hostile("profile with a negative reward weight ([reward] flops = -1)",
         "exit 2 at load: '[reward] flops must be >= 0'")
def test_profile_negative_reward_weight(tmp_path, capsys):
    path = _profile(tmp_path, f"{LOCAL_PROFILE}[reward]\nlatency = 1.0\nflops = -1\n")
    assert main(["profiles", "show", str(path)]) == 2
    assert "p.toml: [reward] flops must be >= 0, got -1.0" in _one_line_error(capsys)


@pytest.mark.hostile("[connection] python with an unbalanced quote (python = \"python3 '\")",
         "exit 2 at load (`profiles check` never reaches ssh): says it cannot be split into words, balance the quotes")
def test_profile_python_unbalanced_quote(tmp_path, capsys):
    path = _profile(tmp_path, SSH_PROFILE + "python = \"python3 '\"\n")
    assert main(["profiles", "check", str(path)]) == 2
    err = _one_line_error(capsys)
    assert "p.toml: [connection] python" in err and "cannot be split into words" in err
    assert "No closing quotation" in err


@pytest.mark.hostile("[connection] python that is shell code (python = \"python3; rm -rf ~\", \"$(evil)\", a newline)",
         "exit 2 at load: names the shell characters and asks for a program and its arguments only")
@pytest.mark.parametrize("python", ["python3; rm -rf ~", "$(curl evil)/python3", "python3 | tee /tmp/x",
                                    "python3\\n`id`"])
def test_profile_python_shell_code(tmp_path, capsys, python):
    path = _profile(tmp_path, SSH_PROFILE + f'python = "{python}"\n')
    assert main(["profiles", "check", str(path)]) == 2
    err = _one_line_error(capsys)
    assert "p.toml: [connection] python" in err and "shell character" in err


@pytest.mark.hostile("[connection] python that is empty",
         "exit 2 at load: '[connection] python is empty; set it to the board's python'")
def test_profile_python_empty(tmp_path, capsys):
    path = _profile(tmp_path, SSH_PROFILE + 'python = "  "\n')
    assert main(["profiles", "check", str(path)]) == 2
    assert "p.toml: [connection] python is empty" in _one_line_error(capsys)


# --- 2. checkpoint headers -----------------------------------------------------------------------

@pytest.mark.hostile("checkpoint whose input_shape is not 3 positive ints ([3, -4, 32], [3, 32], ['3', 32, 32])",
         "exit 2 from inspect: 'malformed header: info.input_shape must be 3 positive integers (C, H, W)'")
@pytest.mark.parametrize("shape", [[3, -4, 32], [3, 32], ["3", 32, 32], [3, 0, 32], [3, 32.5, 32], "3x32x32"])
def test_checkpoint_bad_input_shape(tmp_path, tiny_ckpt, capsys, shape):
    path = _crafted(tmp_path, tiny_ckpt, lambda p: p["info"].__setitem__("input_shape", shape))
    assert main(["inspect", "--model", str(path)]) == 2
    err = _one_line_error(capsys)
    assert "crafted.pt has a malformed header: info.input_shape must be 3 positive integers" in err


@pytest.mark.hostile("checkpoint whose input_shape is positive but too small for the network ([3, 1, 1])",
         "exit 2 from inspect: the model does not run on its recorded input shape, re-create the checkpoint")
def test_checkpoint_input_shape_too_small(tmp_path, tiny_ckpt, capsys):
    path = _crafted(tmp_path, tiny_ckpt, lambda p: p["info"].__setitem__("input_shape", [3, 1, 1]))
    assert main(["inspect", "--model", str(path)]) == 2
    assert "does not run on its recorded input shape [3, 1, 1]" in _one_line_error(capsys)


@pytest.mark.hostile("checkpoint whose layer_shapes is a list (or holds non-integer shapes)",
         "exit 2 from inspect: 'malformed header: info.layer_shapes must be a dict of layer name -> ...'")
@pytest.mark.parametrize("shapes", [[1, 2, 3], {"features.0": [3, 8]},
                                    {"features.0": {"in_channels": 3, "out_channels": "8", "groups": 1}}])
def test_checkpoint_layer_shapes_not_a_dict(tmp_path, tiny_ckpt, capsys, shapes):
    path = _crafted(tmp_path, tiny_ckpt, lambda p: p["info"].__setitem__("layer_shapes", shapes))
    assert main(["inspect", "--model", str(path)]) == 2
    err = _one_line_error(capsys)
    assert "crafted.pt has a malformed header: info.layer_shapes" in err and "must be a dict" in err


@pytest.mark.hostile("checkpoint whose state_dict is a list (or maps a name to a non-tensor)",
         "exit 2 from inspect: 'malformed header: state_dict must be a dict of parameter name -> tensor'")
@pytest.mark.parametrize("make_state", [lambda sd: list(sd.values()), lambda sd: {**sd, "features.0.weight": 1.0}])
def test_checkpoint_state_dict_not_a_dict(tmp_path, tiny_ckpt, capsys, make_state):
    path = _crafted(tmp_path, tiny_ckpt, lambda p: p.__setitem__("state_dict", make_state(p["state_dict"])))
    assert main(["inspect", "--model", str(path)]) == 2
    err = _one_line_error(capsys)
    assert "crafted.pt has a malformed header: state_dict" in err


@pytest.mark.hostile("checkpoint whose format version is not an int (\"1\", 1.0, missing) or is 0",
         "exit 2 from inspect: 'malformed header: version must be an integer'")
@pytest.mark.parametrize("version", ["1", 1.0, None, 0, True])
def test_checkpoint_version_not_an_int(tmp_path, tiny_ckpt, capsys, version):
    def edit(p):
        if version is None:
            del p["version"]
        else:
            p["version"] = version

    path = _crafted(tmp_path, tiny_ckpt, edit)
    assert main(["inspect", "--model", str(path)]) == 2
    err = _one_line_error(capsys)
    assert "crafted.pt has a malformed header: version must be" in err


@pytest.mark.hostile("checkpoint with other malformed info fields (width nan, num_classes '10', std 0, info a list)",
         "exit 2 from inspect: names the field and what it must be")
@pytest.mark.parametrize(("field", "value", "needle"), [
    ("width", float("nan"), "info.width must be a number in (0, 64]"),
    ("width", 1e9, "info.width must be a number in (0, 64]"),
    ("num_classes", "10", "info.num_classes must be an integer"),
    ("num_classes", 0, "info.num_classes must be an integer"),
    ("std", [0.0, 0.3, 0.3], "info.std must be a list of positive numbers"),
    ("mean", [float("inf")] * 3, "info.mean must be a non-empty list of finite numbers"),
    ("model", 7, "info.model must be a model name"),
    ("meta", [1, 2], "info.meta must be a dict"),
    ("class_names", "abc", "info.class_names must be a list of strings"),
    (None, [1, 2], "info must be a dict of model fields"),
])
def test_checkpoint_other_bad_fields(tmp_path, tiny_ckpt, capsys, field, value, needle):
    def edit(p):
        if field is None:
            p["info"] = value
        else:
            p["info"][field] = value

    path = _crafted(tmp_path, tiny_ckpt, edit)
    assert main(["inspect", "--model", str(path)]) == 2
    assert needle in _one_line_error(capsys)


# --- 3. model specs that are not files -----------------------------------------------------------

@pytest.mark.hostile("--model naming a directory", "exit 2: 'model DIR is a directory, not a checkpoint file'")
def test_model_spec_is_a_directory(tmp_path, capsys):
    assert main(["inspect", "--model", str(tmp_path)]) == 2
    err = _one_line_error(capsys)
    assert f"model {str(tmp_path)!r} is a directory, not a checkpoint file" in err


@pytest.mark.hostile("--model naming a FIFO (named pipe)",
         "exit 2 without opening it: 'model PATH is not a regular file but a named pipe (FIFO)'")
def test_model_spec_is_a_fifo(tmp_path, capsys):
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    assert main(["inspect", "--model", str(fifo)]) == 2
    err = _one_line_error(capsys)
    assert "model.pt" in err and "is not a regular file but a named pipe (FIFO)" in err


@pytest.mark.hostile("--model that is an empty string", "exit 2: '--model is empty; give a checkpoint (.pt) path or one of ...'")
@pytest.mark.parametrize("spec", ["", "   "])
def test_model_spec_is_empty(capsys, spec):
    assert main(["inspect", "--model", spec]) == 2
    err = _one_line_error(capsys)
    assert "--model is empty" in err and "vgg19" in err


@pytest.mark.hostile("export CKPT that is a directory", "exit 2: 'checkpoint DIR is a directory, not a checkpoint file'")
def test_export_checkpoint_is_a_directory(tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["export", str(tmp_path), "--profile", "host-cpu", "--out", str(out)]) == 2
    assert "is a directory, not a checkpoint file" in _one_line_error(capsys)
    assert not out.exists()


# --- 4. export -----------------------------------------------------------------------------------

@pytest.mark.hostile("export --opset 99 (or 16, 21)",
         "exit 2 before any work: '--opset must be >= 17 and <= 20 (the range torch.onnx.export supports here)'")
@pytest.mark.parametrize("opset", ["99", "16", "21", "-1"])
def test_export_opset_out_of_range(tmp_path, tiny_ckpt, capsys, opset):
    from rlprune_edge.onnx_io import MAX_OPSET

    out = tmp_path / "bundle"
    assert main(["export", str(tiny_ckpt), "--profile", "host-cpu", "--out", str(out), "--opset", opset]) == 2
    err = _one_line_error(capsys)
    assert f"--opset must be >= 17 and <= {MAX_OPSET}" in err and f"got {opset}" in err
    assert not out.exists()


@pytest.mark.hostile("export --out below a regular file (a path that can never be a directory)",
         "exit 2 before loading anything: names --out and the file in the way")
def test_export_out_below_a_file(tmp_path, tiny_ckpt, capsys, monkeypatch):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    monkeypatch.setattr("rlprune_edge.checkpoint.load_checkpoint",
                        lambda *a, **k: pytest.fail("the checkpoint was loaded before --out was checked"))
    out = blocker / "bundle"
    assert main(["export", str(tiny_ckpt), "--profile", "host-cpu", "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert f"cannot write the bundle directory {out}: {blocker} is a file, not a directory" in err
    assert blocker.read_text() == "a file, not a directory"


@pytest.mark.hostile("export --out in a read-only directory",
         "exit 2 before loading anything: 'cannot write the bundle directory DIR: Permission denied'")
def test_export_out_in_read_only_dir(tmp_path, tiny_ckpt, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: chmod does not make the directory read-only")
        out = ro / "bundle"
        assert main(["export", str(tiny_ckpt), "--profile", "host-cpu", "--out", str(out)]) == 2
        err = _one_line_error(capsys)
        assert f"cannot write the bundle directory {out}" in err and "Permission denied" in err
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


@pytest.mark.hostile("disk full (any OSError) while export writes the bundle",
         "exit 2 naming --out and the file; the temp bundle is removed and a previous bundle is untouched")
def test_export_oserror_while_writing(tmp_path, tiny_ckpt, capsys, monkeypatch):
    import errno

    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text('{"tool": "rlprune-edge export", "files": {"model.onnx": {}}}')
    (out / "model.onnx").write_bytes(b"previous bundle")
    monkeypatch.setattr("rlprune_edge.export._resolve_data", lambda info, data: object())
    monkeypatch.setattr("rlprune_edge.export._check_data", lambda info, data: None)

    def full_disk(request, tmp_dir, *rest):
        target = Path(tmp_dir) / "model.onnx"
        target.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr("rlprune_edge.export._build", full_disk)
    assert main(["export", str(tiny_ckpt), "--profile", "host-cpu", "--out", str(out), "--data", "x"]) == 2
    err = _one_line_error(capsys)
    assert f"cannot write the bundle directory {out}: No space left on device" in err and "model.onnx" in err
    assert (out / "model.onnx").read_bytes() == b"previous bundle"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "tiny.pt"]


# --- 5. latency-check ----------------------------------------------------------------------------

LC = ["latency-check", "--model", "vgg11", "--width", "0.0625", "--profile", "host-cpu",
      "--variants", "1", "--fit-variants", "2"]


@pytest.fixture
def no_measuring(monkeypatch, tmp_path):
    """Latency-check bad-input tests must fail before the profile's backend is even built."""
    monkeypatch.setenv("RLPRUNE_EDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("rlprune_edge.latency.registry.get_backend",
                        lambda *a, **k: pytest.fail("measuring started before the bad input was refused"))


@pytest.mark.hostile("latency-check --json naming an existing directory",
         "exit 2 before measuring: '--json DIR is a directory; give a file name such as DIR/latency-check.json'")
def test_latency_check_json_is_a_directory(tmp_path, capsys, no_measuring):
    assert main([*LC, "--json", str(tmp_path)]) == 2
    err = _one_line_error(capsys)
    assert f"--json {tmp_path} is a directory" in err


@pytest.mark.hostile("latency-check --runs 0 or negative (0 was silently ignored)",
         "exit 2 before measuring: '--runs must be at least 1, got 0'")
@pytest.mark.parametrize("runs", ["0", "-5"])
def test_latency_check_runs_not_positive(tmp_path, capsys, no_measuring, runs):
    assert main([*LC, "--runs", runs, "--json", str(tmp_path / "o.json")]) == 2
    assert f"--runs must be at least 1, got {runs}" in _one_line_error(capsys)
    assert not (tmp_path / "o.json").exists()


@pytest.mark.hostile("latency-check --json below a regular file, or in a read-only directory",
         "exit 2 before measuring: names --json and why it cannot be written")
def test_latency_check_json_not_writable(tmp_path, capsys, no_measuring):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    assert main([*LC, "--json", str(blocker / "o.json")]) == 2
    assert f"--json {blocker / 'o.json'}: {blocker} is not a directory" in _one_line_error(capsys)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if not os.access(ro, os.W_OK):
            assert main([*LC, "--json", str(ro / "o.json")]) == 2
            err = _one_line_error(capsys)
            assert f"cannot write --json {ro / 'o.json'}" in err and "Permission denied" in err
    finally:
        ro.chmod(0o755)


@pytest.mark.hostile("latency-check --width nan/inf/huge, --seed negative",
         "exit 2 before measuring: '--width must be a number in (0, 64]', '--seed must be >= 0'")
@pytest.mark.parametrize(("flag", "value", "needle"), [
    ("--width", "nan", "--width must be a number in (0, 64]"),
    ("--width", "inf", "--width must be a number in (0, 64]"),
    ("--width", "1e6", "--width must be a number in (0, 64]"),
    ("--seed", "-1", "--seed must be >= 0"),
])
def test_latency_check_bad_numbers(tmp_path, capsys, no_measuring, flag, value, needle):
    assert main([*LC, flag, value, "--json", str(tmp_path / "o.json")]) == 2
    assert needle in _one_line_error(capsys)


@pytest.mark.hostile("latency-check whose --json cannot be written at the end (disk full)",
         "exit 2: 'cannot write --json OUT: No space left on device' (not an unexpected failure)")
def test_latency_check_write_failure_at_the_end(tmp_path, capsys, monkeypatch):
    import errno
    from types import SimpleNamespace

    monkeypatch.setenv("RLPRUNE_EDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("rlprune_edge.latency.registry.get_backend", lambda profile: object())
    monkeypatch.setattr("rlprune_edge.latency.cache.get_or_fit", lambda *a, **k: SimpleNamespace(arch_hash="0" * 16))
    monkeypatch.setattr("rlprune_edge.latency.campaign.check_model",
                        lambda *a, **k: {"median_abs_rel_error": 0.1, "p90_abs_rel_error": 0.2, "variants": []})

    def full_disk(tmp, path, **rule):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("rlprune_edge.outputs._install", full_disk)
    out = tmp_path / "o.json"
    assert main([*LC, "--json", str(out)]) == 2
    assert f"cannot write --json {out}: No space left on device" in _one_line_error(capsys)


# --- 6. image folders ----------------------------------------------------------------------------

def _image_folder(root: Path, layout: dict[str, list[str]], n: int = 2) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, classes in layout.items():
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def _train_argv(data: Path, out: Path) -> list[str]:
    return ["train", "--model", "vgg11", "--width", "0.0625", "--data", f"imagefolder:{data}", "--epochs", "1",
            "--out", str(out), "--quiet"]


@pytest.mark.hostile("imagefolder whose train/ holds a single class",
         "exit 2: 'train/ has a single class folder (cat); a classifier needs at least 2 classes'")
def test_imagefolder_single_class(tmp_path, capsys):
    data = _image_folder(tmp_path / "data", {"train": ["cat"], "val": ["cat"]})
    assert main(_train_argv(data, tmp_path / "m.pt")) == 2
    err = _one_line_error(capsys)
    assert "has a single class folder (cat)" in err and "at least 2 classes" in err
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.hostile("imagefolder with a class in val/ or test/ that train/ lacks (was silently dropped)",
         "exit 2: names the class and the folder: 'has class folder(s) bird that DIR/train lacks'")
@pytest.mark.parametrize("held", ["val", "test"])
def test_imagefolder_class_missing_from_train(tmp_path, capsys, held):
    data = _image_folder(tmp_path / "data", {"train": ["cat", "dog"], held: ["bird", "cat", "dog"]})
    assert main(_train_argv(data, tmp_path / "m.pt")) == 2
    err = _one_line_error(capsys)
    assert f"{data / held} has class folder(s) bird that {data / 'train'} lacks" in err


# --- 7. train / inspect numeric flags ------------------------------------------------------------

@pytest.mark.hostile("train numeric flags out of range (--weight-decay -1/nan, --lr nan/inf, --width inf/100, --seed -1/2**40, "
         "--threads 0/5000, --batch-size 0/10**9, --epochs 0/10**12, --width 64 (weights beyond the memory))",
         "exit 2 before loading data: names the flag and its valid range (the width: the memory it needs)")
@pytest.mark.parametrize(("flag", "value", "needle"), [
    ("--weight-decay", "-1", "--weight-decay must be a finite number >= 0"),
    ("--weight-decay", "nan", "--weight-decay must be a finite number >= 0"),
    ("--lr", "nan", "--lr must be a positive number"),
    ("--lr", "inf", "--lr must be a positive number"),
    ("--width", "inf", "--width must be a number in (0, 64]"),
    ("--width", "100", "--width must be a number in (0, 64]"),
    ("--seed", "-1", "--seed must be an integer in 0..2147483647"),
    ("--seed", str(2**40), "--seed must be an integer in 0..2147483647"),
    ("--threads", "0", "--threads must be an integer in 1..1024"),
    ("--threads", "5000", "--threads must be an integer in 1..1024"),
    ("--batch-size", "0", "--batch-size must be at least 1"),
    ("--epochs", "0", "--epochs must be at least 1"),
    ("--epochs", str(10**12), "--epochs must be an integer in 1..100,000"),
    ("--batch-size", str(10**9), "--batch-size must be an integer in 1..65,536"),
    ("--width", "64", "over half of the"),
])
def test_train_numeric_flags(tmp_path, capsys, monkeypatch, flag, value, needle):
    monkeypatch.setattr("rlprune_edge.data.load_data", lambda *a, **k: pytest.fail("data loaded before validation"))
    argv = ["train", "--model", "vgg11", "--epochs", "1", "--out", str(tmp_path / "m.pt"), flag, value]
    assert main(argv) == 2
    assert needle in _one_line_error(capsys)
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.hostile("inspect numeric flags out of range (--width nan/inf/1e9, --num-classes 0/10**9)",
         "exit 2 before building the model: names the flag and its valid range")
@pytest.mark.parametrize(("flag", "value", "needle"), [
    ("--width", "nan", "--width must be a number in (0, 64]"),
    ("--width", "inf", "--width must be a number in (0, 64]"),
    ("--width", "1e9", "--width must be a number in (0, 64]"),
    ("--width", "-1", "--width must be a number in (0, 64]"),
    ("--num-classes", "0", "--num-classes must be an integer in 1..100000"),
    ("--num-classes", str(10**9), "--num-classes must be an integer in 1..100000"),
])
def test_inspect_numeric_flags(capsys, flag, value, needle):
    assert main(["inspect", "--model", "vgg11", flag, value]) == 2
    assert needle in _one_line_error(capsys)


@pytest.mark.hostile("a checkpoint whose state_dict holds a sparse, complex or float8 tensor",
                     "exit 2 naming the key and the tensor kind (was: a wrong 'does not match the architecture', or "
                     "silently cast), no torch warning before it")
@pytest.mark.parametrize(("convert", "needle"), [
    (lambda t: t.to_sparse(), "sparse coo tensor"),
    (lambda t: t.to(torch.complex64), "complex64 tensor"),
    (lambda t: t.to(torch.float8_e4m3fn), "float8_e4m3fn tensor"),
])
def test_checkpoint_with_exotic_tensor_kinds(tmp_path, tiny_ckpt, capsys, convert, needle):
    def edit(payload):
        key = next(k for k in payload["state_dict"] if k.endswith("weight"))
        payload["state_dict"][key] = convert(payload["state_dict"][key])

    assert main(["inspect", "--model", str(_crafted(tmp_path, tiny_ckpt, edit))]) == 2
    assert needle in _one_line_error(capsys)


@pytest.mark.hostile("`latency-check --variants 10**20`, `export --verify-images/--calib-images/--test-limit 10**12`",
                     "exit 2 before any fit, load or export: names the flag and its range")
@pytest.mark.parametrize("argv", [
    ["latency-check", "--model", "vgg11", "--variants", str(10**20), "--json", "OUT"],
    ["export", "CKPT", "--profile", "host-cpu", "--verify-images", str(10**12), "--out", "OUT"],
    ["export", "CKPT", "--profile", "host-cpu", "--calib-images", str(10**12), "--out", "OUT"],
    ["export", "CKPT", "--profile", "host-cpu", "--test-limit", str(10**12), "--out", "OUT"],
])
def test_latency_check_and_export_counts_bounded(tmp_path, tiny_ckpt, capsys, monkeypatch, argv):
    monkeypatch.setattr("rlprune_edge.latency.cache.get_or_fit", lambda *a, **k: pytest.fail("fit before validation"))
    out = tmp_path / "out"
    argv = [str(out) if a == "OUT" else str(tiny_ckpt) if a == "CKPT" else a for a in argv]
    assert main(argv) == 2
    assert "must be an integer in" in _one_line_error(capsys)
    assert not out.exists()
