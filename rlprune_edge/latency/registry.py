"""Which latency backend measures for a profile: a registry of ``"module:Class"`` names.

A profile reached over a connection with its own transport (``kind = "ssh"``) gets that transport's
backend whatever its runtime; a local profile gets its runtime's backend. Classes are imported when
a backend is asked for, so this module imports no backend and no backend imports it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rlprune_edge.profiles import Profile, load_profile

if TYPE_CHECKING:
    from rlprune_edge.latency.backend import LatencyBackend

# [runtime] name -> the local backend class
RUNTIME_BACKENDS: dict[str, str] = {
    "onnxruntime": "rlprune_edge.latency.onnxruntime:OrtBackend",
    "tensorrt": "rlprune_edge.latency.tensorrt:TensorRTBackend",
    "torch": "rlprune_edge.latency.torch_backend:TorchBackend",
}
# [connection] kind -> the backend that measures on the other end (any runtime)
CONNECTION_BACKENDS: dict[str, str] = {
    "ssh": "rlprune_edge.latency.remote:RemoteBackend",
}


def resolve(spec: str) -> Any:
    """The object a ``"package.module:Name"`` string names (the module is imported now)."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def backend_spec(profile: Profile) -> str:
    """The ``"module:Class"`` of the backend for a loaded profile."""
    spec = CONNECTION_BACKENDS.get(profile.connection.kind)
    return spec or RUNTIME_BACKENDS.get(profile.runtime.name, RUNTIME_BACKENDS["torch"])


def get_backend(profile: Profile | str) -> LatencyBackend:
    """The backend for a profile (name, path or Profile); remote profiles get the ssh backend."""
    p = load_profile(profile) if not isinstance(profile, Profile) else profile
    return resolve(backend_spec(p))(p)
