"""On-disk cache of fitted latency models, keyed by (profile settings, architecture hash).

Location: ``latency-models/`` under :func:`rlprune_edge.paths.cache_root` (``$RLPRUNE_EDGE_CACHE``,
else ``$XDG_CACHE_HOME/rlprune-edge``, else ``~/.cache/rlprune-edge``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlprune_edge.latency.campaign import check_fit_counts, fit_latency_model
from rlprune_edge.latency.model import DEFAULT_FIT_VARIANTS, LatencyModel, architecture_hash
from rlprune_edge.paths import cache_root
from rlprune_edge.profiles import Profile


def profile_key(profile: Profile) -> str:
    """Name plus a hash of everything in the profile that changes latency (runtime, input, device address)."""
    d = profile.to_dict()
    relevant = {"runtime": d["runtime"], "input": d["input"], "destination": d["connection"]["destination"],
                "kind": d["connection"]["kind"],
                "pruning": {"channel_multiple": profile.pruning.channel_multiple}}  # the fit aligns to the multiple
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]
    return f"{profile.name}-{digest}"


def model_path(profile: Profile, arch_hash: str) -> Path:
    """Cache file of the latency model for this profile and architecture."""
    return cache_root() / "latency-models" / f"{profile_key(profile)}-{arch_hash}.json"


def load_cached(profile: Profile, arch_hash: str) -> LatencyModel | None:
    """The cached model, or None when absent or unreadable (a corrupt file is ignored and refitted)."""
    path = model_path(profile, arch_hash)
    if not path.is_file():
        return None
    try:
        lm = LatencyModel.load(path)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return lm if lm.arch_hash == arch_hash else None


def save_cached(lm: LatencyModel, profile: Profile) -> Path:
    """Store (atomically) a fitted or corrected model."""
    return lm.save(model_path(profile, lm.arch_hash))


def get_or_fit(model: Any, example_inputs: Any, groups: Sequence[Any], backend: Any, profile: Profile,
               n_variants: int = DEFAULT_FIT_VARIANTS, seed: int = 0, refit: bool = False, **fit_kwargs: Any) -> LatencyModel:
    """The cached latency model for (profile, architecture), fitting and caching it when missing."""
    check_fit_counts(n_variants, fit_kwargs.get("runs"))  # bad counts are refused even when a fit is cached
    arch = architecture_hash(model, tuple(example_inputs.shape[1:]))
    if not refit:
        cached = load_cached(profile, arch)
        if cached is not None:
            return cached
    lm = fit_latency_model(model, example_inputs, groups, backend, profile, n_variants=n_variants, seed=seed, **fit_kwargs)
    save_cached(lm, profile)
    return lm
