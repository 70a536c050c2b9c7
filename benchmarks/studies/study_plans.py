"""Plan study: does *any* non-uniform plan beat the uniform plan after the product's full fine-tune,
and which proxy would have found it?

Issue 15 asks the plan search to beat uniform pruning by +0.5 points at the aggressive target. The
search can only find what exists and what its proxy sees. This study answers both questions for one
(model, target, seed) by brute force:

1. The latency model is calibrated at the goal (the uniform plan sized to the goal, measured against
   the dense model in the same windows, the savings scale fitted; twice), as the search does.
2. The **uniform family**: the uniform plan sized to the goal, and one channel-multiple step larger
   and smaller (the accuracy-vs-measured-latency curve that challengers are compared against).
3. **Challengers**, all sized to the uniform plan's predicted latency: ``--sample`` plans drawn as
   the search's first round draws them (log-space noise σ = 0.6 around uniform), scored by the
   search's 20-batch KD screen; the best ``--top-screen`` of them; of the best ``--probe-pool`` by
   screen, the best ``--top-probe`` by the 100-batch probe; and two structured plans, log-space
   ramps over depth: "early-wide" (slope −``--ramp``: late groups narrowed relative to uniform)
   and "late-wide" (+``--ramp``). ``--add-ramp`` adds more ramps at chosen sizes.
4. Every finalist: the 20-batch screen, the 100- and 400-batch probes (each pruned afresh from the
   dense model), then the product's fine-tune (``compress`` defaults: 4 KD epochs) and test
   accuracy on the whole test split. The uniform plan at the goal is fine-tuned twice (two KD
   seeds) to show the training noise.
5. All finals measured together with the dense model in common interleaved windows (one statistic:
   the median over sessions of the median per-window block ratio).

Each challenger's gain is read against the uniform curve interpolated at its measured ratio.
Results (resumable: every finished fine-tune is saved) go to ``benchmarks/plan_study/NAME.json``.

    .venv/bin/python -m benchmarks.studies.study_plans --model vgg19:0.25 --target 0.45 [--seed 0] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tools.bench_search import base_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _say(msg: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def _save(path: Path, doc: dict) -> None:
    from rlprune_edge.fsutil import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, doc, indent=1)


def _checkpoint(name: str, width: float) -> str:
    """The checkpoint tools.bench_search uses for this model (trained there once when missing)."""
    return str(base_checkpoint(ROOT, name, width, epochs=5, quick=False))


class Study:
    """The objects a compress run builds, and the study's steps on them."""

    def __init__(self, args: argparse.Namespace) -> None:
        from rlprune_edge.checkpoint import resolve_model
        from rlprune_edge.data import load_data
        from rlprune_edge.graph import prunable_groups
        from rlprune_edge.latency.artifacts import materialize
        from rlprune_edge.latency.cache import get_or_fit
        from rlprune_edge.latency.registry import get_backend
        from rlprune_edge.profiles import load_profile
        from rlprune_edge.search.plan import PlanSpace, follower_groups
        from rlprune_edge.search.proxy import PlanProxy, ProxyConfig

        name, width = args.model.split(":")
        self.args = args
        self.profile = load_profile(args.profile)
        self.data = load_data("fashion-mnist", seed=args.seed, limit=2048 if args.quick else None)
        torch.manual_seed(args.seed)
        dense, self.info = resolve_model(_checkpoint(name, float(width)), data=self.data)
        self.dense = dense.eval()
        example = torch.zeros(1, *self.info.input_shape)
        self.groups = prunable_groups(self.dense, example)
        self.space = PlanSpace.build([g.name for g in self.groups], [int(g.channels) for g in self.groups],
                                     [g.prunable for g in self.groups], int(self.profile.pruning.channel_multiple),
                                     followers=follower_groups(self.dense, example, self.groups))
        self.backend = get_backend(self.profile)
        self.work = Path(args.scratch)
        self.work.mkdir(parents=True, exist_ok=True)
        shape, batch = tuple(self.info.input_shape), int(self.profile.input.batch)
        self.dense_artifact = materialize(self.backend, self.dense, self.work / "dense.onnx", shape, batch)
        self.latency_model = get_or_fit(self.dense, example, self.groups, self.backend, self.profile, seed=args.seed)
        self.proxy = PlanProxy(self.dense, self.info, self.data, self.groups, self.profile, self.backend,
                               self.latency_model, self.dense_artifact, self.work, ProxyConfig(seed=args.seed))

    def predict(self, keep: list[int]) -> float:
        return self.proxy.predict_ms(self.space.as_dict(keep))

    def calibrate(self, doc: dict) -> float:
        """Anchor the latency model to the dense model and fit its savings scale at the goal; returns
        the goal in predicted ms (recorded measurements are replayed on resume)."""
        from rlprune_edge.latency.campaign import low_ms

        if "calibration" not in doc:  # the dense model's 20th percentile, as compress anchors it
            m = self.backend.measure(self.dense_artifact, warmup=self.profile.measure.warmup,
                                     runs=self.profile.measure.runs)
            doc["calibration"] = {"dense_ms": low_ms(m), "steps": []}
        cal = doc["calibration"]
        self.proxy.anchor(self.space.as_dict(self.space.full_keep()), cal["dense_ms"])
        goal = self.args.target * cal["dense_ms"]
        for t in range(2):
            keep, _ = self.space.size_to_latency(self.space.uniform_prefs(), self.predict, goal)
            if t < len(cal["steps"]):
                step = cal["steps"][t]
            else:
                _, res = self.proxy.measure([self.proxy.build(self.space.as_dict(keep))])
                step = {"keep": keep, "ratio": res[0][1]}
                cal["steps"].append(step)
            self.proxy.rescale(self.space.as_dict(step["keep"]), float(step["ratio"]))
            _say(f"calibration {t}: uniform plan measured {step['ratio']:.3f}x")
        return goal

    def proxies(self, keep: list[int], budgets: tuple[int, ...]) -> dict[str, float]:
        """Selection-split accuracy after each KD budget, every one pruned afresh from the dense model."""
        out = {}
        for b in budgets:
            model = self.proxy.build(self.space.as_dict(keep))
            self.proxy.probe(model, b)
            out[f"acc_{b}"] = self.proxy.evaluate(model).acc
        return out

    def finetune(self, keep: list[int], kd_seed: int) -> tuple[float, float, float]:
        """The product's fine-tune (compress defaults) → (test accuracy, confirmation accuracy, seconds)."""
        from rlprune_edge.distill import DistillConfig, distill
        from rlprune_edge.search.env import accuracy, tensors

        student = self.proxy.build(self.space.as_dict(keep)).train()
        torch.manual_seed(kd_seed + 12345)
        t0 = time.perf_counter()
        cfg = DistillConfig(epochs=1 if self.args.quick else 4, seed=kd_seed)
        distill(student, self.dense, self.data, cfg, progress=False, distributed=False)
        seconds = time.perf_counter() - t0
        tx, ty = tensors(self.data.test)
        conf = self.proxy.confirm(student)
        return accuracy(student, tx, ty), float(np.mean(conf)), seconds


