"""timm's architectures by name: ``--model timm:mobilenetv3_small_100`` (the optional ``timm`` extra).

Architectures only, randomly initialised: nothing is downloaded (``pretrained=False``); trained
weights come in through ``rlprune-edge import WEIGHTS --model timm:NAME``. timm is a library the
user installed, so building a recorded ``timm:NAME`` from a checkpoint imports no code of theirs.
"""

from __future__ import annotations

import difflib

from torch import nn

from rlprune_edge.errors import UserError

TIMM_PREFIX = "timm:"
INSTALL_HINT = "pip install 'rlprune-edge[timm]'"


def _timm():
    try:
        import timm
    except ImportError:
        raise UserError(f"timm: models need the timm package, which is not installed; {INSTALL_HINT}.") from None
    return timm


def is_timm_spec(spec: str | None) -> bool:
    return bool(spec) and str(spec).startswith(TIMM_PREFIX)


def is_timm_name(spec: str) -> bool:
    """True for ``timm:NAME`` with NAME one of timm's architectures (False when timm is not installed)."""
    if not is_timm_spec(spec):
        return False
    try:
        import timm
    except ImportError:
        return False
    return bool(timm.is_model(spec[len(TIMM_PREFIX):]))


def check_timm_name(spec: str) -> str:
    """timm's architecture name of a ``timm:NAME`` spec; UserError naming close matches otherwise."""
    timm = _timm()
    name = spec[len(TIMM_PREFIX):]
    if not name or not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f" such as {', '.join(close)}" if close else " (timm.list_models() lists them)"
        raise UserError(f"unknown timm model {name!r}; give timm:NAME with one of timm's architectures{hint}.")
    return name


def build_timm(spec: str, num_classes: int) -> nn.Module:
    """A randomly initialised timm model with `num_classes` outputs and ``input_shape`` from its config."""
    timm = _timm()
    name = check_timm_name(spec)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    except Exception as exc:  # timm raises many kinds for an architecture it cannot build this way
        raise UserError(f"timm could not build {name} with {num_classes} classes ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:160]}); choose another timm architecture.") from None
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size") or (3, 224, 224)
    model.input_shape = tuple(int(d) for d in size)
    return model


def timm_module(spec: str, num_classes: int) -> nn.Module:
    """The bare module (for parameter counts on the meta device)."""
    return _timm().create_model(spec[len(TIMM_PREFIX):], pretrained=False, num_classes=num_classes)
