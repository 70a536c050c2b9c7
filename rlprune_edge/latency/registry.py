"""Which latency backend measures for a profile.

A profile reached over a connection with its own transport (``kind = "ssh"``) gets that transport's
backend, which runs the board runner with the arguments the profile's runtime gives
(``Runtime.runner_args``); a local profile gets its runtime plug-in's own backend
(``Runtime.backend``, :mod:`rlprune_edge.runtimes`). Transport classes are imported when a backend is
asked for, so this module imports no backend.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rlprune_edge.profiles import Profile, load_profile
from rlprune_edge.runtimes import get_runtime

if TYPE_CHECKING:
    from rlprune_edge.runtimes.backend import LatencyBackend

# [connection] kind -> the backend that measures on the other end (any runtime the board runner has)
CONNECTION_BACKENDS: dict[str, str] = {
    "ssh": "rlprune_edge.latency.remote:RemoteBackend",
}


def resolve(spec: str) -> Any:
    """The object a ``"package.module:Name"`` string names (the module is imported now)."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def get_backend(profile: Profile | str) -> LatencyBackend:
    """The backend for a profile (name, path or Profile): the connection's for remote profiles, else the runtime's."""
    p = load_profile(profile) if not isinstance(profile, Profile) else profile
    transport = CONNECTION_BACKENDS.get(p.connection.kind)
    if transport is not None:
        return resolve(transport)(p)
    return get_runtime(p.runtime.name).backend(p)
