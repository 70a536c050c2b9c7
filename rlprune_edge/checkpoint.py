"""The one checkpoint format: architecture record + state_dict, loadable with weights_only=True.

A checkpoint file is a dict of plain types and tensors::

    {"format": "rlprune-edge-checkpoint", "version": 1, "info": {...ModelInfo fields...},
     "state_dict": {...}}

For pruned models ``info["layer_shapes"]`` holds every module's constructor shape arguments
(e.g. ``{"features.0": {"in_channels": 3, "out_channels": 12, "groups": 1}}``); loading builds the
dense model by name/width/num_classes, rebuilds those modules to the recorded shapes and loads the
weights strictly.
"""

from __future__ import annotations

import math
import os
import stat
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from rlprune_edge.blocks import drop_blocks, removed_blocks
from rlprune_edge.errors import UserError
from rlprune_edge.layers import handler_for
from rlprune_edge.limits import check_tensor_kinds
from rlprune_edge.models.user import build_from_record, check_arch, check_record
from rlprune_edge.outputs import check_file_output, quote, write_file
from rlprune_edge.paths import cache_root

FORMAT = "rlprune-edge-checkpoint"
VERSION = 1
DEFAULT_MODEL = "vgg19"
DEFAULT_WIDTH = 0.25
DEFAULT_DATA = "fashion-mnist"
DEFAULT_EPOCHS = 10  # the shipped asset's recipe (see docs/foundation.md)
DEFAULT_FILENAME = "vgg19_w0.25_fashion-mnist.pt"


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


# --- per-module shape records (rlprune_edge.layers: one handler per layer type) ----------------

def module_shapes(model: nn.Module) -> dict[str, dict[str, int]]:
    """Constructor shape args of every module with a layer handler (``rlprune_edge.layers.handler_for``).

    That is every Conv, ConvTranspose, BatchNorm, Linear, GroupNorm, LayerNorm and PReLU.
    """
    out: dict[str, dict[str, int]] = {}
    for name, m in model.named_modules():
        handler = handler_for(m)
        if handler is not None:
            out[name] = {k: int(v) for k, v in handler.shape_args(m).items()}
    return out


def apply_module_shapes(model: nn.Module, shapes: dict[str, dict[str, int]]) -> nn.Module:
    """Replace (in place) each module named in `shapes` whose args differ by a fresh one of that shape.

    Returns `model`. Raises UserError if a name is missing or a record doesn't fit the module type.
    """
    for name, record in shapes.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise UserError(f"layer {name!r} recorded in the checkpoint does not exist in this architecture.") from None
        handler = handler_for(module)
        if handler is None:
            raise UserError(f"layer {name!r} ({type(module).__name__}) has no shape record support.")
        current = handler.shape_args(module)
        if set(current) != set(record):
            raise UserError(f"layer {name!r}: recorded shape keys {sorted(record)} do not match {type(module).__name__}.")
        if {k: int(v) for k, v in record.items()} == current:
            continue
        try:
            new = handler.rebuild(module, {k: int(v) for k, v in record.items()})
        except (ValueError, TypeError, RuntimeError) as exc:
            raise UserError(f"layer {name!r}: cannot rebuild with {record}: {exc}.") from None
        new.train(module.training)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    return model


# --- save / load ---------------------------------------------------------------------------------

