"""Progress in logs: one line per phase when stderr is not a terminal (issue 47)."""

from __future__ import annotations

import io

from rlprune_edge.progress import LineProgress, progress_bar


def test_a_phase_is_one_line_in_a_log():
    log = io.StringIO()
    bar = LineProgress(range(500), desc="epoch 1/3", unit="batch", stream=log)
    for _ in bar:
        bar.set_postfix(loss="0.123")
    bar.close()
    bar.close()  # idempotent
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and "\r" not in log.getvalue()
    assert lines[0].startswith("epoch 1/3: 500/500 batch") and "batch/s" in lines[0] and "loss=0.123" in lines[0]


def test_interim_lines_are_rare_and_carry_an_eta():
    log = io.StringIO()
    bar = LineProgress(total=10, desc="search plans", unit="plan", stream=log, interval_s=0.0)
    bar.update(4)
    bar.close()
    first, last = log.getvalue().splitlines()
    assert "4/10 plan" in first and "ETA" in first
    assert "ETA" not in last


def test_progress_bar_is_plain_lines_when_stderr_is_not_a_terminal(capsys):
    bar = progress_bar(range(3), desc="distill 1/1", unit="batch")  # pytest's captured stderr is no terminal
    assert isinstance(bar, LineProgress)
    assert list(bar) == [0, 1, 2]
    bar.close()
    assert capsys.readouterr().err.count("\n") == 1
