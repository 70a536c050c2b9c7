"""Which plans exist at a latency target? Enumerate every plan of a small plan space.

Where the channel multiple leaves few widths per group (ResNet-20 w1 on host-cpu: multiple 16, so
16/32 channels in stage 2 and 16…64 in stage 3, stage 1 at its floor), the whole plan space can be
listed. This tool lists it and answers, for one (model, target):

1. how many distinct plans the latency model (anchored to the dense model, its savings scale
   fitted at the goal by measuring the uniform plan, as the search does) predicts within the target;
2. how many parameters the largest of them keeps, against the floor model's (every group at its
   lower bound): issue 15's "no final with fewer than 2× the floor's parameters";
3. the ``--measure`` largest-parameter plans within ``--slack`` of the target by prediction,
   plus the fitted uniform plan, measured together with the dense model in common interleaved
   windows (the benchmark's statistic), so the prediction is checked where it matters.

It fine-tunes nothing: for accuracies, give chosen plans to
``python -m benchmarks.studies.study_plans``.

Writes ``benchmarks/plan_study/NAME_space.json``. Refuses a space of more than ``--max-plans``.

    .venv/bin/python -m benchmarks.studies.enumerate_plans --model resnet20:1 --target 0.7 --measure 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
from pathlib import Path
from types import SimpleNamespace

from benchmarks.studies.study_plans import Study, _save, _say, add_study_args

ROOT = Path(__file__).resolve().parents[2]


def _choices(space, i: int) -> list[int]:  # noqa: ANN001 - PlanSpace
    lo, c, m = space.min_keep[i], space.channels[i], space.multiple
    vals = list(range(lo, c + 1, m))
    return vals if vals[-1] == c else [*vals, c]


def enumerate_space(space, max_plans: int) -> list[list[int]]:  # noqa: ANN001 - PlanSpace
    """Every keep vector of the space (followers take their producer's fraction, as in keep_at)."""
    free = space.free
    options = [_choices(space, i) for i in free]
    n = 1
    for o in options:
        n *= len(o)
    if n > max_plans:
        raise SystemExit(f"the plan space has {n} plans (more than --max-plans {max_plans}); "
                         "pass a larger --max-plans or use python -m benchmarks.studies.study_plans")
    plans = []
    for combo in itertools.product(*options):
        keep = list(space.channels)
        for i, k in zip(free, combo, strict=True):
            keep[i] = int(k)
        plans.append(space.with_followers(keep))
    return plans


def main(argv: list[str] | None = None) -> int:
    import torch

    from rlprune_edge.flops import count_params
    from rlprune_edge.pruning import prune

    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.enumerate_plans", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_args(p, "resnet20:1")
    p.add_argument("--measure", type=int, default=4, help="largest-parameter plans to measure")
    p.add_argument("--slack", type=float, default=0.03, help="also measure plans predicted up to this over the target")
    p.add_argument("--max-plans", type=int, default=20000)
    p.add_argument("--scratch", default="/tmp/plan_space")
    args = p.parse_args(argv)
    name = f"{args.model.replace(':', '-w')}_{args.target:g}x_seed{args.seed}_space"
    out = ROOT / "benchmarks" / "plan_study" / f"{name}.json"
    st = Study(SimpleNamespace(model=args.model, profile=args.profile, seed=args.seed, quick=False,
                               scratch=args.scratch, target=args.target))
    doc: dict = {"model": args.model, "target": args.target, "profile": args.profile, "seed": args.seed,
                 "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                 "channel_multiple": st.space.multiple}
    goal = st.calibrate(doc)
    dense_ms = doc["calibration"]["dense_ms"]
    params: dict[tuple[int, ...], int] = {}
    example = torch.zeros(1, *st.info.input_shape)

    def n_params(keep: list[int]) -> int:
        key = tuple(keep)
        if key not in params:
            pruned = prune(st.dense, example, keep=st.space.as_dict(keep), channel_multiple=1, groups=st.groups,
                           importance="l1")  # params only: which channels go does not matter
            params[key] = int(count_params(pruned))
        return params[key]

    plans = enumerate_space(st.space, args.max_plans)
    preds = [st.predict(k) / dense_ms for k in plans]
    floor_params = n_params(st.space.floor_keep())
    within = [(k, r) for k, r in zip(plans, preds, strict=True) if r <= args.target]
    near = [(k, r) for k, r in zip(plans, preds, strict=True) if r <= args.target * (1 + args.slack)]
    near.sort(key=lambda kr: -n_params(kr[0]))
    uniform = doc["calibration"]["steps"][-1]["keep"]
    doc.update({"plans": len(plans), "within_by_prediction": len(within), "floor_params": floor_params,
                "dense_params": n_params(st.space.full_keep()), "uniform_keep": uniform,
                "uniform_params": n_params(uniform), "uniform_pred_ratio": st.predict(uniform) / dense_ms,
                "groups": [st.space.names[i] for i in st.space.free]})
    doc["max_params_within"] = max((n_params(k) for k, _ in within), default=None)
    doc["plans_within_at_2x_floor"] = sum(1 for k, _ in within if n_params(k) >= 2 * floor_params)
    _say(f"{len(plans)} plans; {len(within)} within {args.target}x by prediction; floor {floor_params} params, "
         f"largest within {doc['max_params_within']}; {doc['plans_within_at_2x_floor']} at ≥ 2× the floor")
    picked = [k for k, _ in near[: args.measure]]
    keeps = [uniform] + [k for k in picked if k != uniform]
    _, res = st.proxy.measure([st.proxy.build(st.space.as_dict(k)) for k in keeps])
    doc["measured"] = [{"keep": [k[i] for i in st.space.free], "params": n_params(k),
                        "pred_ratio": st.predict(k) / dense_ms, "measured_ratio": r, "uniform": k == uniform}
                       for k, (_, r) in zip(keeps, res, strict=True)]
    for m in doc["measured"]:
        _say(f"{'uniform ' if m['uniform'] else ''}{m['keep']} params {m['params']} ({m['params'] / floor_params:.2f}× floor) "
             f"predicted {m['pred_ratio']:.3f}x measured {m['measured_ratio']:.3f}x")
    doc["goal_ms"] = goal
    doc["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    _save(out, doc)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
