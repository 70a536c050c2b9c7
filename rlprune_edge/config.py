"""Every stage's options with their defaults, in one place (configs as data; no torch imported).

The stages take these dataclasses (:mod:`rlprune_edge.distill`, :mod:`rlprune_edge.search.loop`,
:mod:`rlprune_edge.search.plan_search`, ...; each re-exports its own), and
:class:`rlprune_edge.pipeline.CompressConfig` nests them per stage, so the `compress` command's
flags, generated from that nesting, cannot drift from the library's defaults
(``tests/test_architecture.py`` checks the flags against them).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class DistillConfig:
    """Distillation hyper-parameters (T, α from the paper; lr raised from 1e-3, see docs/compress.md)."""

    epochs: int = 1
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    temperature: float = 2.0
    alpha: float = 0.75
    batch_size: int = 128
    limit: int | None = None  # training images per epoch (None: the whole train split)
    augment: bool = False
    seed: int = 0


@dataclass(frozen=True)
class PolicyConfig:
    """Hyper-parameters of the agent (defaults are the paper's)."""

    noise: float = 0.04  # v
    lr: float = 0.1  # λ
    clip: float = 0.2  # δ
    min_prob: float = 1e-5
    epsilon: float = 0.4
    epsilon_decay_frac: float = 0.1
    collapse: float = 0.1  # relative accuracy drop that resets PD


@dataclass(frozen=True)
class SearchConfig:
    """Search budget. The paper's values are step_ratio 0.01, candidates 10, rounds 10, KD 20 ep/step."""

    step_ratio: float = 0.05  # fraction of the dense model's prunable channels removed per step
    candidates: int = 3  # K: actions sampled per round (and replay-buffer size)
    rounds: int = 2  # R
    max_steps: int = 60
    seed: int = 0
    adaptive_last_step: bool = True  # shrink a latency-target step that the predictor says overshoots
    confirm: bool = True  # re-measure before stopping on a latency target
    # With a latency target and a latency term in the reward: every candidate of a step is sized to the
    # same predicted latency (the PD's own step), not the same channel count, so candidates compete on
    # accuracy at equal latency instead of the search drifting to cheap-to-remove, slow-to-pay channels.
    equal_latency_steps: bool = True
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def fingerprint(self) -> dict:
        d = asdict(self)
        d["policy"] = asdict(self.policy)
        return d


# --- the environment interface ---------------------------------------------------------------------


@dataclass(frozen=True)
class EnvConfig:
    """Sizes of the fixed subsets (speed knobs; see docs/compress.md for what each bought)."""

    val_size: int = 800  # validation images used for the reward
    calib_size: int = 64  # train images for Taylor scores (once per step)
    bn_batches: int = 1  # BatchNorm recalibration batches per candidate
    bn_batch_size: int = 192
    eval_batch: int = 500
    step_kd_batches: int = 0  # optional short KD fine-tune of each step's chosen model
    step_kd_lr: float = 0.01
    seed: int = 0


@dataclass(frozen=True)
class PlanPolicyConfig:
    """The default search's agent: a Gaussian over log keep-preferences, moved toward the best plan."""

    sigma: float = 0.6  # initial exploration noise, relative (log space): keep fractions ×e^±0.6
    sigma_min: float = 0.15  # noise at the last round (cosine decay)
    lr: float = 0.5  # λ: mean ← mean + λ (best − mean) after every round


@dataclass(frozen=True)
class ProxyConfig:
    """Sizes of the fixed subsets and the KD probe (defaults: issue 15's bars)."""

    select_size: int = 2000
    confirm_size: int = 4000
    calib_images: int = 1024
    calib_batch: int = 32
    bn_images: int = 1024
    bn_batch: int = 256
    probe_batch_size: int = 64
    probe_lr: float = 0.01
    eval_batch: int = 500
    depth: bool = True  # offer the removable blocks (and their influence) to the search
    seed: int = 0


@dataclass(frozen=True)
class PlanSearchConfig:
    """Budget and rules of the default search (see docs/compress.md for what each bought)."""

    candidates: int = 11  # plans besides the uniform one: the structured ramps, then sampled ones (12 until the ramp -2.25 went, 2026-12-06)
    per_round: int = 8  # plans per round (the distribution moves after each round)
    ramps: tuple[float, ...] = (-0.75, -1.5)  # depth-ramp plans of round 0 (PlanSpace.ramp_prefs; -2.25 until 2026-12-06)
    depth_plans: int = 6  # round-0 plans that remove blocks whole (search.depth: residual blocks, plain units); 0 = none
    depth_recheck: float = 0.08  # a depth plan read further than this off its prediction is re-sized and read again (0: always; 0.30 lost a 0.45x win, docs/compress.md)
    screen_batches: int = 100  # KD batches every plan gets before it is scored (0 = BN recalibration only)
    probe_batches: int = 200  # KD batches of the longer probe of the best plans and the uniform one (the screen's included)
    probe_top: int = 3  # best plans that get the longer probe beside the uniform plan (0 = none)
    final_batches: int = 100  # more KD batches (other ones) for the re-ranked best and uniform before confirming
    calibration_tries: int = 3  # measurements of the uniform plan at the goal before the search (0 = none)
    shrink_tries: int = 5  # re-sizings of the uniform plan after measuring it (shrink or grow)
    challenger_tries: int = 2  # re-sizings of the re-ranked best plan (sized like uniform already; ~10 s a reading)
    fit_recheck: float = 0.03  # a fit this close under the target is read again (both readings decide)
    resample_tries: int = 3  # redraws (noise doubled each time) of a sampled plan that sizes onto one already seen
    grow_slack: float = 0.05  # a fit this close under the target stops once a larger plan measured over it
    fill: bool = True  # challengers spend what rounding left of the goal (PlanSpace.fill; False until 2026-12-07)
    uniform_only: bool = False  # `--search uniform`: the project's uniform baseline, same pipeline
    seed: int = 0
    policy: PlanPolicyConfig = field(default_factory=PlanPolicyConfig)

    @property
    def rounds(self) -> int:
        return 0 if self.uniform_only else math.ceil(max(0, self.candidates) / max(1, self.per_round))
