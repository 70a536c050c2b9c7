"""A model object from Python: ``compress(CompressConfig(...), model=net)`` in a notebook.

The tool cannot rebuild such a model by name, so its checkpoints record the class and a
fingerprint of the dense architecture (every layer's shape arguments, in order); reloading takes a
freshly built dense model of the same architecture as ``arch`` (``load_checkpoint(path,
arch=MyNet())``), checked against that fingerprint before the pruned shapes and weights are applied.
Nothing is imported: the caller holds the class.
"""

from __future__ import annotations

import hashlib
import json

from torch import nn

from rlprune_edge.errors import UserError

OBJECT_PREFIX = "python:"


def class_path(model: nn.Module) -> str:
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"


def fingerprint(model: nn.Module) -> str:
    """sha256 of the class path and every layer's shape arguments (``checkpoint.module_shapes``)."""
    from rlprune_edge.layers import handler_for

    shapes = []
    for name, m in model.named_modules():
        handler = handler_for(m)
        if handler is not None:
            shapes.append([name, type(m).__name__, {k: int(v) for k, v in sorted(handler.shape_args(m).items())}])
    text = json.dumps([class_path(model), shapes], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def object_record(model: nn.Module) -> dict:
    """The source record of a live model object (kind "object"): its class and dense fingerprint."""
    spec = OBJECT_PREFIX + class_path(model)
    return {"kind": "object", "file": "", "module": type(model).__module__, "factory": type(model).__qualname__,
            "args": {}, "sha256": fingerprint(model), "spec": spec}


def check_object(record: dict, arch: object, path: object) -> nn.Module:
    """`arch` (a dense model object) checked against an object record; UserError saying what to pass."""
    recorded = record["spec"][len(OBJECT_PREFIX):]
    if not isinstance(arch, nn.Module):
        raise UserError(f"checkpoint {path} holds a model that was passed to compress as a Python object "
                        f"({recorded}); reload it in Python with load_checkpoint(path, arch=<a new dense "
                        f"{record['factory']}(...)>), built as it was before compressing.")
    if fingerprint(arch) != record["sha256"]:
        got = class_path(arch)
        why = (f"its layers differ from the recorded dense {recorded}" if got == recorded
               else f"it is a {got}, not the recorded {recorded}")
        raise UserError(f"the model given as arch cannot rebuild checkpoint {path}: {why}; pass a new dense model "
                        "built with the same arguments as the one compressed.")
    return arch


def check_object_record(raw: object) -> bool:
    """True when a checkpoint header's ``source`` is a well-formed object record."""
    return (isinstance(raw, dict) and raw.get("kind") == "object"
            and all(isinstance(raw.get(k), str) for k in ("file", "module", "factory", "sha256", "spec"))
            and str(raw["spec"]).startswith(OBJECT_PREFIX) and len(str(raw["sha256"])) == 64
            and all(c in "0123456789abcdef" for c in str(raw["sha256"])) and raw.get("args", {}) == {})
