"""Residual blocks that can be removed whole (depth pruning), and how much each one does.

A block ``y = x + f(x)`` (or ``relu(x + f(x))`` with a non-negative input, as in a ResNet basic
block that follows a ReLU) whose shortcut is the identity can be replaced by ``nn.Identity()``:
the network stays valid, every shape stays the same, and all of the block's layers leave the
deployed graph. On runtimes where a small CNN's time is mostly per-layer overhead (ONNX Runtime on
a CPU, eager CUDA) that removes far more latency than narrowing the same layers: on host-cpu,
ResNet-20 w1 with one block per stage removed runs at 0.66x the dense time at full width, while
every group at its narrowest (16 channels) runs at 0.41x.

Which block types qualify is a small registry keyed by layer type (Torch-Pruning's style): a
predicate per class that says whether *this* instance has an identity shortcut. Built in: the
zoo's ResNet ``BasicBlock`` and MobileNetV3 ``InvertedResidual``, and torchvision's ResNet
``BasicBlock``/``Bottleneck`` and MobileNet ``InvertedResidual``.

Block importance is ShortGPT's *block influence* (Men et al. 2024), ``1 - cos(x_in, x_out)``
averaged over images and positions (the vectors are the channel vectors at one position): a block
that barely turns its input does little and goes first.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _zoo_basic_block(m: nn.Module) -> bool:
    return isinstance(getattr(m, "shortcut", None), nn.Identity)


def _zoo_inverted_residual(m: nn.Module) -> bool:
    return bool(getattr(m, "use_residual", False))


def _tv_resnet_block(m: nn.Module) -> bool:
    return getattr(m, "downsample", 0) is None


def _tv_inverted_residual(m: nn.Module) -> bool:
    return bool(getattr(m, "use_res_connect", False))


def skip_rules() -> dict[str, Callable[[nn.Module], bool]]:
    """``{"module.path:ClassName": predicate}`` — the block types whose instances may be removed when
    the predicate holds (an identity shortcut). A fresh dict: callers may extend their copy."""
    return {
        "rlprune_edge.models.resnet:BasicBlock": _zoo_basic_block,
        "rlprune_edge.models.mobilenetv3:InvertedResidual": _zoo_inverted_residual,
        "torchvision.models.resnet:BasicBlock": _tv_resnet_block,
        "torchvision.models.resnet:Bottleneck": _tv_resnet_block,
        "torchvision.models.mobilenetv2:InvertedResidual": _tv_inverted_residual,
        "torchvision.models.mobilenetv3:InvertedResidual": _tv_inverted_residual,
    }


def _type_key(m: nn.Module) -> str:
    return f"{type(m).__module__}:{type(m).__qualname__}"


def skippable_blocks(model: nn.Module, rules: dict[str, Callable[[nn.Module], bool]] | None = None) -> list[str]:
    """Names of the blocks of `model` that can be removed whole, in module order (input to output)."""
    rules = skip_rules() if rules is None else rules
    out = []
    for name, m in model.named_modules():
        rule = rules.get(_type_key(m))
        if name and rule is not None and rule(m):
            out.append(name)
    return out


def drop_blocks(model: nn.Module, names: Iterable[str], copy_model: bool = False) -> nn.Module:
    """Replace each named block by ``nn.Identity()`` (in place unless `copy_model`); returns the model.

    Raises ValueError for a name that is not a removable block of `model`."""
    names = list(names)
    if not names:
        return model
    if copy_model:
        model = copy.deepcopy(model)
    allowed = set(skippable_blocks(model))
    for name in names:
        if name not in allowed:
            raise ValueError(f"{name!r} is not a removable residual block of this model")
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.Identity())
    return model


def removed_blocks(model: nn.Module, reference: nn.Module) -> list[str]:
    """Blocks that are removable in `reference` (the dense build) and are ``nn.Identity`` in `model`."""
    mods = dict(model.named_modules())
    return [n for n in skippable_blocks(reference) if isinstance(mods.get(n), nn.Identity)]


def block_of_slot(slot: str, blocks: Sequence[str]) -> str | None:
    """The block (of `blocks`) a latency slot belongs to, or None.

    Slot names are ONNX node names written by torch's exporter (``/features/features.3/block/
    block.0/Conv``: each scope segment is the full module path) or module paths (torch backend:
    ``layer1.2.conv1``)."""
    for b in blocks:
        if f"/{b}/" in slot or slot.startswith(b + "."):
            return b
    return None


@torch.no_grad()
def block_influence(model: nn.Module, batches: Iterable[torch.Tensor],
                    blocks: Sequence[str] | None = None) -> dict[str, float]:
    """ShortGPT's block influence ``1 - cos(input, output)`` of each removable block, averaged over
    the images of `batches` and the positions of each feature map (channel vectors)."""
    names = list(skippable_blocks(model) if blocks is None else blocks)
    sums = dict.fromkeys(names, 0.0)
    counts = dict.fromkeys(names, 0)

    def hook(name: str):
        def record(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs[0]
            cos = F.cosine_similarity(x.flatten(2).float(), output.flatten(2).float(), dim=1, eps=1e-8)
            sums[name] += float((1.0 - cos).mean(dim=1).sum())
            counts[name] += int(x.shape[0])
        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    was = model.training
    model.eval()
    try:
        for x in batches:
            model(x)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return {n: sums[n] / max(1, counts[n]) for n in names}
