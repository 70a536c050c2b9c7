"""Readings taken at the machine's steady speed: a gate on the dense model's time in the same windows.

On a shared machine the speed changes for minutes at a time, and a small model's ratio to a large
one changes with it: on this 2-core VM the dense MobileNetV3-Large w0.5 ran either ~0.35 ms or
~0.75 ms, and the same plan read 0.540× dense at 0.35 ms and 0.492× at 0.75 ms (with two threads,
the large model loses more when a core is taken). A board dedicated to the model runs in the fast
state. A :class:`SteadyGate` keeps a reference for the dense model's time (a low percentile of the
session times seen on this device, kept on disk between runs when the dense model is a file) and
tells which sessions ran within `tolerance` of it; a decision measures again (up to
`extra_sessions`, `pause_s` apart) until enough sessions ran at the steady speed, else it uses the
fastest ones it has and says so (``last["steady"]`` < sessions). See docs/latency.md
("Readings at the steady speed").
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlprune_edge.fsutil import atomic_write_json, sha256_file
from rlprune_edge.paths import cache_root

REFERENCE_PERCENTILE = 10  # of the session times seen: the fast state, robust to one freak session
HISTORY = 200  # session times kept per (device, dense model)


@dataclass
class SteadyGate:
    """Which measurement sessions ran at the machine's steady (fastest usual) speed."""

    tolerance: float = 0.25  # a session is steady when its dense time ≤ (1 + tolerance) × reference
    extra_sessions: int = 3  # sessions a decision may add while too few were steady
    pause_s: float = 0.25  # between those extra sessions (3.0, then 1.0 until 2026-12-06: sleep was 29%, then 14% of a demo search)
    store: Path | None = None  # where the session times persist between runs (None: this run only)
    history: list[float] = field(default_factory=list)  # dense ms of the sessions seen, oldest first
    last: dict[str, Any] = field(default_factory=dict)  # what the latest decision used

    @classmethod
    def for_artifact(cls, profile: Any, dense_artifact: Any, **kw: Any) -> SteadyGate:
        """A gate whose reference persists in the cache for this profile and dense ONNX file
        (a dense model that is not a file, e.g. a torch module, gets a gate for this run only)."""
        store = None
        if isinstance(dense_artifact, (str, os.PathLike)) and Path(dense_artifact).is_file():
            runtime = json.dumps(profile.to_dict().get("runtime", {}), sort_keys=True, default=str)
            key = hashlib.sha256((profile.name + runtime + sha256_file(dense_artifact)).encode()).hexdigest()[:16]
            store = cache_root() / "steady-speed" / f"{profile.name}-{key}.json"
        gate = cls(store=store, **kw)
        gate.load()
        return gate

    def load(self) -> None:
        """Read the persisted session times (a missing or unreadable file starts afresh)."""
        if self.store is None or not self.store.is_file():
            return
        try:
            times = json.loads(self.store.read_text()).get("dense_ms", [])
            self.history = [float(t) for t in times if float(t) > 0][-HISTORY:]
        except (OSError, ValueError, TypeError, AttributeError):
            self.history = []

    def save(self) -> None:
        """Persist the session times; an unwritable cache turns the gate into a this-run-only one
        (it costs the memory between runs, not the measurement)."""
        if self.store is None:
            return
        try:
            self.store.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.store, {"dense_ms": self.history[-HISTORY:]})
        except OSError:
            self.store = None

    @property
    def reference_ms(self) -> float | None:
        """The steady dense time: a low percentile of the session times seen (None before any)."""
        return float(np.percentile(self.history, REFERENCE_PERCENTILE)) if self.history else None

    def observe(self, dense_ms: float) -> None:
        """Remember one session's dense time."""
        if dense_ms > 0:
            self.history = [*self.history, float(dense_ms)][-HISTORY:]

    def steady(self, dense_ms: float) -> bool:
        """Whether a session with this dense time ran at the steady speed."""
        ref = self.reference_ms
        return ref is None or dense_ms <= (1.0 + self.tolerance) * ref

    def choose(self, dense: list[float], wanted: int) -> list[int]:
        """Indices of the sessions a decision uses: the steady ones, else the `wanted` fastest."""
        steady = [i for i, d in enumerate(dense) if self.steady(d)]
        if steady:
            return steady
        return sorted(range(len(dense)), key=lambda i: dense[i])[:max(1, wanted)]
