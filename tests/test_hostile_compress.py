"""`compress --out` never loses what was there; bad flag values are refused before any work (issue 17)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from rlprune_edge.cli import main
from rlprune_edge.report import finite_json
from rlprune_edge.rundir import MARKER, RunDir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import tiny_profile  # noqa: E402

PROFILE = tiny_profile("tiny-cpu")
TINY = ["--model", "vgg11", "--width", "0.0625", "--latency-variants", "2", "--kd-images", "128",
        "--pareto-test-size", "64", "--test-images", "200", "--no-bundle", "--quiet", "--probe-batches", "2",
        "--screen-batches", "1", "--select-size", "64", "--confirm-size", "64", "--per-round", "2",
        "--candidates", "2", "--kd-epochs", "1", "--device", "cpu"]


@pytest.fixture()
def prof(tmp_path, monkeypatch):
    monkeypatch.setenv("RLPRUNE_EDGE_CACHE", str(tmp_path / "cache"))
    p = tmp_path / "tiny.toml"
    p.write_text(PROFILE)
    return str(p)


def _old_run(path):
    """A finished run directory of ours, with recognisable contents."""
    (path / "search").mkdir(parents=True)
    (path / MARKER).write_text('{"tool": "rlprune-edge compress"}\n')
    (path / "report.json").write_text("old report")
    (path / "search" / "searched.pt").write_bytes(b"old model")
    (path / "search" / "plan_state.json").write_text("old state")
    return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file() and p.name != ".lock"}


def _same(path, before):
    return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file() and p.name != ".lock"} == before


def _siblings(tmp_path, name):
    return [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{name}.")]


@pytest.mark.hostile("`compress --out DIR` into a non-empty directory it did not create",
                     "exit 2 at once: names a few of its files and says to give a new or empty directory or --resume; "
                     "nothing in DIR touched")
def test_foreign_non_empty_out_is_refused_untouched(tmp_path, prof, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    (out / "search").mkdir()  # even a folder named like ours
    assert main(["compress", *TINY, "--profile", prof, "--sparsity", "0.3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not a compress run directory" in err and "notes.txt" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "search"]
    assert (out / "notes.txt").read_text() == "precious" and not list((out / "search").iterdir())


@pytest.mark.hostile("a fresh run (no --resume) into a finished run directory that then fails or is interrupted",
                     "the old run stays as it was: the new run worked in a temporary sibling, removed on failure")
def test_failed_fresh_run_leaves_the_old_run_intact(tmp_path, prof, monkeypatch):
    out = tmp_path / "run"
    before = _old_run(out)
    import rlprune_edge.stages as stages

    def interrupted(job, announce):
        (job.state_dir / "state.json").write_text("half-written new state")
        raise KeyboardInterrupt

    monkeypatch.setattr(stages, "search_distil_report", interrupted)
    assert main(["compress", *TINY, "--profile", prof, "--sparsity", "0.3", "--seed", "1", "--out", str(out)]) == 130
    assert _same(out, before) and _siblings(tmp_path, "run") == []


@pytest.mark.hostile("a fresh run (no --resume) into a finished run directory that succeeds",
                     "the new run replaces the old one only at its end; no temporary directory is left")
def test_successful_fresh_run_replaces_the_old_run(tmp_path, prof):
    out = tmp_path / "run"
    _old_run(out)
    assert main(["compress", *TINY, "--profile", prof, "--sparsity", "0.3", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["final"]["params"] < rep["base"]["params"]
    assert (out / "search" / "searched.pt").read_bytes() != b"old model"
    assert _siblings(tmp_path, "run") == []


@pytest.mark.hostile("two `compress` runs on the same --out at once",
                     "the second exits 2 at once (advisory lock on OUT/.lock, names the holder's pid); the first "
                     "run's state is untouched")
def test_second_run_on_a_locked_out_is_refused(tmp_path, prof, capsys):
    out = tmp_path / "busy"
    first = RunDir.open(out, resume=False)  # what a running compress holds
    try:
        (out / "search").mkdir()
        (out / "search" / "plan_state.json").write_text("live state")
        assert main(["compress", *TINY, "--profile", prof, "--sparsity", "0.3", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "in use by another compress run" in err and "pid" in err
        assert (out / "search" / "plan_state.json").read_text() == "live state"
    finally:
        first.release()


@pytest.mark.parametrize(("flags", "needle"), [
    (["--seed", "-1"], "--seed -1"),
    (["--kd-lr", "nan"], "--kd-lr nan"),
    (["--kd-lr", "-0.1"], "--kd-lr -0.1"),
    (["--width", "inf"], "--width inf"),
    (["--latency-variants", "0"], "--latency-variants 0"),
    (["--stop-after", "0"], "--stop-after 0"),
    (["--test-images", "-5"], "--test-images -5"),
])
@pytest.mark.hostile("`compress` with --seed -1, --kd-lr nan, --width inf, --latency-variants 0, --stop-after 0, "
                     "negative image counts",
                     "exit 2 before anything is loaded or written, naming the flag and a valid example")
def test_bad_flag_values_exit_2_before_any_work(tmp_path, prof, capsys, flags, needle):
    out = tmp_path / "never"
    assert main(["compress", *TINY, "--profile", prof, "--sparsity", "0.3", *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.hostile("`compress --target-latency 1e9ms` (slower than the dense model already is)",
                     "exit 2: the target is not below the dense model's measured latency, nothing to prune; "
                     "no output directory left behind")
def test_target_above_dense_latency_is_refused(tmp_path, prof, capsys):
    out = tmp_path / "never"
    assert main(["compress", *TINY, "--profile", prof, "--target-latency", "1e9ms", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nothing to prune" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.hostile("a NaN or infinite figure reaching report.json",
                     "written as null: report.json is always strict JSON (no bare NaN)")
def test_report_json_is_strict_json():
    doc = finite_json({"a": math.nan, "b": [1.0, math.inf, {"c": -math.inf}], "d": 2})
    assert doc == {"a": None, "b": [1.0, None, {"c": None}], "d": 2}
    json.dumps(doc, allow_nan=False)


@pytest.mark.hostile("the paper search's progress bar (its total grew every step: 5/6, 5/7, 6/7, 6/8)",
                     "a bar from dense to the goal (measured ratio, or sparsity) with the step in its text; it "
                     "never moves backwards in total and shows 100% only when the target is reached")
def test_search_progress_is_measured_against_the_goal():
    from rlprune_edge.search.loop import Target, _progress

    lat = Target.parse_latency("0.5x")
    seq = [_progress(lat, r, 0.0, 0.5, 1.0) for r in (1.0, 0.9, 0.75, 0.6, 0.5, 0.4)]
    assert seq[0] == 0.0 and seq[2] == pytest.approx(0.5) and all(a <= b for a, b in zip(seq, seq[1:], strict=False))
    assert max(seq) == 0.99  # 100% is shown only once the loop says the target is met
    sp = Target.sparsity(0.4)
    assert _progress(sp, 0.7, 0.2, None, 1.0) == pytest.approx(0.5)


@pytest.mark.hostile("an output write failing mid-run (disk full, read-only file system, permissions)",
                     "exit 2 naming the path and the system's reason, never \"unexpected failure\"; the run "
                     "directory rules keep what was there")
def test_an_os_error_on_an_output_is_exit_2_naming_the_path(tmp_path, prof, monkeypatch, capsys):
    import errno

    import rlprune_edge.stages as stages

    def disk_full(job, announce):
        raise OSError(errno.ENOSPC, "No space left on device", str(job.out / "model.pt"))

    monkeypatch.setattr(stages, "search_distil_report", disk_full)
    out = tmp_path / "full"
    assert main(["compress", *TINY, "--profile", prof, "--sparsity", "0.3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "model.pt" in err and "unexpected" not in err