def is_checkpoint_file(path: str | os.PathLike) -> bool:
    """True when `path` is a regular file holding an rlprune-edge checkpoint (recognised by its format key).

    Read with ``weights_only=True`` and memory-mapped, so a large or foreign file costs little and runs
    no code; anything unreadable is simply not ours.
    """
    path = Path(path)
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a torch zip, corrupt, unsupported global: not one of ours
        return False
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def check_writable(path: str | os.PathLike, *, flag: str = "output path", force: bool = False,
                   inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Fail early (UserError) when a checkpoint may not be written at `path` under the output rule
    (:mod:`rlprune_edge.outputs`): not a link or special file, not an input, not someone else's file
    unless `force`; creates missing parent directories."""
    return check_file_output(path, flag=flag, what="rlprune-edge checkpoint", recognise=is_checkpoint_file,
                             force=force, inputs=inputs, example="model.pt")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, info: ModelInfo, *, force: bool = False,
                    flag: str = "checkpoint", inputs: Iterable[str | os.PathLike] = (),
                    verify: bool = True, check: Callable[[nn.Module], None] | None = None) -> Path:
    """Write model + info under the output rule; records layer_shapes when they differ from the dense build.

    The file is written to a temp file beside `path` and, with `verify`, reloaded from there (same
    weights, bit for bit; then `check(reloaded_model)`, which raises to refuse) before it replaces
    anything. An existing file at `path` is replaced only
    when it is an rlprune-edge checkpoint, or with `force`; links, special files and the files in
    `inputs` never are (UserError).
    """
    reference = _dense_model(info)
    info.removed_blocks = removed_blocks(model, reference) or None
    shapes = module_shapes(model)
    dense = module_shapes(reference)
    info.layer_shapes = shapes if shapes != dense else None
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "info": info.to_dict(), "state_dict": state}

    def check_written(tmp: Path) -> None:
        if not verify:
            return
        reloaded, _ = load_checkpoint(tmp, arch=info.source["spec"] if info.source else None)
        got = reloaded.state_dict()
        if set(got) != set(state) or not all(torch.equal(got[k], v) for k, v in state.items()):
            raise RuntimeError(f"the checkpoint written for {path} does not reload to the same weights "
                               "(a bug; please report it); nothing was replaced.")
        if check is not None:
            check(reloaded)

    return write_file(path, lambda tmp: torch.save(payload, tmp), flag=flag, what="rlprune-edge checkpoint",
                      recognise=is_checkpoint_file, force=force, inputs=inputs, check=check_written)


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
    if source is not None and not check_record(source):
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


def _dense_model(info: ModelInfo, arch: str | None = None, path: object = None) -> nn.Module:
    """The dense model `info` describes: by name, or (own class) by the spec `arch` checked against the record."""
    from rlprune_edge.models import build_model

    if info.source is None:
        return build_model(info.model, info.width, info.num_classes)
    record = info.source if path is None else check_arch(info.source, arch, path)
    return build_from_record(record)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    arch: str | None = None) -> tuple[nn.Module, ModelInfo]:
    """Rebuild the model recorded in `path` (weights_only load); UserError naming the file on any problem.

    A checkpoint of your own model class (``info.source``) needs its spec again as `arch` (``--arch``),
    checked against the record before any code is imported; a checkpoint alone never imports code.
    """
    path = Path(path)
    if not path.is_file():
        what = _not_a_file(path)
        raise UserError(f"checkpoint {path} {what}; give the path of a .pt file written by rlprune-edge.")
    try:
        with warnings.catch_warnings():  # torch's own warnings (sparse tensors, storages): our sentence says it
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise UserError(f"cannot read checkpoint {path}: {exc.strerror or exc}; check its permissions.") from None
    except Exception as exc:  # corrupt zip, pickle error, unsupported global: all mean "not loadable"
        raise UserError(f"checkpoint {path} is corrupt or not a torch file ({type(exc).__name__}); "
                        "re-create it with `rlprune-edge train`.") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not an rlprune-edge checkpoint; create one with `rlprune-edge train`, or with "
                        f"`rlprune-edge import {quote(path)} --model ARCH --out model.pt` if it holds weights you trained.")
    info, state = check_header(payload, path)
    check_tensor_kinds(state, path)  # sparse, quantized, complex, float8: named, not a shape mismatch
    if arch is not None and info.source is None:
        raise UserError(f"checkpoint {path} holds the built-in model {info.model}; --arch is only for checkpoints "
                        "of your own model class, so leave it out.")
    if info.source is not None:
        model = _dense_model(info, arch, path)  # refused before any import without a matching --arch
    try:
        if info.source is None:
            model = _dense_model(info)
        try:
            drop_blocks(model, info.removed_blocks or [])
        except ValueError as exc:
            raise UserError(f"{exc}") from None
        if info.layer_shapes:
            apply_module_shapes(model, info.layer_shapes)
    except UserError as exc:
        raise UserError(f"checkpoint {path} cannot be rebuilt: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise UserError(f"checkpoint {path} does not match the {info.model} (width {info.width}) architecture "
                        f"({detail[:200]}); it was saved from a different model.") from None
    model.input_shape = info.input_shape
    model.to(map_location)
    model.eval()
    return model, info


def _not_a_file(path: Path) -> str:
    """Why `path` (not a regular file) cannot be a checkpoint, as a predicate: 'is a directory, ...'."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return "does not exist"
    if stat.S_ISDIR(mode):
        return "is a directory, not a checkpoint file"
    kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "something else")
    return f"is not a regular file but {kind}"


# --- model specs (path or name) -----------------------------------------------------------------

FASHION_MNIST_MEAN = (0.2190, 0.2190, 0.2190)
FASHION_MNIST_STD = (0.3318, 0.3318, 0.3318)


