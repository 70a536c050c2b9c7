"""The plan search's environment for real models: one-shot pruning from the dense model, the
accuracy proxy, KD probes and latency measurement on the profile.

Every data subset is fixed once from the seed, so a plan's score depends only on the plan:

* Taylor importance of the dense model, once, over ``calib_images`` training images (Molchanov's
  per-batch estimator, :mod:`rlprune_edge.importance`);
* block influence of the removable blocks (:mod:`rlprune_edge.blocks`: residual blocks, plain
  units) on the same images;
* BatchNorm recalibration (EagleEye's adaptive BN) on ``bn_images`` other training images;
* a *selection* split (``select_size`` validation images) that ranks plans, with KL divergence to
  the dense model's outputs as the tie-break, and a disjoint *confirmation* split
  (``confirm_size``) on which the winner must beat the uniform plan. The test split is never used.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlprune_edge.blocks import (
    block_influence,
    block_members,
    drop_blocks,
    keep_past_units,
    plain_units,
    removal_priority,
    skippable_blocks,
    unit_groups,
)
from rlprune_edge.compute import logits_of
from rlprune_edge.config import ProxyConfig  # noqa: F401 - re-exported, defined with every default in one place
from rlprune_edge.search.env import recalibrate_bn, tensors
from rlprune_edge.search.plan_env import Evaluation


class PlanProxy:
    """Implements :class:`rlprune_edge.search.plan_env.PlanEnv` with the project's stack."""

    def __init__(self, dense: nn.Module, info: Any, data: Any, groups: list, profile: Any, backend: Any,
                 latency_model: Any, dense_artifact: Any, work_dir: Path, config: ProxyConfig | None = None,
                 device: str | torch.device = "cpu", gate: Any = None) -> None:
        from rlprune_edge.flops import count_flops, count_params
        from rlprune_edge.importance import channel_scores

        self.config = c = config or ProxyConfig()
        self.dense = dense.eval()
        self.device = torch.device(device)
        # the teacher and the importance pass run on the compute device; plans are pruned from the
        # CPU dense model and moved there
        self.teacher = copy.deepcopy(self.dense).to(self.device) if self.device.type != "cpu" else self.dense
        self.info, self.data, self.groups = info, data, groups
        self.profile, self.backend, self.latency_model = profile, backend, latency_model
        self.dense_artifact, self.work_dir = dense_artifact, Path(work_dir)
        self.gate = gate  # SteadyGate or None: which measurement sessions count
        self.input_shape = tuple(info.input_shape)
        self.example_inputs = torch.zeros(1, *self.input_shape)
        self._count_flops, self._count_params = count_flops, count_params
        val = data.val
        perm = torch.randperm(len(val), generator=torch.Generator().manual_seed(c.seed + 101))
        n_sel = min(c.select_size, len(val) - min(len(val) // 2, c.confirm_size))
        n_conf = min(c.confirm_size, len(val) - n_sel)
        self.sel_x, self.sel_y = tensors(val.take(perm[:n_sel]))
        self.conf_x, self.conf_y = tensors(val.take(perm[n_sel : n_sel + n_conf]))
        self.teacher_logp = F.log_softmax(logits_of(self.teacher, self.sel_x, c.eval_batch), dim=1)
        need = c.calib_images + c.bn_images
        tx, ty = tensors(data.subset("train", need, seed=c.seed + 1))
        n_cal = min(c.calib_images, max(1, len(tx) // 2)) if len(tx) < need else c.calib_images
        self.calib = [(tx[i : i + c.calib_batch], ty[i : i + c.calib_batch]) for i in range(0, n_cal, c.calib_batch)]
        bn_x = tx[n_cal:] if len(tx) > n_cal else tx
        self.bn_batches = [bn_x[i : i + c.bn_batch] for i in range(0, min(len(bn_x), c.bn_images), c.bn_batch)]
        self.scores = channel_scores(self.teacher, self.example_inputs, groups, method="taylor", calib=self.calib)
        blocks = skippable_blocks(self.dense) if c.depth else []
        plain = [b for b in plain_units(self.dense) if b in blocks]
        # depth plans grow by about a quarter of the plain units at a time (VGG-19: 3 of 12; a unit is
        # one conv, often at a small map, where a residual block is two), one residual block at a time;
        # the earliest quarter of the plain units is never offered (docs/compress.md, "Plain units")
        self.depth_step = max(1, round(len(plain) / 4)) if plain else 1
        self.plain = plain[self.depth_step :] if plain else []  # the plain units offered
        self.blocks = [b for b in blocks if b not in plain or b in self.plain]  # removable blocks offered
        self.block_influence = block_influence(self.teacher, [x for x, _ in self.calib], self.blocks) if self.blocks else {}
        self.removal_priority = removal_priority(self.dense, self.block_influence)  # lower: removed first
        self._bases: dict[tuple[str, ...], tuple[nn.Module, list]] = {}  # plain units dropped -> (model, groups)
        self._unit_io = unit_groups(self.groups, self.plain)  # unit -> (group it makes, group it reads)
        self._channels = {g.name: g.channels for g in self.groups}  # dense widths
        self._members = {b: block_members(self.dense, [b]) for b in self.blocks}  # what removing b takes out
        self._teacher_logits: dict[tuple[int, int], list[torch.Tensor]] = {}  # (stage, batches) -> per batch

    # --- models --------------------------------------------------------------------------------------
    def _base(self, units: tuple[str, ...]) -> tuple[nn.Module, list]:
        """The dense model with the plain `units` dropped, and its groups (traced once per set)."""
        from rlprune_edge.graph import prunable_groups

        if not units:
            return self.dense, self.groups
        if units not in self._bases:
            base = drop_blocks(self.dense, units, copy_model=True)
            self._bases[units] = (base, prunable_groups(base, self.example_inputs))
        return self._bases[units]

    def build(self, keep: dict[str, int], removed: tuple[str, ...] = ()) -> nn.Module:
        """The plan pruned one-shot from the dense model, `removed` blocks replaced by identity,
        BatchNorm recalibrated. Plain units go before pruning (the groups around them merge: the
        unit's input group then also feeds its consumer), residual blocks after it (their groups
        stay as they are); channels are ranked by the dense model's scores either way."""
        from rlprune_edge.pruning import prune

        units = tuple(b for b in removed if b in self.plain)
        base, groups = self._base(units)
        names = {g.name for g in groups}
        new = prune(base, self.example_inputs, keep={k: v for k, v in keep.items() if k in names}, channel_multiple=1,
                    scores=self.scores, groups=groups)
        drop_blocks(new, [b for b in removed if b not in units])
        return recalibrate_bn(new.to(self.device), self.bn_batches)

    def evaluate(self, model: nn.Module) -> Evaluation:
        logits = logits_of(model, self.sel_x, self.config.eval_batch)
        correct = (logits.argmax(1) == self.sel_y).numpy()
        kl = F.kl_div(F.log_softmax(logits, dim=1), self.teacher_logp, reduction="batchmean", log_target=True)
        return Evaluation(float(correct.mean()) if len(correct) else 0.0, float(kl), correct)

    def confirm(self, model: nn.Module) -> np.ndarray:
        logits = logits_of(model, self.conf_x, self.config.eval_batch)
        return (logits.argmax(1) == self.conf_y).numpy()

    def probe(self, model: nn.Module, batches: int, stage: int = 0) -> None:
        """A short KD fine-tune of `model` in place: `batches` batches, the same ones for every plan
        at the same `stage` (a later stage draws other batches)."""
        from rlprune_edge.distill import DistillConfig, distill, teacher_logits_of

        c = self.config
        if batches <= 0:
            return
        seed = c.seed + 500 + 7919 * int(stage)
        kd = DistillConfig(epochs=1, lr=c.probe_lr, batch_size=c.probe_batch_size, limit=c.probe_batch_size * batches,
                           seed=seed)
        key = (int(stage), int(batches))
        if key not in self._teacher_logits:  # every plan learns from the same batches: the teacher's pass once
            self._teacher_logits[key] = teacher_logits_of(self.teacher, self.data, kd, device=self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            distill(model, self.teacher, self.data, kd, progress=False, distributed=False, device=self.device,
                    teacher_logits=self._teacher_logits[key])
        model.eval()

    def flops(self, model: nn.Module) -> int:
        return int(self._count_flops(copy.deepcopy(model).cpu() if self.device.type != "cpu" else model, self.input_shape))

    def params(self, model: nn.Module) -> int:
        return int(self._count_params(model))

    # --- latency -------------------------------------------------------------------------------------
    def _lm_keep(self, keep: dict[str, int]) -> dict[str, int]:
        known = getattr(self.latency_model, "channels", None)
        return dict(keep) if known is None else {k: v for k, v in keep.items() if k in known}

    def canonical_keep(self, keep: dict[str, int], removed: tuple[str, ...]) -> dict[str, int]:
        """`keep` as the plan's model has it: a removed plain unit's own group takes the width of the
        group that now passes through (two plans that differ only there build the same model)."""
        return keep_past_units(keep, self._unit_io, removed, self._channels)

    def predict_ms(self, keep: dict[str, int], removed: tuple[str, ...] = ()) -> float:
        """Predicted ms of the plan. A removed block's layers count zero; past a removed plain unit
        the consumer reads the unit's input group, so the unit's own group takes that group's width."""
        if not removed:
            return float(self.latency_model.predict(self._lm_keep(keep)))
        keep = self.canonical_keep(keep, removed)
        return float(self.latency_model.predict(self._lm_keep(keep), [p for b in removed for p in self._members.get(b, [b])]))

    def correct(self, keep: dict[str, int], measured_ms: float) -> None:
        self.latency_model.correct(self._lm_keep(keep), measured_ms)

    def rescale(self, keep: dict[str, int], measured_ratio: float) -> None:
        """Fit the latency model's savings scale to one measured plan (ratio to dense, same windows)."""
        self.latency_model.rescale(self._lm_keep(keep), measured_ratio)

    def anchor(self, keep: dict[str, int], measured_ms: float) -> None:
        """Replace any earlier correction with one that makes `keep` predict `measured_ms` exactly."""
        self.latency_model.n_corrections = 0
        self.latency_model.correct(self._lm_keep(keep), measured_ms)

    def measure(self, models: list[nn.Module]) -> tuple[float, list[tuple[float, float]]]:
        """(dense ms, [(ms, ratio to dense)]) with every model in the same interleaved windows.

        Three ``decision_protocol`` sessions (``robust_ratios``), each of windows interleaving dense and
        all `models` in short blocks; a model's ratio is the median over sessions of its median over
        windows of the per-window block ratio, its ms that ratio times the dense model's median (one
        statistic for every model).
        """
        from rlprune_edge.latency.artifacts import materialize
        from rlprune_edge.latency.campaign import robust_ratios

        paths, artifacts = [], []
        try:
            for mdl in models:
                fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=self.work_dir)
                os.close(fd)
                paths.append(Path(tmp))
                artifacts.append(materialize(self.backend, mdl, tmp, self.input_shape, int(self.profile.input.batch)))
            ratios, dense_ms, _ = robust_ratios(self.backend, self.profile, self.dense_artifact, artifacts,
                                                   gate=self.gate)
        finally:
            for p in paths:
                if p.exists():
                    p.unlink()
        return dense_ms, [(r * dense_ms, r) for r in ratios]
