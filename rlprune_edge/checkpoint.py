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

import copy
import os
import stat
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlprune_edge.blocks import drop_blocks, removed_blocks
from rlprune_edge.errors import UserError
from rlprune_edge.layers import handler_for
from rlprune_edge.limits import check_tensor_kinds
from rlprune_edge.model_info import (  # noqa: F401 - re-exported: the checkpoint's header
    FORMAT,
    MAX_CLASSES,
    MAX_INPUT_DIM,
    MAX_WIDTH,
    VERSION,
    ModelInfo,
    check_header,
    check_width,
)
from rlprune_edge.models.live import check_object
from rlprune_edge.models.onnx_in import build_from_onnx, check_onnx_arch, is_onnx_spec
from rlprune_edge.models.user import build_from_record, check_arch
from rlprune_edge.outputs import check_file_output, quote, write_file
from rlprune_edge.paths import cache_root

DEFAULT_MODEL = "vgg19"
DEFAULT_WIDTH = 0.25
DEFAULT_DATA = "fashion-mnist"
DEFAULT_EPOCHS = 10  # the shipped asset's recipe (see docs/foundation.md)
DEFAULT_FILENAME = "vgg19_w0.25_fashion-mnist.pt"


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
                    verify: bool = True, check: Callable[[nn.Module], None] | None = None,
                    dense: nn.Module | None = None) -> Path:
    """Write model + info under the output rule; records layer_shapes when they differ from the dense build.

    The file is written to a temp file beside `path` and, with `verify`, reloaded from there (same
    weights, bit for bit; then `check(reloaded_model)`, which raises to refuse) before it replaces
    anything. An existing file at `path` is replaced only
    when it is an rlprune-edge checkpoint, or with `force`; links, special files and the files in
    `inputs` never are (UserError). A model passed to compress as an object needs its `dense` model.
    """
    reference = _dense_model(info, dense)
    info.removed_blocks = removed_blocks(model, reference) or None
    shapes = module_shapes(model)
    info.layer_shapes = shapes if shapes != module_shapes(reference) else None
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "info": info.to_dict(), "state_dict": state}

    def check_written(tmp: Path) -> None:
        if not verify:
            return
        reloaded, _ = load_checkpoint(tmp, arch=reload_arch(info, dense))
        got = reloaded.state_dict()
        if set(got) != set(state) or not all(torch.equal(got[k], v) for k, v in state.items()):
            raise RuntimeError(f"the checkpoint written for {path} does not reload to the same weights "
                               "(a bug; please report it); nothing was replaced.")
        if check is not None:
            check(reloaded)

    return write_file(path, lambda tmp: torch.save(payload, tmp), flag=flag, what="rlprune-edge checkpoint",
                      recognise=is_checkpoint_file, force=force, inputs=inputs, check=check_written)


def _dense_model(info: ModelInfo, arch: Any = None, path: object = None) -> nn.Module:
    """The dense model `info` describes: by name, or (own class, ONNX file, model object) from `arch`
    checked against the record (`path` None: the record is trusted, as when it was just written)."""
    from rlprune_edge.models import build_model

    if info.source is None:
        return build_model(info.model, info.width, info.num_classes)
    kind = info.source["kind"]
    if kind == "object":  # a model object passed from Python: `arch` is a new dense one (models.live)
        return copy.deepcopy(check_object(info.source, arch, path or "being written"))
    onnx = kind == "onnx"  # converted from the recorded file (rlprune_edge.models.onnx_in)
    check, build = (check_onnx_arch, build_from_onnx) if onnx else (check_arch, build_from_record)
    return build(info.source if path is None else check(info.source, arch, path))


