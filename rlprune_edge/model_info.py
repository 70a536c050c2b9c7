"""A checkpoint's header: :class:`ModelInfo` (everything needed to rebuild a model and feed it) and
:func:`check_header`, which validates a loaded header field by field before anything is built.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

import torch

from rlprune_edge.errors import UserError
from rlprune_edge.models.live import check_object_record
from rlprune_edge.models.onnx_in import check_onnx_record
from rlprune_edge.models.user import check_record

FORMAT = "rlprune-edge-checkpoint"
VERSION = 1


@dataclass
class ModelInfo:
    """Everything needed to rebuild a model and feed it correctly."""

    model: str
    width: float
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]
    layer_shapes: dict[str, dict[str, int]] | None = None
    meta: dict = field(default_factory=dict)
    removed_blocks: list[str] | None = None  # residual blocks, plain units replaced by identity (rlprune_edge.blocks)
    source: dict | None = None  # your own model class: spec, factory, args, sha256 (rlprune_edge.models.user)

    def to_dict(self) -> dict:
        """Plain-type dict (lists instead of tuples) for the checkpoint file."""
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelInfo:
        """Inverse of :meth:`to_dict`; raises KeyError/TypeError/ValueError on malformed input."""
        return cls(
            model=str(d["model"]),
            width=float(d["width"]),
            num_classes=int(d["num_classes"]),
            input_shape=tuple(int(v) for v in d["input_shape"]),  # type: ignore[arg-type]
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            class_names=[str(c) for c in d["class_names"]],
            layer_shapes=d.get("layer_shapes"),
            meta=dict(d.get("meta") or {}),
            removed_blocks=[str(b) for b in d["removed_blocks"]] if d.get("removed_blocks") else None,
            source=dict(d["source"]) if d.get("source") else None,
        )



MAX_INPUT_DIM = 16384  # C, H or W of a checkpoint's input shape (larger ones are corrupt headers, not models)
MAX_CLASSES = 100_000
MAX_WIDTH = 64.0  # zoo width multiplier; the same bound as `compress --width`


def check_width(width: float, flag: str = "--width") -> float:
    """A zoo width multiplier from the command line: finite, > 0 and at most MAX_WIDTH (UserError otherwise)."""
    if not (isinstance(width, (int, float)) and math.isfinite(width) and 0 < width <= MAX_WIDTH):
        raise UserError(f"{flag} must be a number in (0, {MAX_WIDTH:g}], got {width}; use e.g. {flag} 0.25.")
    return float(width)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _shown(v: object) -> str:
    """A short one-line description of a header value for an error message."""
    if isinstance(v, torch.Tensor):
        return f"a tensor of shape {list(v.shape)}"
    text = repr(v)
    if len(text) <= 60 and "\n" not in text:
        return text
    if isinstance(v, (list, tuple, dict)):
        return f"a {type(v).__name__} of {len(v)} items"
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."


def check_header(payload: dict, path: str | os.PathLike) -> tuple[ModelInfo, dict]:
    """Validate a loaded checkpoint dict field by field; return (ModelInfo, state_dict) or raise UserError.

    Every message names the file and the field, so a hand-edited or foreign header never reaches
    the model builder as a crash.
    """

    def bad(field_name: str, expected: str, got: object) -> UserError:
        return UserError(f"checkpoint {path} has a malformed header: {field_name} must be {expected}, got "
                         f"{_shown(got)}; re-create the checkpoint with `rlprune-edge train`.")

    version = payload.get("version")
    if not _is_int(version):
        raise bad("version", "an integer", version)
    if version > VERSION:
        raise UserError(f"checkpoint {path} has format version {version}, newer than this "
                        f"rlprune-edge supports ({VERSION}); upgrade rlprune-edge.")
    if version < 1:
        raise bad("version", f"an integer in 1..{VERSION}", version)
    raw = payload.get("info")
    if not isinstance(raw, dict):
        raise bad("info", "a dict of model fields", raw)
    for key in ("model", "width", "num_classes", "input_shape", "mean", "std", "class_names"):
        if key not in raw:
            raise UserError(f"checkpoint {path} has a malformed header: info.{key} is missing; "
                            "re-create the checkpoint with `rlprune-edge train`.")
    if not isinstance(raw["model"], str) or not raw["model"]:
        raise bad("info.model", "a model name", raw["model"])
    if not (_is_number(raw["width"]) and 0 < raw["width"] <= MAX_WIDTH):
        raise bad("info.width", f"a number in (0, {MAX_WIDTH:g}]", raw["width"])
    if not (_is_int(raw["num_classes"]) and 1 <= raw["num_classes"] <= MAX_CLASSES):
        raise bad("info.num_classes", f"an integer in 1..{MAX_CLASSES}", raw["num_classes"])
    shape = raw["input_shape"]
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3
            and all(_is_int(d) and 1 <= d <= MAX_INPUT_DIM for d in shape)):
        raise bad("info.input_shape", f"3 positive integers (C, H, W) up to {MAX_INPUT_DIM}", shape)
    for key in ("mean", "std"):
        vals = raw[key]
        if not (isinstance(vals, (list, tuple)) and vals and all(_is_number(v) for v in vals)):
            raise bad(f"info.{key}", "a non-empty list of finite numbers", vals)
    if any(v <= 0 for v in raw["std"]):
        raise bad("info.std", "a list of positive numbers", raw["std"])
    names = raw["class_names"]
    if not (isinstance(names, (list, tuple)) and all(isinstance(n, (str, int)) for n in names)):
        raise bad("info.class_names", "a list of strings", names)
    shapes = raw.get("layer_shapes")
    if shapes is not None:
        if not isinstance(shapes, dict):
            raise bad("info.layer_shapes", "a dict of layer name -> {argument: positive integer}", shapes)
        for name, record in shapes.items():
            if not (isinstance(name, str) and isinstance(record, dict) and record
                    and all(isinstance(k, str) and _is_int(v) and v >= 1 for k, v in record.items())):
                raise bad(f"info.layer_shapes[{name!r}]", "a dict of argument name -> positive integer", record)
    blocks = raw.get("removed_blocks")
    if blocks is not None and not (isinstance(blocks, (list, tuple)) and all(isinstance(b, str) and b for b in blocks)):
        raise bad("info.removed_blocks", "a list of block names", blocks)
    source = raw.get("source")
    if source is not None and not (check_record(source) or check_onnx_record(source)
                                   or check_object_record(source)):
        raise bad("info.source", "a record of kind, file, module, factory, args, sha256 and spec", source)
    meta = raw.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise bad("info.meta", "a dict", meta)
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise bad("state_dict", "a dict of parameter name -> tensor", state)
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise bad(f"state_dict[{key!r}]", "a tensor", value)
    try:
        return ModelInfo.from_dict(raw), state
    except (KeyError, TypeError, ValueError) as exc:  # kept as a last line of defence
        raise UserError(f"checkpoint {path} has a malformed header ({exc}); re-create it.") from None
