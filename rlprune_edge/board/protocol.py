"""Measurement protocol shared by every runtime: statistics and interleaved A/B blocks."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


class BoardError(Exception):
    """A failure the runner reports as one JSON document ``{"error": kind, "message": ..., **extra}``."""

    def __init__(self, kind: str, message: str, exit_code: int = 2, **extra: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.exit_code = exit_code
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        """The error document the runner prints."""
        return {"error": self.kind, "message": self.message, **self.extra}


def missing_runtime(package: str, hint: str = "") -> BoardError:
    """The error for an absent runtime package (runner exit code 3)."""
    msg = f"the Python package '{package}' is not installed on this machine"
    return BoardError("missing_runtime", msg + (f"; {hint}" if hint else ""), exit_code=3, package=package)


def summarize(samples_ms: Sequence[float]) -> dict[str, Any]:
    """Median, p90 and p99 of timing samples (ms) plus the samples themselves."""
    arr = np.asarray(samples_ms, dtype=np.float64)
    if arr.size == 0:
        raise BoardError("no_samples", "no timed runs were made; ask for at least one run")
    return {
        "median_ms": float(np.median(arr)),
        "p90_ms": float(np.percentile(arr, 90)),
        "p99_ms": float(np.percentile(arr, 99)),
        "samples_ms": [round(float(x), 6) for x in arr],
    }


def time_runs(run_once: Callable[[], None], runs: int, clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Time `runs` calls of `run_once` with a monotonic clock; return milliseconds."""
    out = []
    for _ in range(runs):
        t0 = clock()
        run_once()
        out.append((clock() - t0) * 1e3)
    return out


def interleaved(
    runners: Sequence[Callable[[], None]],
    *,
    blocks: int,
    runs: int,
    warmup: int,
    timer: Callable[[Callable[[], None], int], list[float]] | None = None,
    settle: int = 1,
) -> tuple[list[list[float]], list[float], list[list[float]]]:
    """Measure several models in interleaved blocks within one window.

    Each model gets `warmup` untimed runs, then `blocks` rounds in which every model runs
    ``ceil(runs / blocks)`` timed runs in turn, each turn opened by `settle` untimed runs. Returns
    per-model samples, the ratio of each model to the first (median over blocks of per-block median
    ratios) and the per-block ratios.

    Why the settle run: the order alternates per block (forward, then reversed) to cancel drift, so
    the models at the list's two ends run twice in a row at block boundaries and their turn then
    starts with warm caches while every other model's starts cold, after a different model. On the
    2-core AVX2 EPYC that biased a reading by a few percent by list position (BENCHMARKS.md, "One
    untimed run per turn"). One untimed run per turn makes every timed run follow a run
    of the same model, the steady state a deployed model runs in.
    """
    if not runners:
        raise BoardError("bad_arguments", "nothing to compare")
    blocks = max(1, int(blocks))
    per_block = max(1, -(-int(runs) // blocks))
    settle = max(0, int(settle))
    timer = timer or time_runs
    for r in runners:
        for _ in range(warmup):
            r()
    samples: list[list[float]] = [[] for _ in runners]
    block_medians: list[list[float]] = [[] for _ in runners]
    for b in range(blocks):
        order = range(len(runners)) if b % 2 == 0 else reversed(range(len(runners)))
        for i in order:
            for _ in range(settle):
                runners[i]()
            s = timer(runners[i], per_block)
            samples[i].extend(s)
            block_medians[i].append(float(np.median(s)))
    base = block_medians[0]
    block_ratios = [[meds[b] / base[b] for b in range(blocks)] for meds in block_medians]
    ratios = [float(np.median(br)) for br in block_ratios]
    return samples, ratios, block_ratios
