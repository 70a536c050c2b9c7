"""Benchmarks: RL-Pruner rewards vs uniform Torch-Pruning on measured latency; writes BENCHMARKS.md.


One run trains (or reuses) the base models, then runs every cell of three studies the way a user
would (``rlprune-edge train / compress / latency-check``), stores each cell's figures in
``benchmarks/results.json`` as soon as it finishes, and renders ``BENCHMARKS.md`` plus PNG plots
from everything in that file:

* Pareto comparison at measured-latency targets (fraction of dense): (a) uniform per-layer Taylor
  pruning with Torch-Pruning, ratio bisected to the target, (b) accuracy reward, (c) FLOPs reward,
  (d) latency reward -- all with the same distillation budget and seeds.
* Paper-style table: sparsity 20/40/60/80 % with the accuracy reward.
* Latency-model fidelity from ``rlprune-edge latency-check``.

Resumable: cells already in results.json (same settings) are skipped, so rerunning the same command
after an interruption continues where it stopped. ``--quick`` is a minutes-long smoke run on tiny
settings (used by tests/test_benchmark_quick.py).

    .venv/bin/python -m tools.benchmark [--quick] [--models vgg19:0.25,resnet56:0.5,mobilenetv3_large:0.5]
        [--targets 0.7,0.5,0.3] [--seeds 0] [--sparsities 0.2,0.4,0.6,0.8] [--out-dir .] [--list]
"""

from tools.benchmark.cells import run_cli
from tools.benchmark.cli import main
from tools.benchmark.plan import METHOD_LABELS, METHODS, CellUnreachable, Settings
from tools.benchmark.render import FIDELITY_HEADER, PAPER_HEADER, PARETO_HEADER, _paired_lines, render
from tools.benchmark.store import Results

__all__ = ["FIDELITY_HEADER", "METHODS", "METHOD_LABELS", "PAPER_HEADER", "PARETO_HEADER", "CellUnreachable", "Results",
           "Settings", "_paired_lines", "main", "render", "run_cli"]