def reload_arch(info: ModelInfo, dense: nn.Module | None = None) -> Any:
    """What `load_checkpoint` needs as `arch` to reload a checkpoint written with `info`: nothing for a
    model by name, the spec for your own class or an ONNX file, the dense model for a model object."""
    if info.source is None:
        return None
    return dense if info.source["kind"] == "object" else info.source["spec"]


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    arch: Any = None) -> tuple[nn.Module, ModelInfo]:
    """Rebuild the model recorded in `path` (weights_only load); UserError naming the file on any problem.

    A checkpoint of your own model class (``info.source``) needs its spec again as `arch` (``--arch``),
    checked against the record before any code is imported; a checkpoint alone never imports code.
    """
    path = Path(path)
    if not path.is_file():
        what = _not_a_file(path)
        raise UserError(f"checkpoint {path} {what}; give the path of a .pt file written by rlprune-edge.")
    if is_onnx_spec(path):  # converted by resolve_model; a checkpoint of it comes from `import`
        raise UserError(f"{path} is an ONNX model, not an rlprune-edge checkpoint; make it one with `rlprune-edge "
                        f"import {quote(path)} --out model.pt`, then use model.pt with --arch {quote(path)}.")
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
        adopt_input_shape,
        build_model,
        is_named_architecture,
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
    if is_onnx_spec(spec):  # an ONNX file, converted by onnx2torch (rlprune_edge.models.onnx_in)
        return _onnx_model(spec, width, num_classes, data, name, arch)
    if is_user_spec(spec):
        if arch is not None:
            raise UserError(f"--arch is for reloading a checkpoint of your own model class; {name} {spec} already "
                            "names the class, so leave --arch out.")
        args = model_args if isinstance(model_args, dict) else parse_model_args(model_args)
        return _user_model(spec, args, width, num_classes, data)
    if is_named_architecture(spec):
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


def _onnx_model(spec: str, width: float, num_classes: int | None, data, name: str,
                arch: str | None) -> tuple[nn.Module, ModelInfo]:
    """An ONNX file converted to a module, checked to give (N, classes) logits at the data's input size."""
    from rlprune_edge.models.onnx_in import onnx_model

    wanted = num_classes if num_classes is not None or data is None else data.num_classes
    model, record, n = onnx_model(spec, shape=None if data is None else tuple(data.input_shape), num_classes=wanted,
                                  width=width, arch=arch, name=name)
    mean, std = (tuple(data.mean), tuple(data.std)) if data is not None else (FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    names = list(data.class_names) if data is not None and len(data.class_names) == n else [str(i) for i in range(n)]
    return model, ModelInfo(spec, 1.0, n, tuple(model.input_shape), mean, std, names, source=record)


def live_model(model: object, data: Any, name: str = "model", unused: dict | None = None) -> tuple[nn.Module, ModelInfo]:
    """A model object passed from Python: a copy, checked to give the data's class logits at its input
    size; its checkpoints record the class and the dense fingerprint (:mod:`rlprune_edge.models.live`).
    `unused` maps option names to values that must be None for an object (``--model-args``, ``--arch``)."""
    from rlprune_edge.models.live import OBJECT_PREFIX, class_path, object_record
    from rlprune_edge.models.user import check_classifier

    if not isinstance(model, nn.Module):
        raise UserError(f"{name} is a {type(model).__name__}; give a checkpoint path, a model name or spec, or a "
                        "torch.nn.Module.")
    for flag, value in (unused or {}).items():
        if value is not None:
            raise UserError(f"{flag} does not apply to a model object; leave it out.")
    shape = tuple(int(d) for d in data.input_shape)
    own = getattr(model, "input_shape", None)
    if own is not None and tuple(own) != shape:
        raise UserError(f"the model's input_shape {tuple(own)} differs from the data's {shape}; pass data of the "
                        "size the model takes (imagefolder@SIZE:DIR).")
    copied = copy.deepcopy(model).cpu()
    spec = OBJECT_PREFIX + class_path(copied)
    check_classifier(copied, shape, data.num_classes, spec)  # type: ignore[arg-type]
    copied.input_shape = shape
    info = ModelInfo(spec, 1.0, data.num_classes, shape, tuple(data.mean), tuple(data.std),  # type: ignore[arg-type]
                     list(data.class_names), source=object_record(copied))
    return copied, info


# --- the embedded default model -----------------------------------------------------------------

def default_checkpoint_path() -> Path:
    """Where the shipped default (VGG-19 width 0.25 on Fashion-MNIST) lives inside the package."""
    return Path(__file__).resolve().parent / "assets" / DEFAULT_FILENAME


def cache_dir() -> Path:
    """The user cache dir for rlprune-edge (see :func:`rlprune_edge.paths.cache_root`)."""
    return cache_root()
