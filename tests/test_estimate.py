"""The run-time estimate and the KD budget that fits --time-budget (rlprune_edge.estimate)."""

from __future__ import annotations

import pytest
import torch

from rlprune_edge.estimate import (
    BUDGET_SHARE,
    MIN_BATCHES,
    Budget,
    Rates,
    estimate_run,
    fit_budget,
    measure_rates,
)
from rlprune_edge.pipeline import CompressConfig
from rlprune_edge.profiles import load_profile

PROFILE = load_profile("host-cpu")
SLOW = Rates(train_ips=70.0, forward_ips=400.0, measured_s=3.0)  # MobileNetV3-Small at 224 here, roughly


def _est(c: CompressConfig):
    return estimate_run(c, SLOW, dense_ms=0.8, profile=PROFILE, n_train=10_800, n_val=1_200, n_test=2_000)


def test_estimate_counts_every_kd_stage():
    c = CompressConfig()
    est = _est(c)
    p, pb = c.plan, c.proxy.probe_batch_size
    plans = 1 + p.candidates
    assert est.kd_images["screen"] == plans * p.screen_batches * pb
    assert est.kd_images["probe"] == (p.probe_top + 1) * (p.probe_batches - p.screen_batches) * pb
    assert est.kd_images["final KD"] == c.kd.epochs * 10_800
    assert est.total_s == pytest.approx(sum(est.parts.values()))
    uniform = _est(CompressConfig(search="uniform"))
    assert uniform.parts["search KD"] < est.parts["search KD"] / 3  # one plan screened instead of 12


def test_fit_budget_scales_every_kd_budget_by_one_factor_to_fit():
    c = CompressConfig()
    est = _est(c)
    assert est.total_s > 20 * 60  # the 224x224 journey's default budgets take longer than 20 min here
    budget = fit_budget(c, est, 20 * 60, n_train=10_800)
    assert 0 < budget.scale < 1
    fitted = budget.apply(c)
    assert _est(fitted).total_s <= 20 * 60 * BUDGET_SHARE * 1.02
    assert fitted.plan.screen_batches < c.plan.screen_batches and fitted.plan.final_batches < c.plan.final_batches
    assert fitted.plan.probe_batches > fitted.plan.screen_batches  # the probe still trains beyond the screen
    assert fitted.kd.limit is not None and fitted.kd.limit < 10_800 and fitted.kd.epochs == c.kd.epochs
    assert c.plan.screen_batches == CompressConfig().plan.screen_batches  # the config passed in is not changed
    assert Budget.from_json(budget.to_json()) == budget  # kept for a resumed run


def test_fit_budget_leaves_a_run_that_fits_and_keeps_floors():
    c = CompressConfig()
    assert fit_budget(c, _est(c), 10 * 3600, 10_800).scale == 1.0
    assert fit_budget(c, _est(c), 0, 10_800).scale == 1.0  # --time-budget 0: never scaled
    tight = fit_budget(c, _est(c), 60, 10_800)  # far too little time: the floors hold
    assert tight.screen_batches == MIN_BATCHES and tight.final_batches == MIN_BATCHES
    assert tight.kd_images >= MIN_BATCHES * c.kd.batch_size


def test_measure_rates_times_a_step():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 10))
    rates = measure_rates(net, (3, 16, 16), batch=8)
    assert rates.train_ips > 0 and rates.forward_ips > 0 and net.training  # the model itself untouched


def test_time_budget_is_checked():
    from rlprune_edge.errors import UserError

    with pytest.raises(UserError, match="time_budget"):
        CompressConfig(time_budget=-1).check()