def resolve_model(spec: str, width: float = 1.0, num_classes: int | None = None, data=None,
                  name: str = "model", model_args: str | dict | None = None,
                  arch: str | None = None) -> tuple[nn.Module, ModelInfo]:
    """A checkpoint path, or a zoo/torchvision name or your own ``FILE.py:FACTORY`` /
    ``package.module:FACTORY`` (with `model_args`) built fresh with the data's stats.

    `data` is an optional :class:`rlprune_edge.data.DataBundle` giving num_classes, mean, std and class
    names for a fresh model; without it Fashion-MNIST statistics and 10 classes are assumed. `arch` is
    the spec of a checkpoint of your own model class (:func:`load_checkpoint`).
    """
    from rlprune_edge.models import (
        TORCHVISION_PREFIX,
        ZOO_NAMES,
        adopt_input_shape,
        build_model,
        model_input_shape,
        valid_names_sentence,
    )
    from rlprune_edge.models.user import is_user_spec, looks_like_source_without_factory, parse_model_args

    if not spec.strip():
        raise UserError(f"{name} is empty; give a checkpoint (.pt) path or one of {valid_names_sentence()}.")
    if looks_like_source_without_factory(spec):
        raise UserError(f"{name} {spec} names a source file without its factory; give {spec}:FACTORY (a class or "
                        "a function returning the model).")
    if model_args is not None and not is_user_spec(spec):
        raise UserError(f"--model-args applies only to a model class of your own (FILE.py:FACTORY), not to {spec}.")
    if is_user_spec(spec):
        if arch is not None:
            raise UserError(f"--arch is for reloading a checkpoint of your own model class; {name} {spec} already "
                            "names the class, so leave --arch out.")
        args = model_args if isinstance(model_args, dict) else parse_model_args(model_args)
        return _user_model(spec, args, width, num_classes, data)
    if spec in ZOO_NAMES or spec.startswith(TORCHVISION_PREFIX):
        if num_classes is None:
            num_classes = data.num_classes if data is not None else 10
        model = build_model(spec, width, num_classes)
        if data is not None:
            adopt_input_shape(model, tuple(data.input_shape), spec)
            mean, std, names = tuple(data.mean), tuple(data.std), list(data.class_names)
        else:
            mean, std, names = FASHION_MNIST_MEAN, FASHION_MNIST_STD, [str(i) for i in range(num_classes)]
        if len(names) != num_classes:
            names = [str(i) for i in range(num_classes)]
        info = ModelInfo(spec, float(width), num_classes, model_input_shape(model), mean, std, names)
        return model, info
    path = Path(spec)
    if not path.exists():
        raise UserError(f"model {spec!r} is neither an existing checkpoint file nor a model name; "
                        f"give a .pt path or one of {valid_names_sentence()}, or FILE.py:FACTORY for your own class.")
    if not path.is_file():
        raise UserError(f"model {spec!r} {_not_a_file(path)}; give the path of a .pt checkpoint file "
                        "written by rlprune-edge.")
    model, info = load_checkpoint(path, arch=arch)
    if num_classes is not None and num_classes != info.num_classes:
        raise UserError(f"checkpoint {path} predicts {info.num_classes} classes but the data has {num_classes}; "
                        "use a checkpoint trained on this dataset.")
    return model, info


def _user_model(spec: str, args: dict, width: float, num_classes: int | None, data) -> tuple[nn.Module, ModelInfo]:
    """Your own model class built by its factory, checked to give (N, classes) logits at the input size."""
    from rlprune_edge.models import model_input_shape
    from rlprune_edge.models.user import build_user_model, check_classifier

    if width not in (None, 1.0):
        raise UserError(f"--width applies only to the built-in zoo, not to {spec}; pass your own "
                        "width through --model-args.")
    model, record = build_user_model(spec, args)
    shape = tuple(data.input_shape) if data is not None else model_input_shape(model)
    if num_classes is None and data is not None:
        num_classes = data.num_classes
    num_classes = check_classifier(model, shape, num_classes, spec)  # type: ignore[arg-type]
    model.input_shape = shape
    if data is not None:
        mean, std, names = tuple(data.mean), tuple(data.std), list(data.class_names)
    else:
        mean, std, names = FASHION_MNIST_MEAN, FASHION_MNIST_STD, [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        names = [str(i) for i in range(num_classes)]
    info = ModelInfo(spec, 1.0, num_classes, shape, mean, std, names, source=record)  # type: ignore[arg-type]
    return model, info


# --- the embedded default model -----------------------------------------------------------------

def default_checkpoint_path() -> Path:
    """Where the shipped default (VGG-19 width 0.25 on Fashion-MNIST) lives inside the package."""
    return Path(__file__).resolve().parent / "assets" / DEFAULT_FILENAME


def cache_dir() -> Path:
    """The user cache dir for rlprune-edge (see :func:`rlprune_edge.paths.cache_root`)."""
    return cache_root()
