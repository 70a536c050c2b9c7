"""Latency model: keep->channel maps, slot attribution, alignment steps, correction, persistence, cache."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlprune_edge.latency import cache
from rlprune_edge.latency.model import LatencyModel, random_keep
from rlprune_edge.latency.slots import fit_dim_map, slot_feature, slot_times
from rlprune_edge.runtimes.backend import LayerTime, Measurement


def test_fit_dim_map_single_group_scaled_and_sum():
    keeps = [{"a": 8, "b": 16}, {"a": 5, "b": 9}, {"a": 7, "b": 3}, {"a": 2, "b": 11}]
    names = ["a", "b"]
    assert fit_dim_map([8, 5, 7, 2], keeps, names).coefs == {"a": 1.0}
    assert fit_dim_map([3, 3, 3, 3], keeps, names).const == 3.0
    flat = fit_dim_map([64, 40, 56, 16], keeps, names)  # Flatten of a 2x4 map
    assert flat.coefs == {"a": 8.0} and flat.const == 0.0
    concat = fit_dim_map([24 + 4, 14 + 4, 10 + 4, 13 + 4], keeps, names)  # concat of a, b and 4 fixed channels
    assert concat.const == 4.0 and concat.coefs == {"a": 1.0, "b": 1.0}
    assert concat({"a": 1, "b": 1}) == 6.0
    assert fit_dim_map([1, 7, 2, 9], keeps, names) is None


def test_slot_feature_rounds_to_runtime_blocks():
    conv = {"op": "Conv", "groups": 1, "k": 9, "hw_out": 16, "cin": 16}
    assert slot_feature(conv, 13, 17) == 24 * 16 * 9 * 16  # out to 8, in to 4
    assert slot_feature(conv, 16, 24) == slot_feature(conv, 13, 17)
    assert slot_feature(conv, 13, 17, align=False) == 17 * 13 * 9 * 16
    dw = {"op": "Conv", "groups": -1, "k": 9, "hw_out": 16, "cin": 16}
    assert slot_feature(dw, 13, 13) == 16 * 9 * 16


def test_slot_times_charges_layout_nodes_to_neighbours():
    layers = [
        LayerTime("ReorderInput", "ReorderInput", 0.1, []),
        LayerTime("x_nchwc", "Conv", 1.0, ["conv1", "relu1"]),
        LayerTime("ReorderOutput", "ReorderOutput", 0.2, []),
        {"name": "pool", "op": "MaxPool", "median_ms": 0.3, "onnx_nodes": ["pool"]},
    ]
    t = slot_times(layers, {"conv1"})
    assert t == pytest.approx({"conv1": 1.3, "pool": 0.3})


def _synthetic(keeps, channels, step_cost):
    """Two convs a->b->c; true time = 0.05 + step_cost * aligned work; per-variant samples."""
    samples = []
    for k in keeps:
        full = {g: k.get(g, c) for g, c in channels.items()}
        dims = {
            "conv1": {"op": "Conv", "cin": 3, "cout": full["a"], "groups": 1, "k": 9, "hw_out": 64, "hw_in": 64},
            "conv2": {"op": "Conv", "cin": full["a"], "cout": full["b"], "groups": 1, "k": 9, "hw_out": 64, "hw_in": 64},
            "pool": {"op": "GlobalAveragePool", "cin": full["b"], "cout": full["b"], "groups": 1, "k": 1, "hw_out": 1,
                     "hw_in": 64},
        }
        times = {}
        for n, d in dims.items():
            times[n] = 0.05 + step_cost * slot_feature(d, d["cin"], d["cout"])
        samples.append((full, dims, times))
    return samples


def test_fit_captures_alignment_steps_exactly():
    channels = {"a": 32, "b": 64}
    rng = np.random.default_rng(0)
    keeps = [{}] + [{"a": int(rng.integers(4, 33)), "b": int(rng.integers(8, 65))} for _ in range(6)]
    samples = _synthetic(keeps, channels, 1e-5)
    dense = sum(samples[0][2].values())
    lm = LatencyModel.fit_from_profiles("p", "h", channels, samples, dense_ms=dense)
    assert lm.predict({}) == pytest.approx(dense)
    # a step: 21 and 24 channels of `a` cost the same (out rounded to 8, in to 4); 25 costs more
    t21, t24, t25 = (lm.predict({"a": a, "b": 40}) for a in (21, 24, 25))
    assert t21 == pytest.approx(t24) and t25 > t24
    for a, b in [(9, 13), (30, 50), (21, 64)]:
        truth = sum(_synthetic([{"a": a, "b": b}], channels, 1e-5)[0][2].values())
        assert lm.predict({"a": a, "b": b}) == pytest.approx(truth, rel=1e-6)
    assert lm.predict_ratio({"a": 8, "b": 8}) < 0.5


def test_correct_is_multiplicative_ema_and_rejects_garbage():
    channels = {"a": 32, "b": 64}
    samples = _synthetic([{}, {"a": 8, "b": 16}, {"a": 20, "b": 40}], channels, 1e-5)
    lm = LatencyModel.fit_from_profiles("p", "h", channels, samples, dense_ms=sum(samples[0][2].values()))
    k = {"a": 16, "b": 32}
    before = lm.predict(k)
    lm.correct(k, before * 2.0)
    assert lm.predict(k) == pytest.approx(before * 2.0)
    lm.correct(k, before * 2.0 * 1.21)  # EMA: moves halfway in log space
    assert lm.predict(k) == pytest.approx(before * 2.0 * 1.1, rel=1e-6)
    with pytest.raises(ValueError):
        lm.correct(k, -1.0)
    with pytest.raises(ValueError):
        lm.correct(k, math.nan)


def test_save_load_roundtrip(tmp_path):
    channels = {"a": 32, "b": 64}
    samples = _synthetic([{}, {"a": 8, "b": 16}, {"a": 20, "b": 40}], channels, 1e-5)
    lm = LatencyModel.fit_from_profiles("p", "h", channels, samples, dense_ms=1.0)
    lm.correct({"a": 9}, 0.7)
    path = lm.save(tmp_path / "lm.json")
    back = LatencyModel.load(path)
    for k in ({}, {"a": 9}, {"a": 3, "b": 5}):
        assert back.predict(k) == pytest.approx(lm.predict(k))
    assert back.n_corrections == 1
    from rlprune_edge.errors import UserError

    with pytest.raises(UserError):
        back.predict({"zzz": 3})


def test_random_keep_respects_bounds_and_multiple():
    class G:
        def __init__(self, name, channels, prunable=True):
            self.name, self.channels, self.prunable = name, channels, prunable

    groups = [G("a", 64), G("b", 10), G("c", 7, prunable=False)]
    rng = np.random.default_rng(0)
    for _ in range(20):
        k = random_keep(groups, rng, low=0.25)
        assert set(k) == {"a", "b"} and 16 <= k["a"] <= 64 and 3 <= k["b"] <= 10
        k8 = random_keep(groups, rng, multiple=8)
        assert k8["a"] % 8 == 0


class FakeBackend:
    """Plays a runtime whose per-layer time is proportional to aligned work (no timing involved)."""

    name = "fake"

    def __init__(self):
        self.calls = 0

    def _dims(self, path):
        from rlprune_edge.latency.artifacts import onnx_node_dims

        return onnx_node_dims(path)

    def _time(self, path):
        dims = self._dims(path)
        return {n: 0.01 + 1e-6 * slot_feature(d, d["cin"], d["cout"]) for n, d in dims.items()}

    def measure(self, path, *, warmup, runs, per_layer=False):
        self.calls += 1
        t = self._time(path)
        total = sum(t.values())
        layers = [LayerTime(n, "x", v, [n]) for n, v in t.items()] if per_layer else []
        return Measurement(total, total, total, [total], layers, {}, {})

    def compare(self, paths, *, blocks, warmup, runs):
        self.calls += 1
        totals = [sum(self._time(p).values()) for p in paths]
        return [Measurement(t, t, t, [t], [], {}, {}, ratio=t / totals[0]) for t in totals]


def test_fit_and_cache_with_real_prune_and_fake_runtime(tmp_path, monkeypatch):
    import torch

    from rlprune_edge.graph import prunable_groups
    from rlprune_edge.models import build_model
    from rlprune_edge.profiles import load_profile

    monkeypatch.setenv("RLPRUNE_EDGE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = build_model("resnet20", width=0.5).eval()  # >= 8 channels: keep vectors of groups differ
    x = torch.randn(1, *model.input_shape)
    groups = prunable_groups(model, x)
    profile = load_profile("host-cpu")
    backend = FakeBackend()
    lm = cache.get_or_fit(model, x, groups, backend, profile, n_variants=3, seed=0, runs=2)
    assert lm.meta["unexplained_nodes"] == []
    calls = backend.calls
    again = cache.get_or_fit(model, x, groups, backend, profile, n_variants=3, seed=0, runs=2)
    assert backend.calls == calls and again.to_dict() == lm.to_dict()  # served from the cache
    assert cache.model_path(profile, lm.arch_hash).is_file()
    # the fake runtime's latency is exactly linear in aligned work, so held-out variants match closely
    from rlprune_edge.latency.campaign import check_model

    res = check_model(lm, model, x, groups, backend, profile, 2, seed=7, runs=2)
    assert len(res["variants"]) == 2
    assert res["max_abs_rel_error"] < 1e-6


def test_fixed_fraction_calibrated_from_measured_ratios():
    """End-to-end ratio = u + (1 - u) * kernel ratio: u is recovered from the variants' ratios."""
    channels = {"a": 32, "b": 64}
    keeps = [{}, {"a": 8, "b": 16}, {"a": 20, "b": 40}, {"a": 12, "b": 50}]
    samples = _synthetic(keeps, channels, 1e-5)
    k0 = sum(samples[0][2].values())
    ratios = [0.3 + 0.7 * sum(s[2].values()) / k0 for s in samples]
    lm = LatencyModel.fit_from_profiles("p", "h", channels, samples, dense_ms=10.0, ratios=ratios)
    assert lm.fixed_fraction == pytest.approx(0.3)
    assert lm.predict({}) == pytest.approx(10.0)
    held_out = {"a": 16, "b": 24}
    k = sum(_synthetic([held_out], channels, 1e-5)[0][2].values()) / k0
    assert lm.predict_ratio(held_out) == pytest.approx(0.3 + 0.7 * k)
    back = LatencyModel.from_dict(lm.to_dict())
    assert back.predict(held_out) == pytest.approx(lm.predict(held_out))


