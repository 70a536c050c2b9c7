"""Model zoo: the RL-Pruner paper's CIFAR-style CNNs (32x32 input), any torchvision classifier and
timm's architectures (the optional ``timm`` extra).

    model = build_model("vgg19", width=0.25, num_classes=10)
    model = build_model("torchvision:resnet18", num_classes=10)   # random init, no download
    model = build_model("timm:mobilenetv3_small_100", num_classes=10)

Every built model carries ``model.input_shape`` (C, H, W), the input size it is meant for.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from rlprune_edge.errors import UserError
from rlprune_edge.models.densenet import build_densenet
from rlprune_edge.models.googlenet import build_googlenet
from rlprune_edge.models.mobilenetv3 import build_mobilenetv3
from rlprune_edge.models.resnet import build_resnet
from rlprune_edge.models.timm_models import TIMM_PREFIX, build_timm, is_timm_name, is_timm_spec, timm_module
from rlprune_edge.models.vgg import build_vgg

ZOO_NAMES: tuple[str, ...] = (
    "vgg11", "vgg16", "vgg19", "resnet20", "resnet56",
    "mobilenetv3_small", "mobilenetv3_large", "googlenet", "densenet121",
)
TORCHVISION_PREFIX = "torchvision:"
CIFAR_INPUT_SHAPE: tuple[int, int, int] = (3, 32, 32)

_BUILDERS: dict[str, Callable[[str, float, int], nn.Module]] = {
    "vgg11": build_vgg, "vgg16": build_vgg, "vgg19": build_vgg,
    "resnet20": build_resnet, "resnet56": build_resnet,
    "mobilenetv3_small": build_mobilenetv3, "mobilenetv3_large": build_mobilenetv3,
    "googlenet": build_googlenet, "densenet121": build_densenet,
}
# Candidate square input sizes tried, smallest first, for torchvision models that reject 32x32.
_TORCHVISION_SIZES = (32, 64, 96, 128, 224, 299)


def valid_names_sentence() -> str:
    """Human-readable list of accepted model names."""
    return (", ".join(ZOO_NAMES) + f", {TORCHVISION_PREFIX}NAME for a torchvision classification model, or "
            f"{TIMM_PREFIX}NAME for a timm architecture")


def torchvision_names() -> list[str]:
    """Names of torchvision's classification models (no weights involved)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def is_model_name(name: str) -> bool:
    """True if `name` is a zoo name, a `torchvision:NAME` classification model or a `timm:NAME` architecture."""
    if name in ZOO_NAMES or is_timm_name(name):
        return True
    return name.startswith(TORCHVISION_PREFIX) and name[len(TORCHVISION_PREFIX):] in torchvision_names()


def build_model(name: str, width: float = 1.0, num_classes: int = 10) -> nn.Module:
    """Build a randomly initialised model; raises UserError for an unknown name or bad width/classes."""
    if not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
        raise UserError(f"width must be a positive number, got {width!r}; use e.g. width 0.25 or 1.0.")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}.")
    if name in _BUILDERS:
        if width > 1.0 or num_classes > 1000:  # else the largest zoo model has 20M parameters (80 MB)
            check_weights_fit(name, float(width), num_classes)
        model = _BUILDERS[name](name, float(width), num_classes)
        model.input_shape = CIFAR_INPUT_SHAPE
        return model
    if name.startswith(TORCHVISION_PREFIX):
        return _build_torchvision(name[len(TORCHVISION_PREFIX):], float(width), num_classes)
    if is_timm_spec(name):
        if width != 1.0:
            raise UserError(f"a width multiplier applies only to the built-in zoo ({', '.join(ZOO_NAMES)}), not to {name}.")
        check_weights_fit(name, width, num_classes)
        return build_timm(name, num_classes)
    raise UserError(f"unknown model {name!r}; choose one of {valid_names_sentence()}.")


def parameter_count(name: str, width: float = 1.0, num_classes: int = 10) -> int | None:
    """Parameters of `name` at `width`, counted on a build on torch's 'meta' device (no memory, a few
    milliseconds); None when the architecture cannot be built there."""
    try:
        with torch.device("meta"):
            if name in _BUILDERS:
                model = _BUILDERS[name](name, float(width), num_classes)
            elif is_timm_spec(name):
                model = timm_module(name, num_classes)
            else:
                model = _torchvision_module(name[len(TORCHVISION_PREFIX):], num_classes)
        return sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    except (RuntimeError, NotImplementedError, ValueError, TypeError):  # e.g. an init that copies data
        return None


