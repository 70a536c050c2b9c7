"""Runtimes as plug-ins: the registry here is the one list of runtimes.

Each runtime is one :class:`~rlprune_edge.runtimes.base.Runtime` (its profile options, its board
runner arguments, what export builds for it, its latency backend). Profile validation, ``profiles
show``, ``bench``, export and the remote path ask this registry instead of checking names:

* ``runtime_names()``: every registered runtime, sorted;
* ``get_runtime(name)``: its Runtime (UserError listing the names when unknown);
* ``register_runtime(runtime)``: add one (an instance or a class); ``unregister_runtime(name)``.

A module of this package that defines ``RUNTIME`` (``onnxruntime.py``, ``tensorrt.py``,
``torch_backend.py``) is registered the first time the registry is asked, so adding a runtime to the
package is one new file plus its profile; code outside the package calls ``register_runtime``. The
registry is this package's one piece of module-level state: a table filled once, then read.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil

from rlprune_edge.errors import UserError
from rlprune_edge.runtimes.base import Runtime

_REGISTRY: dict[str, Runtime] = {}
_SCANNED: list[bool] = []  # non-empty once this package's plug-in modules are registered
_NOT_PLUGINS = ("base", "backend")
_RESERVED_KEYS = ("name", "precision")  # [runtime] keys every runtime has


def _scan() -> None:
    if _SCANNED:
        return
    _SCANNED.append(True)
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name in _NOT_PLUGINS:
            continue
        runtime = getattr(importlib.import_module(f"{__name__}.{info.name}"), "RUNTIME", None)
        if isinstance(runtime, Runtime):
            _REGISTRY.setdefault(runtime.name, runtime)


def register_runtime(runtime: Runtime | type[Runtime], *, replace: bool = False) -> Runtime:
    """Add `runtime` (an instance, or a class to instantiate) under its ``name``; returns the instance.

    A name already taken is refused unless `replace`.
    """
    _scan()
    rt = runtime() if isinstance(runtime, type) else runtime
    if not isinstance(rt, Runtime):
        raise TypeError(f"{rt!r} is not a rlprune_edge.runtimes.base.Runtime")
    if not rt.name or not rt.name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"runtime name {rt.name!r} must be a non-empty word (letters, digits, - and _)")
    names = [o.name for o in rt.options]
    clash = sorted({n for n in names if names.count(n) > 1 or n in _RESERVED_KEYS})
    if clash:
        raise ValueError(f"runtime {rt.name}: option names {clash} repeat or shadow {', '.join(_RESERVED_KEYS)}")
    if not rt.precisions:
        raise ValueError(f"runtime {rt.name}: give at least one precision")
    if rt.name in _REGISTRY and _REGISTRY[rt.name] is not rt and not replace:
        raise ValueError(f"runtime {rt.name!r} is already registered; pass replace=True to replace it")
    _REGISTRY[rt.name] = rt
    return rt


def unregister_runtime(name: str) -> None:
    """Remove the runtime called `name` (no error when absent)."""
    _scan()
    _REGISTRY.pop(name, None)


def runtime_names() -> list[str]:
    """Every registered runtime's name, sorted."""
    _scan()
    return sorted(_REGISTRY)


def get_runtime(name: str) -> Runtime:
    """The runtime called `name`; a UserError naming the known ones (and the closest) otherwise."""
    _scan()
    rt = _REGISTRY.get(name)
    if rt is None:
        names = runtime_names()
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"unknown runtime {name!r}{hint}; known runtimes: {', '.join(names)}.")
    return rt


__all__ = ["Runtime", "get_runtime", "register_runtime", "runtime_names", "unregister_runtime"]