class DriftingBackend:
    """A machine whose speed ratio between models drifts from window to window (no timing involved).

    Window w scales every model's latency by its own factor, and the ratio of a model to the dense
    one by `drift[w]`; per-layer profiles shift the same way.
    """

    name = "drifting"

    def __init__(self, true_ratios: dict[str, float], drift: list[float]):
        self.true_ratios = true_ratios
        self.drift = drift
        self.window = 0
        self.compare_calls: list[list[str]] = []
        self.measure_calls: list[tuple[str, int]] = []

    def compare(self, paths, *, blocks, warmup, runs):
        self.compare_calls.append([str(p) for p in paths])
        d = self.drift[self.window % len(self.drift)]
        self.window += 1
        out = [Measurement(2.0 * d, 2.0 * d, 2.0 * d, [2.0 * d], [], {}, {}, ratio=1.0)]
        for p in paths[1:]:
            r = self.true_ratios[str(p)] * d
            out.append(Measurement(2.0 * r, 2.0 * r, 2.0 * r, [2.0 * r], [], {}, {}, ratio=r))
        return out

    def measure(self, path, *, warmup, runs, per_layer=False):
        self.measure_calls.append((str(path), runs))
        d = self.drift[len(self.measure_calls) % len(self.drift)]
        t = self.true_ratios.get(str(path), 1.0) * d
        layers = [LayerTime("conv", "Conv", t, ["conv"])] if per_layer else []
        return Measurement(t, t, t, [t], layers, {}, {"name": "drifting"})