def check_weights_fit(name: str, width: float, num_classes: int) -> None:
    """UserError, before anything is allocated, when the model's float32 weights would take over
    WEIGHTS_MEMORY_SHARE of the memory available now (training needs several times more)."""
    from rlprune_edge.limits import WEIGHTS_MEMORY_SHARE, available_memory, gib

    avail = available_memory()
    count = parameter_count(name, width, num_classes) if avail else None
    if not count or 4 * count <= WEIGHTS_MEMORY_SHARE * avail:
        return
    arch = f"{name} at width {width:g}" if name in _BUILDERS else name
    fit = f" (at most about {width * math.sqrt(WEIGHTS_MEMORY_SHARE * avail / (4 * count)):.2g} here)" \
        if name in _BUILDERS else ""
    amount = f"{count / 1e9:,.1f} billion" if count >= 1e9 else f"{count / 1e6:,.0f} million"
    raise UserError(f"{arch} has {amount} parameters, whose float32 weights alone take {gib(4 * count)}, "
                    f"over half of the {gib(avail)} of memory available on this machine; use a smaller width{fit} "
                    "or a machine with more memory.")


def _build_torchvision(tv_name: str, width: float, num_classes: int) -> nn.Module:
    names = torchvision_names()
    if tv_name not in names:
        raise UserError(
            f"unknown torchvision model {tv_name!r}; choose a classification model such as "
            f"{', '.join(n for n in names if n in ('resnet18', 'mobilenet_v3_small', 'efficientnet_b0'))} "
            f"(all {len(names)}: torchvision.models.list_models(module=torchvision.models))."
        )
    if width != 1.0:
        raise UserError(f"a width multiplier applies only to the built-in zoo ({', '.join(ZOO_NAMES)}), not to torchvision:{tv_name}.")
    check_weights_fit(TORCHVISION_PREFIX + tv_name, width, num_classes)
    model = _torchvision_module(tv_name, num_classes)
    model.input_shape = _torchvision_input_shape(model)
    return model


def _torchvision_module(tv_name: str, num_classes: int) -> nn.Module:
    import torchvision

    kwargs: dict = {"weights": None, "num_classes": num_classes}
    if tv_name in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    return torchvision.models.get_model(tv_name, **kwargs)


def _torchvision_input_shape(model: nn.Module) -> tuple[int, int, int]:
    """Smallest candidate square input the model accepts (many accept 32x32; ViTs need 224)."""
    image_size = getattr(model, "image_size", None)
    if isinstance(image_size, int):
        return (3, image_size, image_size)
    return next(((3, s, s) for s in _TORCHVISION_SIZES if accepts_input(model, (3, s, s))), (3, 224, 224))


def accepts_input(model: nn.Module, shape: tuple[int, int, int]) -> bool:
    """True if `model` runs on one input of `shape` (C, H, W) and returns one row of logits."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *shape))
        return isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[0] == 1
    except (RuntimeError, ValueError, AssertionError):
        return False
    finally:
        model.train(was_training)


def adopt_input_shape(model: nn.Module, shape: tuple[int, int, int], name: str) -> tuple[int, int, int]:
    """Record the data's input `shape` on `model` when the model runs on it; UserError saying what fits otherwise."""
    shape = tuple(int(d) for d in shape)  # type: ignore[assignment]
    own = model_input_shape(model)
    if own != shape:
        if not accepts_input(model, shape):
            raise UserError(f"{name} does not run on {shape[1]}x{shape[2]} inputs (it was built for "
                            f"{own[1]}x{own[2]}); use data of that size (imagefolder@{own[1]}:DIR for an image "
                            "folder) or a model with adaptive pooling, such as torchvision:resnet18.")
        model.input_shape = shape
    return shape


def model_input_shape(model: nn.Module) -> tuple[int, int, int]:
    """The input shape recorded on a built model (CIFAR 3x32x32 when absent)."""
    shape = getattr(model, "input_shape", None)
    return tuple(shape) if shape is not None else CIFAR_INPUT_SHAPE  # type: ignore[return-value]


def is_named_architecture(spec: str) -> bool:
    """A spec the zoo builds by name (zoo, ``torchvision:``, ``timm:``), known or not: never a file."""
    return spec in ZOO_NAMES or spec.startswith(TORCHVISION_PREFIX) or is_timm_spec(spec)


__all__ = ["TIMM_PREFIX", "ZOO_NAMES", "is_named_architecture", "accepts_input", "adopt_input_shape", "build_model", "is_model_name", "model_input_shape", "torchvision_names",
           "valid_names_sentence"]
