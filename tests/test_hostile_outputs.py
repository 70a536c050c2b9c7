"""Nothing the user had is lost (issue 46): every command's output follows one rule (rlprune_edge.outputs).

Each test runs the real command line and checks the refusal (exit 2, one sentence) and that the
special file, the link's target or the user's file is byte-identical afterwards. The last test
runs every command's output flag against a directory of traps.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
import torch

from rlprune_edge.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import needs_fashion_mnist  # noqa: E402
from helpers import one_line_error as _one_line_error  # noqa: E402
from helpers import tiny_profile  # noqa: E402

VICTIM = b"the user's precious file\n"
ARCH = ["--model", "vgg11", "--width", "0.0625"]
TINY_COMPRESS = [*ARCH, "--latency-variants", "2", "--kd-images", "128", "--pareto-test-size", "64",
                 "--test-images", "200", "--no-bundle", "--quiet", "--probe-batches", "2", "--screen-batches", "1",
                 "--select-size", "64", "--confirm-size", "64", "--per-round", "2", "--candidates", "2",
                 "--kd-epochs", "1", "--device", "cpu"]


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root` (links not followed): kind, permission bits, and content or link target."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                body: object = p.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(p)
            else:
                body = None
            out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), body)
    return out


def _device(path: Path) -> bool:
    """A character device like /dev/null at `path` (needs CAP_MKNOD; False when not allowed)."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, OSError):
        return False
    return True


@pytest.fixture
def weights(tmp_path) -> Path:
    """A user's state_dict file for vgg11 at width 0.0625, with extra training state beside it."""
    from rlprune_edge.models import build_model

    torch.manual_seed(0)
    path = tmp_path / "user_weights.pt"
    torch.save({"state_dict": build_model("vgg11", 0.0625, 10).state_dict(), "optimizer": {"lr": 0.1}}, path)
    return path