def test_ratios_over_windows_measures_all_models_together_and_takes_median():
    from types import SimpleNamespace

    from rlprune_edge.latency.campaign import ratios_over_windows

    truth = {"a.onnx": 0.5, "b.onnx": 0.25}
    backend = DriftingBackend(truth, drift=[1.0, 1.3, 0.95])
    profile = SimpleNamespace(measure=SimpleNamespace(blocks=5, runs=300, rounds=3))
    ratios, dense_ms, by_window = ratios_over_windows(backend, profile, "dense.onnx", ["a.onnx", "b.onnx"],
                                                      runs=300, warmup=2, rounds=3)
    # every window holds the dense model and all variants; a slow spell shifts one window, not one variant
    assert backend.compare_calls == [["dense.onnx", "a.onnx", "b.onnx"]] * 3
    assert by_window == [[0.5, 0.25], [0.65, 0.325], [0.475, 0.2375]]
    assert ratios == [0.5, 0.25]  # the median window
    assert dense_ms == 2.0


def test_measure_windows_pauses_between_windows_and_keeps_per_window_figures(monkeypatch):
    from types import SimpleNamespace

    import rlprune_edge.latency.campaign as lm

    slept: list[float] = []
    monkeypatch.setattr(lm.time, "sleep", slept.append)
    backend = DriftingBackend({"a.onnx": 0.5}, drift=[1.0, 1.2])
    profile = SimpleNamespace(measure=SimpleNamespace(blocks=5, runs=300, rounds=1))
    windows = lm.measure_windows(backend, profile, "dense.onnx", ["a.onnx"], windows=2, runs=40, warmup=1, pause_s=7.0)
    assert slept == [7.0]  # between windows only
    assert backend.compare_calls == [["dense.onnx", "a.onnx"]] * 2
    assert [w["ratios"] for w in windows] == [[0.5], [0.6]]
    assert windows[0]["dense_median_ms"] == 2.0 and windows[1]["medians_ms"] == [1.2]


