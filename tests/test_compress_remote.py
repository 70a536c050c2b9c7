"""`rlprune-edge compress --profile` against a real sshd on loopback playing the board (issue 6).

Every latency in the search (dense, latency-model fit, each step's real measurement) comes from the
board runner over ssh; the test checks the run completes, reports those measurements, and that the
models really travelled to the board (content-addressed blobs in its work dir).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from rlprune_edge.cli import main
from rlprune_edge.latency import ssh
from rlprune_edge.paths import CACHE_ENV

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sshd_fixture  # noqa: E402

pytestmark = pytest.mark.ssh


@pytest.fixture()
def board(tmp_path):
    if not sshd_fixture.SSHD.exists():
        pytest.skip("/usr/sbin/sshd is absent (apt install openssh-server; tools/setup.sh does it on CI)")
    b = sshd_fixture.start_board(tmp_path / "sshd")
    yield b
    b.stop()


def test_compress_short_search_on_a_remote_board(board, tmp_path, monkeypatch):
    monkeypatch.setenv(ssh.SSH_CONFIG_ENV, str(board.ssh_config))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    work = tmp_path / "board-work"
    prof = board.profile(tmp_path / "board.toml", work_dir=work, runs=6, blocks=2, warmup=2)
    out = tmp_path / "run"
    args = ["compress", "--model", "vgg11", "--width", "0.0625", "--profile", str(prof),
            "--sparsity", "0.3", "--step-ratio", "0.15", "--reward", "latency", "--seed", "1", "--search", "paper",
            "--latency-variants", "2", "--val-size", "64", "--candidates", "2", "--rounds", "1",
            "--kd-images", "64", "--step-kd-batches", "1", "--pareto-test-size", "64", "--test-images", "128",
            "--no-bundle", "--quiet", "--out", str(out)]
    assert main(args) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["profile"] == "fixture-board"
    assert rep["base"]["latency_ms"] > 0 and rep["final"]["latency_ms"] > 0
    assert rep["steps"] and all(s["measured_latency_ms"] > 0 for s in rep["steps"])
    assert rep["final"]["params"] < rep["base"]["params"]
    blobs = list((work / "blobs").glob("*.onnx"))
    # the dense model, the latency-model fit variants and every step's model were sent to the board
    assert len(blobs) >= 3, blobs
