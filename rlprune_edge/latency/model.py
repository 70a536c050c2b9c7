"""Latency predictor for the reward, fitted from in-network per-layer profiles on the target.

How it works:

* A handful of randomly pruned variants (plus the dense model and one "staircase" variant) are
  exported to ONNX and measured on the profile's backend: per-layer times (the runtime's own
  profiler, median per node, mapped back to ONNX nodes) and the variant/dense end-to-end latency
  ratio from finely interleaved blocks in one window (robust to drift).
* Every ONNX compute node is a *slot*. Its channel counts are linear in the groups' keep counts;
  that map is learned exactly from the variants (each dimension equals one group's keep count, or a
  constant, or, for concatenations, a small integer sum found greedily).
* Per slot, time = a + b * x where x is the node's work with channels rounded up to the runtime's
  blocking (ORT x86: output channels in blocks of 8, input channels in blocks of 4), so the
  prediction moves in the same steps as the runtime. Time of layout nodes the runtime inserts
  (e.g. NCHWc reorders) is charged to the neighbouring compute node.
* The slots' sum K(keep) is turned into end-to-end latency with one calibration fitted to the
  measured ratios: ``dense_ms * (u + (1 - u) * K(keep) / K(dense))``, u being the fraction of the
  end-to-end time that does not shrink with the layers (dispatch, thread synchronisation).
* ``correct(keep, measured_ms)`` updates a multiplicative correction (EMA in log space) from a
  real measurement.
* ``rescale(keep, measured_ratio)`` fits the *savings scale* s from one measured pruned model:
  predicted ratio ``1 - s * (1 - raw ratio)``. The dense model's prediction does not move, and a
  model that is wrong by a factor at the small end (cuda-torch: floor predicted 0.82×, measured
  0.61×; MobileNetV3 on host-cpu: 0.59× vs 0.50×) is put right near the measured size.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlprune_edge.blocks import block_of_slot
from rlprune_edge.errors import UserError
from rlprune_edge.fsutil import atomic_write_json
from rlprune_edge.latency.slots import DimMap, Slot, fit_dim_map, fit_slots, slot_feature

MIN_FIXED_FRACTION = -2.0  # end-to-end ratio = u + (1 - u) * kernel ratio; slope 1 - u at most 3
MIN_PREDICTED_RATIO = 0.02  # a prediction never falls below 2% of the dense latency
SAVINGS_SCALE_RANGE = (0.25, 4.0)  # how far one measurement may stretch or shrink the predicted savings
DEFAULT_FIT_VARIANTS = 16  # profiled variants a latency model is fitted from
LOW_FRACTIONS = (0.15, 0.35)  # uniform fit variants at the small end of the search space
FORMAT_VERSION = 4  # 4: two low uniform fit variants; 3: measurements over the profile's rounds


def architecture_hash(model: Any, input_shape: Sequence[int]) -> str:
    """A stable hash of a model's structure (module types, parameter shapes) and input shape."""
    h = hashlib.sha256()
    h.update(repr(tuple(input_shape)).encode())
    for name, mod in model.named_modules():
        h.update(f"{name}:{type(mod).__name__};".encode())
    for name, p in model.named_parameters():
        h.update(f"{name}:{tuple(p.shape)};".encode())
    return h.hexdigest()[:16]