def test_slot_times_over_windows_spreads_each_model_over_passes():
    from rlprune_edge.latency.campaign import slot_times_over_windows

    backend = DriftingBackend({"a.onnx": 0.5}, drift=[1.0, 2.0, 1.1])
    times, runtime = slot_times_over_windows(backend, ["dense.onnx", "a.onnx"], [{"conv"}, {"conv"}],
                                             runs=300, warmup=2, rounds=3)
    # passes go over all models in turn, each with runs / rounds runs
    assert [p for p, _ in backend.measure_calls] == ["dense.onnx", "a.onnx"] * 3
    assert {r for _, r in backend.measure_calls} == {100}
    drifts = [[1.0, 2.0, 1.1][(k + 1) % 3] for k in range(6)]
    assert times[0]["conv"] == pytest.approx(float(np.median(drifts[0::2])))
    assert times[1]["conv"] == pytest.approx(0.5 * float(np.median(drifts[1::2])))
    assert runtime == {"name": "drifting"}


def test_one_cache_root_for_every_cache(tmp_path, monkeypatch):
    from pathlib import Path

    from rlprune_edge import checkpoint
    from rlprune_edge.latency.remote_cache import ResultCache
    from rlprune_edge.paths import cache_root
    from rlprune_edge.profiles import load_profile

    monkeypatch.delenv("RLPRUNE_EDGE_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root() == Path.home() / ".cache" / "rlprune-edge"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "rlprune-edge"
    monkeypatch.setenv("RLPRUNE_EDGE_CACHE", str(tmp_path / "mine"))  # wins over XDG_CACHE_HOME
    root = tmp_path / "mine"
    profile = load_profile("host-cpu")
    assert cache_root() == root and checkpoint.cache_dir() == root
    assert cache.model_path(profile, "0" * 16).parent == root / "latency-models"
    assert ResultCache.path("k") == root / "remote" / "k.json"
