"""Measurement protocol shared by every runtime: statistics and interleaved A/B blocks."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# values in one model input fed by a runner (a model declaring more is refused before the input is allocated):
# 128M float32 values = 512 MiB, e.g. a batch of 890 images of 3x224x224
MAX_INPUT_ELEMENTS = 1 << 27


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


def block_orders(n: int) -> list[list[int]]:
    """The order of `n` models in successive blocks: a Williams design, chained without repeats.

    Every model takes every position equally often and follows every other model equally often
    within the blocks (Williams' Latin square: `n` rows for even `n`, `2n` for odd), and the rows are
    chained so that no model runs twice in a row across a block boundary when `n` ≥ 3. For two
    models this is the classic A B | B A alternation.

    Why: the earlier forward/reversed alternation made the list's two ends run twice in a row at
    every block boundary, so their turns there started warm while every middle model's started after
    another model. On the 2-core AVX2 EPYC, two copies of the same torchvision ResNet-18 plan
    (25 MB of weights) measured with the dense model at positions 1 and 3 of 4 read 1.00–1.09× apart
    (median 1.05, 9 windows; 8 of 9 over 1.02), the middle one slower even with one untimed run per
    turn; with this order 0.98–1.04× (median 1.01). For ResNet-20 (1 MB) the bias was about 1%.
    """
    if n <= 1:
        return [[0] * n]
    base, low, high = [0], 1, n - 1
    while len(base) < n:
        base.append(low)
        low += 1
        if len(base) < n:
            base.append(high)
            high -= 1
    rows = [[(x + i) % n for x in base] for i in range(n)]
    if n % 2:
        rows += [row[::-1] for row in rows]
    chained = [rows.pop(0)]
    while rows:
        nxt = next((r for r in rows if r[0] != chained[-1][-1]), rows[0])
        rows.remove(nxt)
        chained.append(nxt)
    return chained


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

    The order changes per block (:func:`block_orders`: each model at each position, after each other
    model, equally often), which cancels drift within the window and any bias by list position. The
    settle run makes every timed run follow a run of the same model, the steady state a deployed
    model runs in (BENCHMARKS.md, "One untimed run per turn").
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
    orders = block_orders(len(runners))
    for b in range(blocks):
        for i in orders[b % len(orders)]:
            for _ in range(settle):
                runners[i]()
            s = timer(runners[i], per_block)
            samples[i].extend(s)
            block_medians[i].append(float(np.median(s)))
    base = block_medians[0]
    block_ratios = [[meds[b] / base[b] for b in range(blocks)] for meds in block_medians]
    ratios = [float(np.median(br)) for br in block_ratios]
    return samples, ratios, block_ratios