def staircase_keep(groups: Sequence[Any]) -> dict[str, int]:
    """Keep counts that differ between groups of equal width (group j drops j mod (channels/2 + 1)).

    One such variant among the random ones makes every group's keep sequence distinct, so the
    channel maps of the ONNX nodes are identified even for narrow groups.
    """
    keep = {}
    for j, g in enumerate(gr for gr in groups if getattr(gr, "prunable", True)):
        keep[g.name] = max(1, g.channels - (j % (g.channels // 2 + 1)))
    return keep


def profile_multiple(profile: Any) -> int:
    """The profile's channel multiple (1 when it has none): what the search aligns keep counts to."""
    return max(1, int(getattr(getattr(profile, "pruning", None), "channel_multiple", 1) or 1))


def uniform_keep(groups: Sequence[Any], fraction: float, multiple: int = 1) -> dict[str, int]:
    """Every prunable group at `fraction` of its channels (rounded up to `multiple`, at least `multiple`)."""
    m = max(1, int(multiple))
    return {g.name: min(g.channels, max(m, int(math.ceil(fraction * g.channels / m)) * m))
            for g in groups if getattr(g, "prunable", True)}


def random_keep(groups: Sequence[Any], rng: np.random.Generator, low: float = 0.25, multiple: int = 1) -> dict[str, int]:
    """Random keep counts for the prunable groups (uniform fraction in [low, 1])."""
    keep = {}
    for g in groups:
        if not getattr(g, "prunable", True):
            continue
        lo = max(1, int(math.ceil(low * g.channels)))
        k = int(rng.integers(lo, g.channels + 1))
        if multiple > 1:
            k = min(g.channels, max(multiple, int(round(k / multiple)) * multiple))
        keep[g.name] = k
    return keep


@dataclass
class LatencyModel:
    """Predicts end-to-end latency (ms) on one profile from per-group keep counts."""

    profile: str
    arch_hash: str
    channels: dict[str, int]
    slots: dict[str, Slot]
    dense_ms: float
    correction: float = 1.0
    n_corrections: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    fixed_fraction: float = 0.0
    kernel_dense_ms: float = 0.0
    savings_scale: float = 1.0

    # -- prediction ------------------------------------------------------------------------------
    def _full(self, keep: dict[str, int]) -> dict[str, float]:
        unknown = set(keep) - set(self.channels)
        if unknown:
            raise UserError(f"latency model for {self.profile} does not know group(s) {sorted(unknown)[:3]}; "
                            "refit it for this architecture.")
        return {g: float(keep.get(g, c)) for g, c in self.channels.items()}

    def kernel_ms(self, keep: dict[str, int], removed: Sequence[str] = ()) -> float:
        """Sum of the slots' predicted per-layer times; the slots under the module paths `removed`
        (blocks replaced by identity, ``rlprune_edge.blocks.block_members``) count zero."""
        k = self._full(keep)
        return float(sum(s.predict(k) for n, s in self.slots.items()
                         if not removed or block_of_slot(n, removed) is None))

    def predict_raw(self, keep: dict[str, int], removed: Sequence[str] = ()) -> float:
        """End-to-end prediction without the measurement correction:
        ``dense_ms * (u + (1 - u) * kernel(keep) / kernel(dense))`` with u the fixed fraction."""
        kern = self.kernel_ms(keep, removed)
        if self.kernel_dense_ms <= 0:
            return kern
        u = self.fixed_fraction
        return self.dense_ms * max(u + (1.0 - u) * kern / self.kernel_dense_ms, MIN_PREDICTED_RATIO)

    def predict_scaled(self, keep: dict[str, int], removed: Sequence[str] = ()) -> float:
        """`predict_raw` with the savings scale applied (the dense model's prediction unchanged)."""
        raw = self.predict_raw(keep, removed)
        if self.savings_scale == 1.0:
            return raw
        dense = self.predict_raw({})
        return dense * max(1.0 - self.savings_scale * (1.0 - raw / dense), MIN_PREDICTED_RATIO)

    def predict(self, keep: dict[str, int], removed: Sequence[str] = ()) -> float:
        """Predicted end-to-end latency in ms for a candidate with these keep counts (and these
        blocks removed: module paths, ``blocks.block_members``)."""
        return self.predict_scaled(keep, removed) * self.correction

    def predict_ratio(self, keep: dict[str, int], removed: Sequence[str] = ()) -> float:
        """Predicted latency relative to the dense model."""
        return self.predict_scaled(keep, removed) / self.predict_scaled({})

    def rescale(self, keep: dict[str, int], measured_ratio: float) -> float:
        """Fit the savings scale so that `keep` predicts `measured_ratio` of the dense latency; returns it.

        Left as it is when the model predicts (almost) no saving for `keep` or the ratio is not a
        number in (0, 1.5).
        """
        rho = self.predict_raw(keep) / self.predict_raw({})
        if not (math.isfinite(measured_ratio) and 0.0 < measured_ratio < 1.5) or 1.0 - rho < 1e-3:
            return self.savings_scale
        lo, hi = SAVINGS_SCALE_RANGE
        self.savings_scale = float(min(max((1.0 - measured_ratio) / (1.0 - rho), lo), hi))
        return self.savings_scale

    def correct(self, keep: dict[str, int], measured_ms: float, alpha: float = 0.5) -> float:
        """Fold a real measurement into the multiplicative correction (EMA in log space); returns it."""
        if not (measured_ms > 0 and math.isfinite(measured_ms)):
            raise ValueError(f"measured latency must be a positive number, got {measured_ms}")
        raw = self.predict_scaled(keep)
        target = measured_ms / raw
        a = 1.0 if self.n_corrections == 0 else alpha
        self.correction = float(math.exp((1 - a) * math.log(self.correction) + a * math.log(target)))
        self.n_corrections += 1
        return self.correction

    # -- persistence -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "format": FORMAT_VERSION, "profile": self.profile, "arch_hash": self.arch_hash,
            "channels": self.channels, "dense_ms": self.dense_ms, "correction": self.correction,
            "n_corrections": self.n_corrections, "meta": self.meta,
            "fixed_fraction": self.fixed_fraction, "kernel_dense_ms": self.kernel_dense_ms,
            "savings_scale": self.savings_scale,
            "slots": {name: {"node": s.node, "cin": [s.cin.const, s.cin.coefs], "cout": [s.cout.const, s.cout.coefs],
                             "a": s.a, "b": s.b} for name, s in self.slots.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyModel:
        """Inverse of `to_dict`."""
        if d.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported latency model format {d.get('format')!r}")
        slots = {name: Slot(node=s["node"], cin=DimMap(s["cin"][0], s["cin"][1]), cout=DimMap(s["cout"][0], s["cout"][1]),
                            a=float(s["a"]), b=float(s["b"])) for name, s in d["slots"].items()}
        return cls(profile=d["profile"], arch_hash=d["arch_hash"], channels={k: int(v) for k, v in d["channels"].items()},
                   slots=slots, dense_ms=float(d["dense_ms"]), correction=float(d.get("correction", 1.0)),
                   n_corrections=int(d.get("n_corrections", 0)), meta=dict(d.get("meta", {})),
                   fixed_fraction=float(d.get("fixed_fraction", 0.0)), kernel_dense_ms=float(d.get("kernel_dense_ms", 0.0)),
                   savings_scale=float(d.get("savings_scale", 1.0)))

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically."""
        return atomic_write_json(path, self.to_dict(), indent=None)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyModel:
        """Read a saved model."""
        with open(path) as fh:
            return cls.from_dict(json.load(fh))

    # -- fitting -----------------------------------------------------------------------------------
    @classmethod
    def fit_from_profiles(cls, profile_name: str, arch_hash: str, channels: dict[str, int],
                          samples: Sequence[tuple[dict[str, int], dict[str, dict[str, Any]], dict[str, float] | None]],
                          dense_ms: float, meta: dict[str, Any] | None = None,
                          ratios: Sequence[float] | None = None) -> LatencyModel:
        """Fit from (keep, onnx node dims, slot times in ms) per variant; the first must be the dense model.

        A sample whose times are None only helps identify the channel maps (it was not measured).
        `ratios` (variant / dense end-to-end latency from interleaved blocks, 1.0 first; one per
        measured sample) calibrate the fraction u of the end-to-end time that does not shrink with
        the layers: ratio = u + (1 - u) * kernel / kernel_dense, least squares.
        """
        names = sorted(channels)
        all_keeps = [{g: float(k.get(g, channels[g])) for g in names} for k, _, _ in samples]
        node_names = [n for n in samples[0][1] if all(n in dims for _, dims, _ in samples)]
        timed = [i for i, (_, _, t) in enumerate(samples) if t is not None]
        keeps = [all_keeps[i] for i in timed]
        specs: dict[str, tuple[dict[str, Any], DimMap, DimMap, np.ndarray, np.ndarray]] = {}
        unexplained = []
        for n in node_names:
            ys = [samples[i][2].get(n) for i in timed]
            if all(y is None for y in ys):
                continue  # not executed (folded away by the runtime)
            ys_arr = np.asarray([0.0 if y is None else y for y in ys])
            node = dict(samples[0][1][n])
            cin = fit_dim_map([d[n]["cin"] for _, d, _ in samples], all_keeps, names)
            cout = fit_dim_map([d[n]["cout"] for _, d, _ in samples], all_keeps, names)
            if cin is None or cout is None:
                unexplained.append(n)
                cin, cout = DimMap(node["cin"]), DimMap(node["cout"])
                x = np.zeros(len(timed))
            else:
                x = np.asarray([slot_feature(_dw(node, samples[i][1][n]), cin(all_keeps[i]), cout(all_keeps[i]))
                                for i in timed])
            specs[n] = (_dw(node, samples[0][1][n]), cin, cout, x, ys_arr)
        slots = fit_slots(specs, np.ones(len(timed)))
        m = {"unexplained_nodes": unexplained, "n_variants": len(timed) - 1, **(meta or {})}
        model = cls(profile=profile_name, arch_hash=arch_hash, channels=dict(channels), slots=slots, dense_ms=dense_ms,
                    meta=m)
        model.kernel_dense_ms = max(model.kernel_ms({}), 1e-9)
        if ratios is not None:
            model.calibrate([{g: int(v) for g, v in kp.items()} for kp in keeps], ratios)
        return model

    def calibrate(self, keeps: Sequence[dict[str, int]], ratios: Sequence[float]) -> float:
        """Refit the fixed fraction u from measured end-to-end ratios (variant / dense) of `keeps`.

        Least squares of ``ratio = u + (1 - u) * kernel(keep) / kernel(dense)``; ``{}`` (the dense
        model, ratio 1) may be among them. The keeps, ratios and kernel ratios are kept in
        ``meta["calibration"]``. Returns u.
        """
        k = np.asarray([self.kernel_ms(kp) for kp in keeps]) / max(self.kernel_dense_ms, 1e-12)
        r = np.asarray(ratios, dtype=np.float64)
        den = float(np.sum((1 - k) ** 2))
        u = float(np.sum((r - k) * (1 - k)) / den) if den > 1e-12 else 0.0
        # u < 0 is allowed: profiled kernel times carry a per-node profiling overhead that pruning
        # does not remove (MobileNetV3-L on host-cpu: profiled kernels sum to ~1.5x the unprofiled
        # end-to-end time), so the kernel-sum ratio understates the end-to-end speed-up.
        self.fixed_fraction = float(min(max(u, MIN_FIXED_FRACTION), 0.98))
        self.meta["calibration"] = {"ratios": r.tolist(), "kernel_ratios": k.tolist(),
                                    "keeps": [{g: int(v) for g, v in kp.items()} for kp in keeps]}
        return self.fixed_fraction


def error_summary(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """Median, p90 and max of |predicted / measured - 1|."""
    errs = np.abs(np.asarray(predicted, dtype=np.float64) / np.asarray(measured, dtype=np.float64) - 1.0)
    if errs.size == 0:
        errs = np.zeros(1)
    return {"median_abs_rel_error": float(np.median(errs)), "p90_abs_rel_error": float(np.percentile(errs, 90)),
            "max_abs_rel_error": float(np.max(errs))}


def _dw(node: dict[str, Any], dims: dict[str, Any]) -> dict[str, Any]:
    """Node description with the variant's spatial sizes; depthwise keeps its marker."""
    out = dict(node)
    for key in ("k", "hw_out", "hw_in"):
        out[key] = dims.get(key, node.get(key))
    if node.get("groups") == -1 or (dims.get("groups", 1) > 1 and dims.get("groups") == dims.get("cin")):
        out["groups"] = -1
    return out
