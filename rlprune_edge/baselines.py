"""Baseline (a) of the benchmarks: uniform per-layer Taylor pruning with Torch-Pruning.

What a user reaches for first: ``tp.pruner.MetaPruner`` with ``tp.importance.TaylorImportance``,
``global_pruning=False`` (every layer loses the same fraction of its channels) and one
``pruning_ratio``. To compare at equal *measured* latency the ratio is chosen by bisection: each
probe prunes a fresh copy of the dense model, exports it to ONNX and measures it against the dense
model in interleaved blocks on the profile's backend (``backend.compare``). The smallest probed
ratio whose measured latency ratio meets the target wins; the caller then fine-tunes it with the
same knowledge distillation as ``compress`` (:func:`rlprune_edge.distill.distill`).
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rlprune_edge.errors import UserError
from rlprune_edge.layers import filter_bank, handler_for


@dataclass
class UniformResult:
    """The chosen uniformly pruned model and how it was found."""

    model: nn.Module
    pruning_ratio: float
    measured_ms: float
    measured_ratio: float
    reached: bool
    search_s: float
    probes: list[dict[str, Any]] = field(default_factory=list)


def output_layers(model: nn.Module, example_inputs: torch.Tensor) -> list[nn.Module]:
    """Leaf modules whose output tensor is the model's output (the classifier; never pruned)."""
    outputs: dict[nn.Module, Any] = {}
    hooks = [m.register_forward_hook(lambda mod, _i, out: outputs.__setitem__(mod, out))
             for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            y = model.eval()(example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return [m for m, out in outputs.items() if out is y]


def _taylor_grads(model: nn.Module, calib: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Accumulate cross-entropy gradients over `calib` (what TaylorImportance reads)."""
    model.eval()
    model.zero_grad(set_to_none=True)
    for x, y in calib:
        F.cross_entropy(model(x), y).backward()


def _capped_ratios(model: nn.Module, ratio: float, round_to: int, ignored: Sequence[nn.Module]) -> dict[nn.Module, float]:
    """Per-layer ratios that leave at least `round_to` channels in every layer.

    Torch-Pruning 1.6's ``round_to`` rounds the *kept* channel count down to a multiple of
    ``round_to``; a layer asked to keep fewer than ``round_to`` channels is rounded to 0 kept, which
    Torch-Pruning then refuses, leaving the layer unpruned. Uncapped, a higher ratio can therefore
    prune *less* (a 16-channel layer: ratio 0.5 keeps 8, ratio 0.6 keeps all 16), which breaks the
    bisection. Capping each layer at ``1 - (round_to + 0.5) / channels`` keeps the prune monotonic.
    """
    skip = set(ignored)
    out: dict[nn.Module, float] = {}
    for m in model.modules():
        bank = filter_bank(m)
        if m in skip or bank is None:
            continue
        channels = bank.out_channels(m)
        out[m] = max(0.0, min(ratio, 1.0 - (round_to + 0.5) / channels))
    return out


def uniform_taylor_prune(
    model: nn.Module,
    example_inputs: torch.Tensor,
    ratio: float,
    calib: Sequence[tuple[torch.Tensor, torch.Tensor]],
    round_to: int | None = None,
) -> nn.Module:
    """A pruned deep copy of `model`: every layer loses `ratio` of its channels, by Taylor importance."""
    import torch_pruning as tp

    if not 0.0 <= ratio < 1.0:
        raise UserError(f"uniform pruning ratio {ratio} is outside [0, 1); give e.g. 0.5.")
    pruned = copy.deepcopy(model).eval()
    if ratio == 0.0:
        return pruned
    ignored = output_layers(pruned, example_inputs)
    _taylor_grads(pruned, calib)
    round_to = round_to if round_to and round_to > 1 else None
    pruner = tp.pruner.MetaPruner(
        pruned, example_inputs, importance=tp.importance.TaylorImportance(), global_pruning=False,
        pruning_ratio=ratio, ignored_layers=ignored, round_to=round_to,
        pruning_ratio_dict=_capped_ratios(pruned, ratio, round_to, ignored) if round_to else None,
    )
    pruner.step()
    pruned.zero_grad(set_to_none=True)
    return pruned.eval()


def _shape_key(model: nn.Module) -> tuple:
    """Architecture signature: every layer's checkpoint shape record (probes with equal shapes share a measurement)."""
    key = []
    for name, m in model.named_modules():
        handler = handler_for(m)
        if handler is not None:
            key.append((name, tuple(sorted(handler.shape_args(m).items()))))
    return tuple(key)


@contextmanager
def _temp_artifact(backend: Any, profile: Any, model: nn.Module, input_shape: tuple[int, ...],
                   work_dir: Path) -> Iterator[Any]:
    """What the backend measures for `model` (an ONNX file in `work_dir`, removed after, or the module)."""
    from rlprune_edge.latency.artifacts import materialize

    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=work_dir)
    os.close(fd)
    try:
        yield materialize(backend, model, tmp, tuple(input_shape), int(profile.input.batch))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def measure_vs_dense(backend: Any, profile: Any, dense_artifact: Any, model: nn.Module,
                     input_shape: tuple[int, ...], work_dir: Path) -> tuple[Any, Any]:
    """(dense, model) Measurements from interleaved blocks on the profile's backend."""
    pm = profile.measure
    with _temp_artifact(backend, profile, model, input_shape, work_dir) as art:
        dense_m, model_m = backend.compare([dense_artifact, art], blocks=int(pm.blocks), warmup=int(pm.warmup),
                                           runs=int(pm.runs))
    return dense_m, model_m


def _steady_reading(backend: Any, profile: Any, dense_artifact: Any, model: nn.Module,
                    input_shape: tuple[int, ...], work_dir: Path, gate: Any) -> tuple[float, float]:
    """(ms, ratio to dense) of `model` as compress's decisions read it (``robust_ratios`` with `gate`)."""
    from rlprune_edge.latency.campaign import robust_ratios

    with _temp_artifact(backend, profile, model, input_shape, work_dir) as art:
        (ratio,), dense_ms, _ = robust_ratios(backend, profile, dense_artifact, [art], gate=gate)
    return ratio * dense_ms, ratio


def _ratio(dense_m: Any, model_m: Any) -> float:
    return float(model_m.ratio) if model_m.ratio is not None else float(model_m.median_ms) / float(dense_m.median_ms)


def bisect_uniform(
    dense: nn.Module,
    example_inputs: torch.Tensor,
    target_ratio: float,
    calib: Sequence[tuple[torch.Tensor, torch.Tensor]],
    backend: Any,
    profile: Any,
    dense_artifact: Any,
    work_dir: Path,
    iterations: int = 6,
    max_ratio: float = 0.9,
    round_to: int | None = None,
    log: Callable[[str], None] | None = None,
    repeats: int = 3,
    gate: Any = None,
) -> UniformResult:
    """The smallest uniform pruning ratio whose measured latency is ≤ `target_ratio` × dense.

    Probes `max_ratio` first (if even that misses the target, it is returned with ``reached=False``),
    then bisects [0, max_ratio] `iterations` times. Each probe's ratio is the median of `repeats`
    interleaved windows (one window on a busy machine can be far off); probes that give the same
    architecture (Torch-Pruning rounds channel counts) reuse one measurement. With a `gate`
    (:class:`~rlprune_edge.latency.steady.SteadyGate`) each probe is measured as compress decides
    (``campaign.robust_ratios`` at the steady speed) instead: one statistic for every method.
    """
    if not 0.0 < target_ratio < 1.0:
        raise UserError(f"target latency ratio {target_ratio} is outside (0, 1); give e.g. 0.5.")
    if not 0.0 < max_ratio < 1.0:
        raise UserError(f"maximum pruning ratio {max_ratio} is outside (0, 1); give e.g. 0.9.")
    t0 = time.perf_counter()
    cache: dict[tuple, tuple[float, float]] = {}
    probes: list[dict[str, Any]] = []

    def probe(r: float) -> tuple[nn.Module, float, float]:
        model = uniform_taylor_prune(dense, example_inputs, r, calib, round_to=round_to)
        key = _shape_key(model)
        if key not in cache and gate is not None:
            cache[key] = _steady_reading(backend, profile, dense_artifact, model, tuple(example_inputs.shape[1:]),
                                         work_dir, gate)
        if key not in cache:
            windows = [measure_vs_dense(backend, profile, dense_artifact, model, tuple(example_inputs.shape[1:]), work_dir)
                       for _ in range(max(1, repeats))]
            cache[key] = (statistics.median(float(m.median_ms) for _, m in windows),
                          statistics.median(_ratio(d, m) for d, m in windows))
        ms, ratio = cache[key]
        probes.append({"pruning_ratio": r, "measured_ms": ms, "measured_ratio": ratio, "windows": max(1, repeats)})
        if log:
            log(f"uniform: pruning ratio {r:.4f} -> {ratio:.3f}x dense ({ms:.3f} ms)")
        return model, ms, ratio

    best = probe(max_ratio)
    best_r = max_ratio
    if best[2] > target_ratio:
        return UniformResult(best[0], max_ratio, best[1], best[2], False, time.perf_counter() - t0, probes)
    lo, hi = 0.0, max_ratio
    for _ in range(max(0, iterations)):
        mid = (lo + hi) / 2
        cand = probe(mid)
        if cand[2] <= target_ratio:
            hi, best, best_r = mid, cand, mid
        else:
            lo = mid
    return UniformResult(best[0], best_r, best[1], best[2], True, time.perf_counter() - t0, probes)