def _candidates(st: Study, doc: dict, goal_pred: float) -> None:
    """Fill doc['finalists'] (without fine-tune results) once."""
    from rlprune_edge.search.policy import PlanDistribution

    if doc.get("finalists"):
        return
    a, space = st.args, st.space
    uni = space.uniform_prefs()
    ukeep, uscale = space.size_to_latency(uni, st.predict, goal_pred)
    fin: list[dict[str, Any]] = [{"kind": "uniform", "keep": ukeep, "kd_seed": a.seed}]
    fin.append({"kind": "uniform", "keep": ukeep, "kd_seed": a.seed + 1})
    fin.append({"kind": "uniform+1", "keep": space.grow(uni, uscale)[0], "kd_seed": a.seed})
    fin.append({"kind": "uniform-1", "keep": space.shrink(uni, uscale)[0], "kd_seed": a.seed})
    upred = st.predict(ukeep)
    policy = PlanDistribution(space.dim, 8, seed=a.seed)
    screened = []
    for prefs in policy.sample(a.sample):
        keep, _ = space.size_to_latency(prefs, st.predict, upred)
        if keep == ukeep or any(s["keep"] == keep for s in screened):
            continue
        screened.append({"keep": keep, **st.proxies(keep, (20,))})
    screened.sort(key=lambda s: -s["acc_20"])
    doc["screened"] = [s["acc_20"] for s in screened]
    _say(f"screened {len(screened)} plans: best {screened[0]['acc_20']:.3f}, median "
         f"{float(np.median(doc['screened'])):.3f}; uniform {st.proxies(ukeep, (20,))['acc_20']:.3f}")
    for s in screened[: a.top_screen]:
        fin.append({"kind": "top-screen", "keep": s["keep"], "acc_20": s["acc_20"]})
    pool = [s | st.proxies(s["keep"], (100,)) for s in screened[: a.probe_pool]]
    pool.sort(key=lambda s: -s["acc_100"])
    picked = [f["keep"] for f in fin]
    for s in [s for s in pool if s["keep"] not in picked][: a.top_probe]:
        fin.append({"kind": "top-probe", "keep": s["keep"], "acc_20": s["acc_20"], "acc_100": s["acc_100"]})
    for kind, slope in (("early-wide", -a.ramp), ("late-wide", a.ramp)):
        fin.append({"kind": kind, "keep": space.size_to_latency(space.ramp_prefs(slope), st.predict, upred)[0]})
    for f in fin:
        f.setdefault("kd_seed", a.seed)
        f["pred_ratio"] = st.predict(f["keep"]) / doc["calibration"]["dense_ms"]
    doc["finalists"] = fin