@pytest.fixture
def prof(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("RLPRUNE_EDGE_CACHE", str(tmp_path / "cache"))
    p = tmp_path / "tiny.toml"
    p.write_text(tiny_profile("tiny"))
    return str(p)


def _import(weights: Path, out: Path, *extra: str) -> int:
    return main(["import", str(weights), *ARCH, "--limit", "64", "--out", str(out), *extra])


# --- file outputs: special files, links, the user's files -------------------------------------------

@pytest.mark.hostile("`import`/`train --out` or `latency-check --json` naming a character device (as root: "
                     "`--out /dev/null`, a node made with mknod)",
                     "exit 2 at once: '--out X is a character device; rlprune-edge writes only regular files'; the "
                     "device node is still there, unchanged")
def test_file_outputs_onto_a_device_are_refused(tmp_path, weights, capsys):
    node = tmp_path / "null"
    if not _device(node):
        pytest.skip("mknod is not permitted here (not root)")
    before = _snapshot(tmp_path)
    assert _import(weights, node) == 2
    assert "is a character device" in _one_line_error(capsys)
    assert main(["train", *ARCH, "--epochs", "1", "--out", str(node)]) == 2
    assert "is a character device" in _one_line_error(capsys)
    assert main(["latency-check", *ARCH, "--json", str(node)]) == 2
    assert "is a character device" in _one_line_error(capsys)
    assert _snapshot(tmp_path) == before and stat.S_ISCHR(os.lstat(node).st_mode)


@pytest.mark.hostile("`import`/`train --out` or `latency-check --json` naming a FIFO",
                     "exit 2 at once without opening it (no hang): 'is a named pipe (FIFO)'; the FIFO stays")
def test_file_outputs_onto_a_fifo_are_refused(tmp_path, weights, capsys):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    for argv in (["import", str(weights), *ARCH, "--out", str(fifo)],
                 ["train", *ARCH, "--epochs", "1", "--out", str(fifo)],
                 ["latency-check", *ARCH, "--json", str(fifo)]):
        assert main(argv) == 2
        assert "is a named pipe (FIFO)" in _one_line_error(capsys)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.hostile("`import --out LINK` / `train --out LINK` where LINK is a symbolic link to another file",
                     "exit 2: 'is a symbolic link (to ...); rlprune-edge never writes through links'; the link "
                     "and its target are byte-identical")
def test_file_outputs_through_a_symlink_are_refused(tmp_path, weights, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)
    link = tmp_path / "out.pt"
    link.symlink_to(victim)
    assert _import(weights, link) == 2
    assert "is a symbolic link" in _one_line_error(capsys)
    assert main(["train", *ARCH, "--epochs", "1", "--out", str(link)]) == 2
    assert "is a symbolic link" in _one_line_error(capsys)
    assert victim.read_bytes() == VICTIM and link.is_symlink()


@pytest.mark.hostile("`import --out` naming its own input file (a training checkpoint with optimizer state)",
                     "exit 2, even with --force: '--out X is the input file ...; give a new file name'; the input is "
                     "byte-identical")
def test_import_onto_its_own_input_is_refused(weights, capsys):
    before = weights.read_bytes()
    for extra in ((), ("--force",)):
        assert _import(weights, weights, *extra) == 2
        assert "is the input file" in _one_line_error(capsys)
    assert weights.read_bytes() == before


@pytest.mark.hostile("`import`/`train --out` or `latency-check --json` onto an existing file that is not ours",
                     "exit 2 before any work: 'exists and is not an rlprune-edge checkpoint; choose a new file name, "
                     "or add --force'; the file is byte-identical")
def test_outputs_onto_a_foreign_file_are_refused(tmp_path, weights, capsys):
    user = tmp_path / "notes.pt"
    user.write_bytes(VICTIM)
    assert _import(weights, user) == 2
    assert "is not an rlprune-edge checkpoint" in _one_line_error(capsys)
    assert main(["train", *ARCH, "--epochs", "1", "--out", str(user)]) == 2
    assert "add --force" in _one_line_error(capsys)
    assert main(["latency-check", *ARCH, "--json", str(user)]) == 2
    assert "is not an rlprune-edge latency-check result" in _one_line_error(capsys)
    assert user.read_bytes() == VICTIM


@needs_fashion_mnist
def test_ours_is_replaced_foreign_only_with_force_and_next_command_is_quoted(tmp_path, weights, capsys):
    """A checkpoint of ours is replaced without --force; a foreign file only with it; paths with spaces quoted."""
    out = tmp_path / "my models" / "m.pt"
    assert _import(weights, out) == 0
    assert "next: rlprune-edge compress --model '" in capsys.readouterr().out
    first = out.read_bytes()
    assert _import(weights, out) == 0  # ours: replaced in place
    capsys.readouterr()
    assert out.read_bytes() != b"" and first[:2] == out.read_bytes()[:2]
    user = tmp_path / "notes.pt"
    user.write_bytes(VICTIM)
    assert _import(weights, user, "--force") == 0
    assert user.read_bytes() != VICTIM
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp file left


@needs_fashion_mnist
@pytest.mark.hostile("`import` whose weights are finite but give non-finite outputs, onto an existing good checkpoint",
                     "exit 2 with one sentence before anything is written: the existing checkpoint is byte-identical")
def test_failed_import_keeps_the_existing_checkpoint(tmp_path, weights, capsys):
    good = tmp_path / "good.pt"
    assert _import(weights, good) == 0
    capsys.readouterr()
    before = good.read_bytes()
    state = torch.load(weights, weights_only=True)["state_dict"]
    state = {k: (v * 1e30 if v.is_floating_point() and k.endswith("weight") else v) for k, v in state.items()}
    bad = tmp_path / "overflow.pt"
    torch.save(state, bad)
    assert _import(bad, good) == 2
    _one_line_error(capsys)
    assert good.read_bytes() == before


# --- directory outputs: compress --out, export --out ---------------------------------------------------

@pytest.mark.hostile("`compress --out DIR` where DIR/.lock or DIR/.rlprune-edge-run is a symbolic link (or a hard "
                     "link) to another file",
                     "exit 2 before anything is opened: names the entry and what it is; the link target is "
                     "byte-identical")
def test_compress_control_files_that_are_links_are_refused(tmp_path, prof, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)
    for name, make in ((".lock", "symlink"), (".rlprune-edge-run", "symlink"), (".lock", "hardlink")):
        out = tmp_path / f"run-{name}-{make}"
        out.mkdir()
        if make == "symlink":
            (out / name).symlink_to(victim)
        else:
            os.link(victim, out / name)
        assert main(["compress", *TINY_COMPRESS, "--profile", prof, "--sparsity", "0.3", "--out", str(out)]) == 2
        err = _one_line_error(capsys)
        assert name in err and ("symbolic link" in err or "hard links" in err), err
        assert victim.read_bytes() == VICTIM
        assert sorted(p.name for p in out.iterdir()) == [name]


@pytest.mark.hostile("`compress --out DIR` where DIR holds the user's report.json and a search/ folder (no marker "
                     "of ours)",
                     "exit 2: DIR is not a compress run directory (only a marker file a run wrote makes it one); "
                     "nothing in it changes, its permissions included")
def test_compress_foreign_report_and_search_is_not_ours(tmp_path, prof, capsys):
    out = tmp_path / "results"
    (out / "search").mkdir(parents=True)
    (out / "report.json").write_text('{"mine": true}')
    (out / "notes.txt").write_bytes(VICTIM)
    os.chmod(out, 0o755)
    before = _snapshot(tmp_path)
    assert main(["compress", *TINY_COMPRESS, "--profile", prof, "--sparsity", "0.3", "--out", str(out)]) == 2
    assert "not a compress run directory" in _one_line_error(capsys)
    assert _snapshot(tmp_path) == before


@pytest.mark.hostile("a fresh `compress` into a run directory of ours that also holds the user's own files, or "
                     "whose --model lies inside it",
                     "exit 2: names the files no run writes (or the input) that replacing the directory would "
                     "delete; nothing changes")
def test_compress_will_not_replace_a_run_holding_user_files(tmp_path, prof, capsys):
    out = tmp_path / "run"
    (out / "search").mkdir(parents=True)
    (out / ".rlprune-edge-run").write_text('{"tool": "rlprune-edge compress"}\n')
    (out / "report.json").write_text("{}")
    (out / "thesis.tex").write_bytes(VICTIM)
    before = _snapshot(tmp_path)
    assert main(["compress", *TINY_COMPRESS, "--profile", prof, "--sparsity", "0.3", "--out", str(out)]) == 2
    assert "thesis.tex" in _one_line_error(capsys)
    assert _snapshot(tmp_path) == before
    (out / "thesis.tex").unlink()
    (out / "model.pt").write_bytes(VICTIM)
    before = _snapshot(tmp_path)
    argv = ["compress", *TINY_COMPRESS, "--profile", prof, "--sparsity", "0.3", "--out", str(out)]
    argv[argv.index("vgg11")] = str(out / "model.pt")
    assert main(argv) == 2
    assert "holds the input" in _one_line_error(capsys)
    assert _snapshot(tmp_path) == before


@pytest.mark.hostile("a fresh `compress` replacing an earlier run directory of ours (0755)",
                     "the new directory keeps the old one's permissions (it was left 0700 by the temporary "
                     "directory it was built in)")
def test_replaced_run_directory_keeps_its_permissions(tmp_path):
    from rlprune_edge.rundir import RunDir

    out = tmp_path / "run"
    first = RunDir.open(out, resume=False)
    first.commit()
    os.chmod(out, 0o751)
    (out / "report.json").write_text("{}")
    second = RunDir.open(out, resume=False)
    assert second.replaces
    (second.work / "report.json").write_text('{"new": 1}')
    second.commit()
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o751 and (out / "report.json").read_text() == '{"new": 1}'


def _fake_bundle(path: Path, manifest: dict | None) -> None:
    path.mkdir()
    (path / "model.onnx").write_bytes(b"onnx")
    if manifest is not None:
        (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.hostile("`export --out DIR` where DIR holds a manifest.json export did not write, or a bundle of ours "
                     "plus files the manifest does not list",
                     "exit 2 before loading anything: not a bundle of ours / names the unlisted files; nothing "
                     "in DIR changes")
def test_export_replaces_only_its_own_bundles(tmp_path, capsys):
    from rlprune_edge.checkpoint import resolve_model, save_checkpoint

    ckpt = save_checkpoint(tmp_path / "m.pt", *resolve_model("vgg11", width=0.0625))
    foreign = tmp_path / "web"
    _fake_bundle(foreign, {"name": "my web app", "version": 3})
    ours = tmp_path / "bundle"
    _fake_bundle(ours, {"tool": "rlprune-edge export", "files": {"model.onnx": {}}})
    (ours / "calibration_notes.txt").write_bytes(VICTIM)
    before = _snapshot(tmp_path)
    assert main(["export", str(ckpt), "--profile", "host-cpu", "--out", str(foreign)]) == 2
    assert "not an rlprune-edge bundle" in _one_line_error(capsys)
    assert main(["export", str(ckpt), "--profile", "host-cpu", "--out", str(ours)]) == 2
    assert "calibration_notes.txt" in _one_line_error(capsys)
    assert _snapshot(tmp_path) == before


# --- every command against a directory of traps --------------------------------------------------------

def _traps(root: Path, victim: Path) -> list[Path]:
    """Outputs no command may write: links to a victim, a FIFO, a device, folders that only look like ours."""
    traps = root / "traps"
    traps.mkdir()
    (traps / "link.pt").symlink_to(victim)
    (traps / "dangling.pt").symlink_to(root / "nowhere" / "x.pt")
    os.mkfifo(traps / "fifo.pt")
    _device(traps / "null.pt")
    (traps / "hardlink.pt").hardlink_to(victim)
    (traps / "user.json").write_bytes(VICTIM)
    (traps / "linkdir").symlink_to(victim.parent, target_is_directory=True)
    run = traps / "foreign_run"
    (run / "search").mkdir(parents=True)
    (run / "report.json").write_text("{}")
    _fake_bundle(traps / "foreign_bundle", {"files": {}})
    locked = traps / "locked"
    locked.mkdir()
    (locked / ".lock").symlink_to(victim)
    marked = traps / "marked"
    marked.mkdir()
    (marked / ".rlprune-edge-run").symlink_to(victim)
    return sorted(traps.iterdir())


@pytest.mark.hostile("every command's output flag (`train`/`import --out`, `latency-check --json`, `compress`/"
                     "`export --out`) against a directory of traps: links to a victim file and folder, a dangling "
                     "link, a hard link, a FIFO, a device node, the user's file, a foreign report.json + search/, a "
                     "manifest.json folder, .lock and marker links",
                     "exit 2 with one sentence for every pair; nothing outside the run's own files changes (every "
                     "entry's kind, permissions and bytes, and the victim's)")
def test_every_output_against_a_directory_of_traps(tmp_path, weights, prof, capsys):
    from rlprune_edge.checkpoint import resolve_model, save_checkpoint

    ckpt = save_checkpoint(tmp_path / "m.pt", *resolve_model("vgg11", width=0.0625))
    victims = tmp_path / "victims"
    victims.mkdir()
    victim = victims / "victim.txt"
    victim.write_bytes(VICTIM)
    traps = _traps(tmp_path, victim)
    commands = {
        "train": lambda out: ["train", *ARCH, "--epochs", "1", "--limit", "64", "--quiet", "--out", out],
        "import": lambda out: ["import", str(weights), *ARCH, "--limit", "64", "--out", out],
        "latency-check": lambda out: ["latency-check", *ARCH, "--variants", "1", "--fit-variants", "2",
                                      "--json", out],
        "compress": lambda out: ["compress", *TINY_COMPRESS, "--profile", prof, "--sparsity", "0.3", "--out", out],
        "export": lambda out: ["export", str(ckpt), "--profile", "host-cpu", "--no-measure", "--out", out],
    }
    before = _snapshot(tmp_path)
    for command, argv in commands.items():
        for trap in traps:
            code = main(argv(str(trap)))
            err = capsys.readouterr().err
            assert code == 2, f"{command} --out {trap.name}: exit {code}: {err}"
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, f"{command} {trap.name}: {err}"
            assert _snapshot(tmp_path) == before, f"{command} --out {trap.name} changed something"
