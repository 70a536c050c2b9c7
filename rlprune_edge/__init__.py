"""rlprune-edge: RL-Pruner with a hardware-aware reward for named edge devices.

Public API (stable names)::

    groups = rlprune_edge.prunable_groups(model, example_inputs)
    pruned = rlprune_edge.prune(model, example_inputs, keep={g.name: k}, importance="taylor", calib=loader)
    model, info = rlprune_edge.load_checkpoint(path)
    model, info = rlprune_edge.load_checkpoint(path, arch="mynet.py:EdgeNet")  # a checkpoint of your own class
    rlprune_edge.save_checkpoint(path, model, info)
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "prunable_groups": ("rlprune_edge.graph", "prunable_groups"),
    "prune": ("rlprune_edge.pruning", "prune"),
    "load_checkpoint": ("rlprune_edge.checkpoint", "load_checkpoint"),
    "save_checkpoint": ("rlprune_edge.checkpoint", "save_checkpoint"),
    "build_model": ("rlprune_edge.models", "build_model"),
    "load_data": ("rlprune_edge.data", "load_data"),
}


def __getattr__(name: str):
    """Import heavy modules (torch) only when a public name is first used."""
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        return getattr(importlib.import_module(module_name), attr)
    raise AttributeError(f"module 'rlprune_edge' has no attribute {name!r}")


__all__ = list(_LAZY)