def _add_ramps(st: Study, doc: dict, spec: str) -> None:
    """Append structured plans SLOPE:PREDICTED_RATIO (kind "ramp SLOPE"); any new one voids the common
    measurement, so that every final is measured together again."""
    for item in filter(None, (x.strip() for x in spec.split(","))):
        slope, ratio = (float(v) for v in item.split(":"))
        prefs = st.space.ramp_prefs(slope)
        keep, _ = st.space.size_to_latency(prefs, st.predict, ratio * doc["calibration"]["dense_ms"])
        if any(f["keep"] == keep for f in doc["finalists"]):
            continue
        doc["finalists"].append({"kind": f"ramp {slope:+g}", "keep": keep, "kd_seed": st.args.seed,
                                 "pred_ratio": st.predict(keep) / doc["calibration"]["dense_ms"]})
        doc.pop("measured", None)


def _interp_uniform(points: list[tuple[float, float]], ratio: float) -> float:
    """Uniform accuracy at `ratio` on the piecewise-linear curve through (measured ratio, accuracy)."""
    pts = sorted(points)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return float(np.interp(ratio, xs, ys))  # flat beyond the ends


def _ranks(v: list[float]) -> np.ndarray:
    """Ranks with ties given their average rank."""
    a = np.asarray(v, dtype=np.float64)
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts
    return (starts + (counts - 1) / 2.0)[inverse]


def _spearman(x: list[float], y: list[float]) -> float:
    return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1]) if len(x) > 2 else math.nan


def _summarise(doc: dict) -> None:
    """Gains against the uniform curve (one point per uniform size, KD seeds averaged), the KD-seed
    spread of the uniform plan, and each proxy's rank agreement with the final accuracy."""
    fin = [f for f in doc["finalists"] if "test_acc" in f]
    by_keep: dict[tuple, list] = {}
    for f in fin:
        if f["kind"].startswith("uniform") and "ratio" in f:
            by_keep.setdefault(tuple(f["keep"]), []).append((f["ratio"], f["test_acc"]))
    if len(by_keep) >= 2:
        curve = sorted((float(np.mean([r for r, _ in v])), float(np.mean([a for _, a in v]))) for v in by_keep.values())
        for f in fin:
            if "ratio" in f and not f["kind"].startswith("uniform"):
                f["gain_vs_uniform_curve"] = f["test_acc"] - _interp_uniform(curve, f["ratio"])
        doc["uniform_curve"] = curve
    seeds = [f["test_acc"] for f in fin if f["kind"] == "uniform"]
    doc["uniform_kd_seed_spread"] = (max(seeds) - min(seeds)) if len(seeds) > 1 else None
    finals = [f["test_acc"] for f in fin]
    doc["spearman_vs_final"] = {k: _spearman([f[k] for f in fin], finals)
                                for k in ("acc_20", "acc_100", "acc_400", "params") if all(k in f for f in fin)}


