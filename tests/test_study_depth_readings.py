"""benchmarks/studies/study_depth_readings.py: which recorded plans it rebuilds and what it compares them with (no timing here)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import load_study  # noqa: E402


def _state():
    return {
        "measurements": [
            {"try": 0, "repeat": False, "keep": [16, 16], "ratio": 0.6},
            {"try": 1, "repeat": False, "keep": [16, 8], "ratio": 0.55},  # the fitted uniform plan: the last one
            {"try": 0, "repeat": False, "keep": [32, 16], "ratio": 0.62, "removed": ["b2", "b1"]},
            {"try": 0, "repeat": True, "keep": [32, 16], "ratio": 0.61, "removed": ["b2", "b1"]},  # a repeat: no new plan
            {"try": 1, "repeat": False, "keep": [24, 16], "ratio": 0.56, "removed": ["b2", "b1"]},
        ],
        "depth_calibration": [
            {"uniform_ratio": 0.5, "plans": [{"removed": ["b1"], "keep": [16, 16], "ratio": 0.55},
                                             {"removed": ["b1", "b2"], "keep": [32, 32], "ratio": 0.6}]},
            {"uniform_ratio": 0.4, "plans": [{"removed": ["b1", "b2"], "keep": [24, 24], "ratio": 0.42}]},
        ],
    }


def test_the_replayed_entry_and_the_winner_beside_the_uniform_plan_and_its_last_calibration_reading():
    replay, recorded, winners = load_study("study_depth_readings")._plans(_state(), 0)
    assert replay == {"uniform": ([16, 8], []), "-1": ([16, 16], ["b1"]), "-2": ([32, 32], ["b1", "b2"])}
    assert recorded["uniform"] == 1.0 and abs(recorded["-1"] - 1.1) < 1e-12 and abs(recorded["-2"] - 1.2) < 1e-12
    # the winner's removal set is matched in any order; its last calibration reading is entry 1's
    assert winners == {"uniform": ([16, 8], []), "calibration set": ([24, 24], ["b1", "b2"]),
                       "winner fit try 0": ([32, 16], ["b2", "b1"]), "winner fit try 1": ([24, 16], ["b2", "b1"])}


def test_a_missing_run_or_entry_is_one_sentence_and_exit_2(tmp_path, capsys):
    import json

    tool = load_study("study_depth_readings")
    ckpt = tmp_path / "dense.pt"
    ckpt.write_bytes(b"")
    assert tool.main(["--run", str(tmp_path / "nowhere"), "--model", str(ckpt)]) == 2
    assert "plan_state.json does not exist" in capsys.readouterr().err
    (tmp_path / "run" / "search").mkdir(parents=True)
    (tmp_path / "run" / "search" / "plan_state.json").write_text(json.dumps(_state()))
    assert tool.main(["--run", str(tmp_path / "run"), "--model", str(ckpt), "--entry", "5"]) == 2
    assert "holds 2 depth-calibration entries" in capsys.readouterr().err
