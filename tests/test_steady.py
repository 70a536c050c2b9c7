"""The steady-speed gate: decisions read sessions run at the machine's usual fast speed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rlprune_edge.latency import campaign
from rlprune_edge.latency.steady import SteadyGate
from rlprune_edge.profiles import load_profile


def test_reference_is_a_low_percentile_and_steady_within_tolerance() -> None:
    gate = SteadyGate(tolerance=0.25)
    assert gate.reference_ms is None and gate.steady(5.0)  # nothing seen: every session counts
    for d in [0.75, 0.36, 0.35, 0.74, 0.76, 0.35]:
        gate.observe(d)
    assert 0.35 <= gate.reference_ms < 0.37
    assert gate.steady(0.40) and not gate.steady(0.74)
    assert gate.choose([0.74, 0.36, 0.75, 0.35], wanted=3) == [1, 3]
    # none steady: the fastest `wanted` sessions
    assert gate.choose([0.90, 0.80, 0.95], wanted=2) == [1, 0]


def test_reference_persists_per_profile_and_dense_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RLPRUNE_EDGE_CACHE", str(tmp_path / "cache"))
    profile = load_profile("host-cpu")
    dense = tmp_path / "dense.onnx"
    dense.write_bytes(b"model one")
    gate = SteadyGate.for_artifact(profile, dense)
    assert gate.store is not None and gate.reference_ms is None
    gate.observe(0.5)
    gate.observe(0.4)
    gate.save()
    again = SteadyGate.for_artifact(profile, dense)
    assert again.history == [0.5, 0.4]
    other = tmp_path / "other.onnx"
    other.write_bytes(b"model two")
    assert SteadyGate.for_artifact(profile, other).history == []  # another model: its own reference
    gate.store.write_text("{not json")
    assert SteadyGate.for_artifact(profile, dense).history == []  # unreadable: start afresh
    assert SteadyGate.for_artifact(profile, object()).store is None  # a module, not a file: this run only


def _scripted_sessions(monkeypatch, sessions: list[tuple[float, float]]) -> list[int]:
    """ratios_over_windows replaced by a script of (dense ms, ratio) per session; returns a call counter."""
    calls = [0]

    def fake(backend, profile, dense_path, paths, *, runs, warmup, rounds):
        dense_ms, ratio = sessions[calls[0]]
        calls[0] += 1
        return [ratio] * len(paths), dense_ms, [[ratio] * len(paths)]

    monkeypatch.setattr(campaign, "ratios_over_windows", fake)
    return calls


def test_robust_ratios_measures_again_in_a_slow_spell_and_uses_steady_sessions(monkeypatch) -> None:
    profile = load_profile("host-cpu")
    gate = SteadyGate(extra_sessions=3, pause_s=0.0, history=[0.35] * 10)  # fast state seen before
    # a slow spell (dense 0.75 ms, small model reads low), then the machine is back at its speed
    calls = _scripted_sessions(monkeypatch, [(0.75, 0.49), (0.76, 0.50), (0.36, 0.54), (0.35, 0.55),
                                             (0.35, 0.54), (0.9, 0.1)])
    ratios, dense_ms, per = campaign.robust_ratios(None, profile, "dense", ["plan"], sessions=3, pause_s=0.0, gate=gate)
    assert calls[0] == 5  # 3 sessions, then 2 more until 3 ran at the steady speed
    assert ratios == [pytest.approx(0.54)] and dense_ms == pytest.approx(0.35)
    assert len(per) == 3 and gate.last["steady"] == 3 and gate.last["used"] == 3 and gate.last["sessions"] == 5


def test_robust_ratios_stops_after_its_extra_sessions_and_uses_the_fastest(monkeypatch) -> None:
    profile = load_profile("host-cpu")
    gate = SteadyGate(extra_sessions=2, pause_s=0.0, history=[0.35] * 50)
    calls = _scripted_sessions(monkeypatch, [(0.80, 0.50), (0.75, 0.52), (0.90, 0.48), (0.70, 0.53), (0.85, 0.49)])
    ratios, dense_ms, _ = campaign.robust_ratios(None, profile, "dense", ["plan"], sessions=3, pause_s=0.0, gate=gate)
    assert calls[0] == 5 and gate.last["steady"] == 0
    assert ratios == [pytest.approx(0.52)] and dense_ms == pytest.approx(0.75)  # the 3 fastest: 0.70, 0.75, 0.80


def test_robust_ratios_without_gate_is_unchanged(monkeypatch) -> None:
    profile = load_profile("host-cpu")
    calls = _scripted_sessions(monkeypatch, [(0.75, 0.49), (0.36, 0.54), (0.35, 0.55)])
    ratios, dense_ms, per = campaign.robust_ratios(None, profile, "dense", ["plan"], sessions=3, pause_s=0.0)
    assert calls[0] == 3 and ratios == [pytest.approx(0.54)] and dense_ms == pytest.approx(0.36) and len(per) == 3


def test_bisect_uniform_with_a_gate_reads_like_compress(monkeypatch, tmp_path) -> None:
    """The Torch-Pruning baseline, given a gate, is measured with compress's statistic (robust_ratios)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torch_pruning")
    from torch import nn

    from rlprune_edge import baselines

    seen = []

    def fake_robust(backend, profile, dense_path, paths, **kw):
        seen.append(kw.get("gate"))
        return [0.4], 1.0, [[0.4]]

    monkeypatch.setattr(campaign, "robust_ratios", fake_robust)
    backend = SimpleNamespace(takes_modules=False)
    model = nn.Sequential(nn.Conv2d(1, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    monkeypatch.setattr("rlprune_edge.latency.artifacts.materialize", lambda b, m, p, s, batch: p)
    calib = [(torch.randn(4, 1, 8, 8), torch.randint(0, 4, (4,)))]
    gate = SteadyGate()
    res = baselines.bisect_uniform(model, torch.zeros(1, 1, 8, 8), 0.5, calib, backend, load_profile("host-cpu"),
                                   "dense.onnx", tmp_path, iterations=2, gate=gate)
    assert seen and all(g is gate for g in seen)
    assert res.reached and res.measured_ratio == pytest.approx(0.4)


def test_an_unwritable_cache_keeps_the_gate_for_this_run(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    gate = SteadyGate(store=blocker / "sub" / "times.json")
    gate.observe(0.3)
    gate.save()  # the parent cannot be created: no error, and no retry on every decision
    assert gate.store is None and gate.history == [0.3]