def add_study_args(p: argparse.ArgumentParser, model: str) -> None:
    """The arguments a `Study` is built from (benchmarks.studies.enumerate_plans shares them)."""
    p.add_argument("--model", default=model, help="NAME:WIDTH (a bench_search checkpoint)")
    p.add_argument("--target", type=float, required=True, help="latency target, fraction of dense")
    p.add_argument("--profile", default="host-cpu")
    p.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.study_plans", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_args(p, "vgg19:0.25")
    p.add_argument("--sample", type=int, default=32)
    p.add_argument("--top-screen", type=int, default=3)
    p.add_argument("--probe-pool", type=int, default=8)
    p.add_argument("--top-probe", type=int, default=2)
    p.add_argument("--ramp", type=float, default=1.5, help="log-space spread of the structured plans, first to last group")
    p.add_argument("--add-ramp", default="",
                   help="more structured plans SLOPE:PREDICTED_RATIO,... (e.g. -1.5:0.49: early layers wide, sized to "
                        "0.49x predicted); added to a finished study, then every final is re-measured together")
    p.add_argument("--out", default=None)
    p.add_argument("--scratch", default="/tmp/plan_study")
    p.add_argument("--quick", action="store_true", help="smoke run: 2,048 images, 1 KD epoch")
    args = p.parse_args(argv)
    name = f"{args.model.replace(':', '-w')}_{args.target:g}x_seed{args.seed}{'_quick' if args.quick else ''}"
    out = Path(args.out or ROOT / "benchmarks" / "plan_study" / f"{name}.json")
    doc = json.loads(out.read_text()) if out.is_file() else {"model": args.model, "target": args.target,
                                                              "profile": args.profile, "seed": args.seed}
    doc["started"] = doc.get("started") or dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    st = Study(args)
    goal = st.calibrate(doc)
    _save(out, doc)
    _candidates(st, doc, goal)
    _add_ramps(st, doc, args.add_ramp)
    _save(out, doc)
    for i, f in enumerate(doc["finalists"]):
        if "test_acc" in f:
            continue
        f.update(st.proxies(f["keep"], tuple(b for b in (20, 100, 400) if f"acc_{b}" not in f)))
        f["params"] = st.proxy.params(st.proxy.build(st.space.as_dict(f["keep"])))
        f["test_acc"], f["confirm_acc"], f["kd_s"] = st.finetune(f["keep"], f["kd_seed"])
        _say(f"{i}: {f['kind']:<11} params {f['params']:>7} pred {f['pred_ratio']:.3f}x  screen {f['acc_20']:.3f} "
             f"probe100 {f['acc_100']:.3f} probe400 {f['acc_400']:.3f}  test {100 * f['test_acc']:.2f}%")
        _save(out, doc)
    if "measured" not in doc:  # all distinct finals in the same windows
        keeps = []
        for f in doc["finalists"]:
            if f["keep"] not in keeps:
                keeps.append(f["keep"])
        dense_ms, res = st.proxy.measure([st.proxy.build(st.space.as_dict(k)) for k in keeps])
        doc["measured"] = {"dense_ms": dense_ms, "ratios": [r for _, r in res]}
        for f in doc["finalists"]:
            f["ratio"] = res[keeps.index(f["keep"])][1]
    _summarise(doc)
    doc["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    _save(out, doc)
    for f in doc["finalists"]:
        g = f.get("gain_vs_uniform_curve")
        print(f"{f['kind']:<11} {f['params']:>7} {f['ratio']:.3f}x  test {100 * f['test_acc']:.2f}%"
              + (f"  vs uniform curve {100 * g:+.2f}" if g is not None else ""))
    print("spearman vs final:", doc["spearman_vs_final"], "uniform KD-seed spread:", doc["uniform_kd_seed_spread"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
