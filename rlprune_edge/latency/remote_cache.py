"""Cache of single-model measurements made on boards, written atomically under ``<cache root>/remote/``.

An entry is keyed by the profile, host, runtime and input settings, the runner's measurement
arguments, the runner version and the model's sha256; the cache root is
:func:`rlprune_edge.paths.cache_root`. ``RLPRUNE_EDGE_NO_REMOTE_CACHE=1`` always measures afresh
(results are still stored). A missing, unreadable or unwritable cache only costs a re-measurement.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rlprune_edge.fsutil import atomic_write_bytes
from rlprune_edge.paths import cache_root

NO_CACHE_ENV = "RLPRUNE_EDGE_NO_REMOTE_CACHE"  # set to 1 to always measure afresh (results are still stored)


class ResultCache:
    """Measurements (runner documents) of one profile on one host and runner version."""

    def __init__(self, profile: Any, host: str, runner_id: str, *, enabled: bool = True):
        self.profile = profile
        self.host = host
        self.runner_id = runner_id
        self.enabled = enabled

    def key(self, sha: str, *, args: Sequence[str], per_layer: bool) -> str:
        """Key of a cached measurement: profile, host, runtime and measurement options, runner and model sha256."""
        p = self.profile
        ident = {
            "profile": p.name,
            "destination": self.host,
            "runtime": asdict(p.runtime),
            "input": [p.input.batch, list(p.input.shape)],
            "args": list(args),
            "per_layer": bool(per_layer),
            "runner": self.runner_id,
            "model": sha,
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]

    @staticmethod
    def path(key: str) -> Path:
        """Where a cached measurement lives."""
        return cache_root() / "remote" / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached runner document, or None (absent, unreadable, or caching off)."""
        if not self.enabled or os.environ.get(NO_CACHE_ENV, "").lower() in ("1", "true", "yes", "on"):
            return None
        try:
            entry = json.loads(self.path(key).read_text())
        except (OSError, ValueError):
            return None
        return entry.get("measurement") if isinstance(entry, dict) else None

    def put(self, key: str, doc: dict[str, Any]) -> None:
        """Store a runner document (nothing when caching is off or the cache cannot be written)."""
        if not self.enabled:
            return
        entry = {"profile": self.profile.name, "host": self.host, "created": time.time(), "measurement": doc}
        try:
            atomic_write_bytes(self.path(key), json.dumps(entry).encode())
        except OSError:
            pass  # a cache that cannot be written only costs a re-measurement
