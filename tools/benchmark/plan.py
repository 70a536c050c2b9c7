"""What a benchmark run consists of: settings, model specs, cells and the constants the studies share."""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from rlprune_edge.errors import UserError

FINISHED = ("ok", "unreachable")  # cell statuses that count as results (not retried)


class CellUnreachable(RuntimeError):
    """`compress` refused the cell's target as below the model's measured floor: a result, not a failure."""

    def __init__(self, message: str, floor_ratio: float | None) -> None:
        super().__init__(message)
        self.floor_ratio = floor_ratio


RESULTS_VERSION = 1


METHODS = ("uniform", "accuracy", "flops", "latency")


METHOD_LABELS = MappingProxyType({
    "uniform": "(a) uniform Taylor, Torch-Pruning",
    "accuracy": "(b) RL-Pruner, accuracy reward",
    "flops": "(c) RL-Pruner, FLOPs reward",
    "latency": "(d) RL-Pruner, latency reward (ours)",
})


METHOD_STYLE = MappingProxyType({
    "uniform": ("tab:gray", "s"), "accuracy": ("tab:blue", "o"), "flops": ("tab:orange", "^"),
    "latency": ("tab:red", "D"),
})


MET_TOLERANCE = 1.05  # a final measurement within 5 % of the target counts as meeting it (measurement noise)


FULL_DEFAULTS = MappingProxyType({
    "models": "vgg19:0.25,resnet56:0.5,mobilenetv3_large:0.5", "targets": "0.7,0.5,0.3", "seeds": "0",
    "sparsities": "0.2,0.4,0.6,0.8", "profile": "host-cpu", "train_epochs": 5, "train_limit": 0,
    "kd_epochs": 1, "kd_images": 12000, "steps": 60, "step_ratio": 0.06, "candidates": 4, "rounds": 2,
    "val_size": 1000, "latency_variants": 16, "test_images": 0, "pareto_test_size": 2000,
    "fidelity_variants": 30, "fidelity_fit_variants": 16, "uniform_iterations": 6, "uniform_max_ratio": 0.9,
    "uniform_repeats": 3, "torch_threads": 1, "paper_channel_multiple": 1,
})


# Finals of one (model, target, seed) re-measured together with their dense model: windows, pause s
# between windows. Cells run minutes apart; on this VM a large/small model ratio drifts by up to ~15%
# within a minute, so only finals measured in the same windows are compared at "equal latency".
COMMON_WINDOWS = (5, 10.0)


QUICK_COMMON_WINDOWS = (2, 0.0)


QUICK_DEFAULTS = MappingProxyType({
    "models": "vgg11:0.125", "targets": "0.7", "seeds": "0", "sparsities": "0.4", "profile": "",
    "train_epochs": 1, "train_limit": 2000, "kd_epochs": 1, "kd_images": 256, "steps": 8, "step_ratio": 0.15,
    "candidates": 2, "rounds": 1, "val_size": 100, "latency_variants": 2, "test_images": 300,
    "pareto_test_size": 100, "fidelity_variants": 3, "fidelity_fit_variants": 2, "uniform_iterations": 3,
    "uniform_max_ratio": 0.9, "uniform_repeats": 1, "torch_threads": 1, "paper_channel_multiple": 1,
})


# --quick measures on this profile (this machine's ONNX Runtime CPU, few runs) instead of host-cpu.
QUICK_PROFILE = """name = "bench-quick-cpu"
description = "python -m tools.benchmark --quick: ONNX Runtime CPU on this machine, few runs (smoke test only)"
[runtime]
name = "onnxruntime"
provider = "CPUExecutionProvider"
threads = 1
inter_op_threads = 1
graph_optimization = "all"
precision = "fp32"
[input]
batch = 1
[pruning]
channel_multiple = 4
[measure]
warmup = 3
runs = 10
blocks = 2
[connection]
kind = "local"
[reward]
latency = 1.0
"""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- settings and cells -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """Everything that changes the figures of a cell (stored in results.json; a rerun must match)."""

    quick: bool
    profile: str
    data: str
    train_epochs: int
    train_limit: int
    kd_epochs: int
    kd_images: int
    steps: int
    step_ratio: float
    candidates: int
    rounds: int
    val_size: int
    latency_variants: int
    test_images: int
    pareto_test_size: int
    fidelity_variants: int
    fidelity_fit_variants: int
    uniform_iterations: int
    uniform_max_ratio: float
    uniform_round_to: int
    uniform_repeats: int
    torch_threads: int
    use_shipped: bool
    paper_channel_multiple: int  # paper-table cells: compress --channel-multiple (1 = no rounding, as the paper)


