"""Blocks that can be removed whole (depth pruning), and how much each one does.

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

A plain network (a VGG) has no residual blocks, but its *plain units* can go the same way: in an
``nn.Sequential``, a Conv2d(c -> c, odd square kernel, 'same' padding, stride 1) + BatchNorm2d + ReLU
whose input is already non-negative (the nearest earlier element that is not a max-pool or an
identity is a ReLU) is replaced by three identities. Shapes stay the same and the next layer sees a
non-negative map as before. A unit is named by its conv's path (``features.43``). On host-cpu a
VGG-19 w0.25 with nine such units removed and the rest at 0.9 of its width measured 0.424x the
dense time and, after the product's fine-tune, kept 0.7 points more test accuracy than the uniform
plan that fits the same latency (BENCHMARKS.md, "plain-VGG layer removal").

Block importance is ShortGPT's *block influence* (Men et al. 2024), ``1 - cos(x_in, x_out)``
averaged over images and positions (the vectors are the channel vectors at one position): a block
that barely turns its input does little and goes first.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

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


def _same_shape_conv(conv: nn.Module) -> bool:
    """A dense conv whose output has its input's shape (c -> c, stride 1, odd square 'same' kernel)."""
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or conv.in_channels != conv.out_channels:
        return False
    k = conv.kernel_size[0]
    return (conv.kernel_size == (k, k) and k % 2 == 1 and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and conv.padding == (k // 2, k // 2))


def plain_units(model: nn.Module) -> list[str]:
    """Conv paths of the removable plain units of `model` (module docstring), in module order."""
    out = []
    for name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for i in range(1, len(children) - 2):
            (cname, conv), (_, bn), (_, act) = children[i : i + 3]
            if not (_same_shape_conv(conv) and isinstance(bn, nn.BatchNorm2d) and type(act) is nn.ReLU):
                continue
            before = [m for _, m in children[:i] if not isinstance(m, (nn.MaxPool2d, nn.Identity))]
            if before and type(before[-1]) is nn.ReLU:
                out.append(f"{name}.{cname}" if name else cname)
    return out


def _unit_paths(model: nn.Module, unit: str) -> list[str]:
    """The paths of a plain unit's conv, BatchNorm and ReLU."""
    parent_name, _, child = unit.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    names = list(parent._modules)
    i = names.index(child)
    return [f"{parent_name}.{n}" if parent_name else n for n in names[i : i + 3]]


def skippable_blocks(model: nn.Module, rules: dict[str, Callable[[nn.Module], bool]] | None = None,
                     plain: bool = True) -> list[str]:
    """Names of the blocks of `model` that can be removed whole, in module order (input to output):
    residual blocks by `rules`, and plain units (by their conv's path) unless `plain` is False."""
    rules = skip_rules() if rules is None else rules
    units = set(plain_units(model)) if plain else set()
    out = []
    for name, m in model.named_modules():
        rule = rules.get(_type_key(m))
        if name and ((rule is not None and rule(m)) or name in units):
            out.append(name)
    return out


def block_members(model: nn.Module, names: Iterable[str]) -> list[str]:
    """The module paths that removing the blocks `names` of `model` (the dense build) takes out of
    the graph: a residual block's own path, a plain unit's conv, BatchNorm and ReLU paths."""
    units = set(plain_units(model))
    return [p for n in names for p in (_unit_paths(model, n) if n in units else [n])]


def drop_blocks(model: nn.Module, names: Iterable[str], copy_model: bool = False) -> nn.Module:
    """Replace each named block by ``nn.Identity()`` (in place unless `copy_model`); returns the model.

    Raises ValueError for a name that is not a removable block of `model`."""
    names = list(names)
    if not names:
        return model
    if copy_model:
        model = copy.deepcopy(model)
    allowed = set(skippable_blocks(model))
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ValueError(f"{bad[0]!r} is not a removable block of this model")
    for path in block_members(model, names):
        parent_name, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.Identity())
    return model


def removal_priority(model: nn.Module, influence: Mapping[str, float]) -> dict[str, float]:
    """Which removable blocks go first (lower first): a residual block's block influence; a plain
    unit's place from the output end, ``(k + 1) / n`` for the k-th last of n units.

    Why not block influence for plain units: on the shipped VGG-19 w0.25 it ordered them almost
    backwards. Each unit removed alone, BatchNorm recalibrated and fine-tuned for 100 KD batches (the
    search's screen), the selection split's KL to the dense model fell with depth, 0.10-0.15 for
    stage 1-3 units, 0.03-0.06 for stage 4, 0.01-0.02 for stage 5 (accuracy 87-89% against
    91.5-92.2%), while influence ranked the first unit lowest (docs/compress.md, "Plain units")."""
    units = [b for b in plain_units(model) if b in influence]
    out = {b: float(v) for b, v in influence.items() if b not in units}
    out.update({u: (len(units) - i) / len(units) for i, u in enumerate(units)})
    return out


def unit_groups(groups: Sequence[Any], units: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Plain unit -> (the group its conv produces, the group its conv reads), from the dense model's
    channel groups (``graph.prunable_groups``: ``name`` and ``members`` of (module, kind))."""
    out = {}
    for unit in units:
        made = next((g.name for g in groups if (unit, "out") in g.members), None)
        read = next((g.name for g in groups if (unit, "in") in g.members), None)
        if made is not None and read is not None:
            out[unit] = (made, read)
    return out


def keep_past_units(keep: Mapping[str, int], io: Mapping[str, tuple[str, str]], removed: Iterable[str],
                    channels: Mapping[str, int]) -> dict[str, int]:
    """Keep counts as the dense model's layers see them once the plain units `removed` are gone:
    the layer after a removed unit reads the unit's input group, so the unit's own group takes that
    group's count (`io`: ``unit_groups``, in module order, so a chain of removed units passes the
    first one's input on; `channels`: dense widths for groups missing from `keep`)."""
    out = dict(keep)
    gone = set(removed)
    for unit, (made, read) in io.items():
        if unit in gone:
            out[made] = out.get(read, channels.get(read, 0))
    return out


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
    the images of `batches` and the positions of each feature map (channel vectors). A plain unit's
    input is its conv's, its output its ReLU's."""
    names = list(skippable_blocks(model) if blocks is None else blocks)
    sums = dict.fromkeys(names, 0.0)
    counts = dict.fromkeys(names, 0)
    inputs_seen: dict[str, torch.Tensor] = {}
    ends = {}
    for n in names:
        paths = block_members(model, [n])
        ends[n] = (model.get_submodule(paths[0]), model.get_submodule(paths[-1]))

    def keep_input(name: str):
        def record(mod: nn.Module, inputs: tuple) -> None:
            inputs_seen[name] = inputs[0]
        return record

    def hook(name: str):
        def record(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs_seen.pop(name)
            cos = F.cosine_similarity(x.flatten(2).float(), output.flatten(2).float(), dim=1, eps=1e-8)
            sums[name] += float((1.0 - cos).mean(dim=1).sum())
            counts[name] += int(x.shape[0])
        return record

    handles = [h for n in names for h in (ends[n][0].register_forward_pre_hook(keep_input(n)),
                                          ends[n][1].register_forward_hook(hook(n)))]
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