@dataclass(frozen=True)
class ModelSpec:
    """A zoo model name and width."""

    name: str
    width: float

    @property
    def label(self) -> str:
        return f"{self.name}-w{self.width:g}"


@dataclass(frozen=True)
class Cell:
    """One unit of work whose figures are stored under `id` in results.json."""

    id: str
    kind: str  # base | fidelity | pareto | paper
    model: ModelSpec
    method: str = ""
    target: float = 0.0
    sparsity: float = 0.0
    seed: int = 0

    def run_dir(self, work: Path) -> Path:
        return work / "runs" / re.sub(r"[^A-Za-z0-9_.-]+", "_", self.id)


def _floats(text: str, what: str, lo: float, hi: float) -> list[float]:
    try:
        vals = [float(t.strip().rstrip("xX")) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--{what} {text!r} is not a comma-separated list of numbers; e.g. 0.7,0.5,0.3.") from None
    if not vals or any(not lo < v < hi for v in vals):
        raise UserError(f"--{what} {text!r}: every value must lie in ({lo:g}, {hi:g}); e.g. 0.7,0.5,0.3.")
    return vals


def _ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--{what} {text!r} is not a comma-separated list of integers; e.g. 0,1,2.") from None
    if not vals or any(v < 0 for v in vals):
        raise UserError(f"--{what} {text!r} must list non-negative integers; e.g. 0,1,2.")
    return vals


def parse_models(text: str) -> list[ModelSpec]:
    """`vgg19:0.25,resnet56:0.5` -> model specs; UserError on unknown names or bad widths."""
    from rlprune_edge.models import ZOO_NAMES

    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, _, w = item.partition(":")
        if name not in ZOO_NAMES:
            raise UserError(f"--models: unknown model {name!r} in {text!r}; use NAME:WIDTH with NAME one of "
                            f"{', '.join(ZOO_NAMES)}.")
        try:
            width = float(w) if w else 1.0
        except ValueError:
            raise UserError(f"--models: width {w!r} of {name} is not a number; write e.g. {name}:0.25.") from None
        if not (math.isfinite(width) and width > 0):
            raise UserError(f"--models: width {w!r} of {name} must be positive; write e.g. {name}:0.25.")
        out.append(ModelSpec(name, width))
    if not out:
        raise UserError(f"--models {text!r} names no model; write e.g. vgg19:0.25,resnet56:0.5.")
    return out


def plan_cells(models: Sequence[ModelSpec], targets: Sequence[float], seeds: Sequence[int],
               sparsities: Sequence[float], methods: Sequence[str]) -> list[Cell]:
    """Every cell of the benchmark, in run order (per model: base, fidelity, Pareto, paper table)."""
    cells: list[Cell] = []
    for m in models:
        cells.append(Cell(f"base/{m.label}", "base", m))
        cells.append(Cell(f"fidelity/{m.label}", "fidelity", m))
        for t in targets:
            for method in methods:
                for s in seeds:
                    cells.append(Cell(f"pareto/{m.label}/{t:g}x/{method}/seed{s}", "pareto", m, method=method,
                                      target=t, seed=s))
        for sp in sparsities:
            for s in seeds:
                cells.append(Cell(f"paper/{m.label}/s{sp:g}/seed{s}", "paper", m, method="accuracy", sparsity=sp,
                                  seed=s))
    return cells
