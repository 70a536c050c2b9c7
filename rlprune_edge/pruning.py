"""Keep counts -> a physically smaller copy of the model; channel alignment.

All groups are pruned in one pass from the index plans that ``prunable_groups`` computed on the
dense model: for each group the top-k channels by importance are kept, every member module's
removed indices are collected (in the module's original coordinates, so several groups touching
one module, e.g. concat slices, simply union), and each module side is shrunk once with
``index_select``. No re-trace is needed per candidate; pass ``groups`` and ``scores`` computed once
on the parent model and a candidate costs a deep copy plus index selection.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from rlprune_edge.errors import UserError
from rlprune_edge.graph import OUT, Group, prunable_groups
from rlprune_edge.importance import channel_scores
from rlprune_edge.layers import handler_for


def align_keep(keep: Mapping[str, int], groups: Sequence[Group], channel_multiple: int = 1) -> dict[str, int]:
    """Round keep counts to the nearest multiple of `channel_multiple`.

    Never below one multiple (or the group's channel count if that is smaller), never above the
    original count. A group with ``blocks`` > 1 (grouped convs) rounds to a multiple of
    lcm(`channel_multiple`, ``blocks``), so that every conv group keeps the same number of channels. Unknown group names, non-integer or out-of-range counts raise UserError; a
    group that is not prunable only accepts its full channel count.
    """
    if isinstance(channel_multiple, bool) or not isinstance(channel_multiple, int) or channel_multiple < 1:
        raise UserError(f"channel_multiple must be a positive integer, got {channel_multiple!r}.")
    by_name = {g.name: g for g in groups}
    out: dict[str, int] = {}
    for name, k in keep.items():
        g = by_name.get(name)
        if g is None:
            raise UserError(
                f"keep names group {name!r}, which the model does not have; "
                "use names from rlprune_edge.prunable_groups(model, example_inputs)."
            )
        try:
            if isinstance(k, bool):
                raise TypeError
            k = operator.index(k)
        except TypeError:
            raise UserError(f"keep count for group {name!r} must be an integer, got {k!r}.") from None
        if k <= 0 or k > g.channels:
            raise UserError(f"keep count for group {name!r} is {k}; it must be between 1 and {g.channels}.")
        if not g.prunable:
            if k != g.channels:
                raise UserError(f"group {name!r} cannot be pruned ({g.reason}); keep all {g.channels} channels.")
            out[name] = k
            continue
        m = math.lcm(channel_multiple, g.blocks)
        rounded = int((k + m / 2) // m) * m  # nearest multiple, halves round up
        out[name] = min(g.channels, max(min(m, g.channels), rounded))
    return out


def _keep_index(size: int, removed: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(size, dtype=torch.bool)
    mask[removed] = False
    return mask.nonzero().squeeze(1)


def _shrink(module: nn.Module, kind: str, removed: torch.Tensor) -> None:
    """Remove channels `removed` from `module` on side `kind`, in place (the layer's handler does the slicing)."""
    handler = handler_for(module)
    if handler is None or not handler.prunable:
        raise UserError(f"cannot shrink module of type {type(module).__name__}; mark its group unprunable.")
    size = handler.size(module, kind)
    if size is not None:  # None: nothing per-channel on that side (a single-parameter PReLU)
        handler.shrink(module, kind, _keep_index(size, removed))


def _side_size(module: nn.Module, kind: str) -> int | None:
    handler = handler_for(module)
    return handler.size(module, kind) if handler is not None else None


def _check_matches(model: nn.Module, groups: Iterable[Group]) -> None:
    """Groups computed on a different (e.g. already pruned) model would prune the wrong channels."""
    for g in groups:
        for p in g.plan:
            try:
                module = model.get_submodule(p.module)
            except AttributeError:
                module = None
            size = _side_size(module, p.kind) if module is not None else None
            if module is None or (size is not None and len(p.idxs) and int(p.idxs.max()) >= size):
                raise UserError(
                    f"group {g.name!r} does not match this model (member {p.module}); "
                    "recompute the groups with prunable_groups() on the model being pruned."
                )
        if g.channels != _side_size(model.get_submodule(g.name), OUT):
            raise UserError(
                f"group {g.name!r} has {g.channels} channels but the model's layer has "
                f"{_side_size(model.get_submodule(g.name), OUT)}; recompute the groups on this model."
            )


def select_channels(
    groups: Sequence[Group], keep: Mapping[str, int], scores: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """{group: sorted indices of the channels to remove}: everything but the top-`keep` by score.

    Ties keep the lower index (stable sort). Groups kept whole are left out. A group with ``blocks``
    > 1 keeps the top keep/blocks channels of every cell (keep must be a multiple of ``blocks``).
    """
    out: dict[str, torch.Tensor] = {}
    for g in groups:
        k = keep.get(g.name, g.channels)
        if not g.prunable or k >= g.channels:
            continue
        s = scores.get(g.name)
        if not isinstance(s, torch.Tensor) or tuple(s.shape) != (g.channels,):
            raise UserError(
                f"scores for group {g.name!r} must be a tensor of {g.channels} values; "
                f"got {type(s).__name__ if not isinstance(s, torch.Tensor) else tuple(s.shape)}."
            )
        s = s.detach().float().cpu()
        if g.blocks > 1:
            if k % g.blocks:
                raise UserError(
                    f"keep count for group {g.name!r} is {k}; its grouped convs need a multiple of {g.blocks} "
                    "(use align_keep, or prune(), which aligns)."
                )
            drop = []
            for cell in range(g.blocks):
                members = (g.block_ids == cell).nonzero().squeeze(1)
                order = torch.sort(s[members], descending=True, stable=True).indices
                drop.append(members[order[k // g.blocks:]])
            out[g.name] = torch.sort(torch.cat(drop)).values
            continue
        order = torch.sort(s, descending=True, stable=True).indices
        out[g.name] = torch.sort(order[k:]).values
    return out


def removal_plan(
    groups: Sequence[Group], removed: Mapping[str, torch.Tensor]
) -> dict[tuple[str, str], torch.Tensor]:
    """{(module, kind): removed channel indices in the module's own coordinates} for `removed` per group."""
    parts: dict[tuple[str, str], list[torch.Tensor]] = {}
    for g in groups:
        if g.name not in removed:
            continue
        drop = torch.zeros(g.channels, dtype=torch.bool)
        drop[removed[g.name]] = True
        for p in g.plan:
            idxs = p.idxs[drop[p.root_idxs]]
            if len(idxs):
                parts.setdefault((p.module, p.kind), []).append(idxs)
    return {key: torch.unique(torch.cat(v)) for key, v in parts.items()}


def prune(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    keep: Mapping[str, int],
    importance: str = "taylor",
    calib: Iterable | None = None,
    channel_multiple: int = 1,
    scores: Mapping[str, torch.Tensor] | None = None,
    groups: Sequence[Group] | None = None,
) -> nn.Module:
    """A physically smaller deep copy of `model` keeping `keep[name]` channels of each named group.

    Groups missing from `keep` stay whole; counts are aligned with ``align_keep``. Channels are ranked
    by `scores` ({group: tensor}) if given, else by ``channel_scores(method=importance, calib=calib)``.
    `groups` (from ``prunable_groups`` on this same model) skips the trace. `model` is not modified.
    """
    if groups is None:
        groups = prunable_groups(model, example_inputs)
    aligned = align_keep(keep, groups, channel_multiple)
    todo = [g for g in groups if g.prunable and aligned.get(g.name, g.channels) < g.channels]
    _check_matches(model, todo)
    if todo and scores is None:
        scores = channel_scores(model, example_inputs, todo, method=importance, calib=calib)
    removed = select_channels(todo, aligned, scores or {})
    return _copy_and_shrink(model, removal_plan(todo, removed))


def _copy_and_shrink(model: nn.Module, plan: Mapping[tuple[str, str], torch.Tensor]) -> nn.Module:
    """Deep copy of `model` with `plan` applied, without first copying tensors that get replaced.

    The copy starts out sharing the touched modules' tensors with `model`; shrinking replaces them
    with new, smaller tensors (``index_select`` allocates), and any tensor still shared afterwards is
    cloned, so the result never aliases the input.
    """
    touched = {name for name, _ in plan}
    shared: dict[int, torch.Tensor] = {}
    for name in touched:
        module = model.get_submodule(name)
        for t in (*module._parameters.values(), *module._buffers.values()):
            if t is not None:
                shared[id(t)] = t
    pruned = copy.deepcopy(model, memo=dict(shared))
    for (name, kind), removed in plan.items():
        _shrink(pruned.get_submodule(name), kind, removed)
    for name in touched:
        module = pruned.get_submodule(name)
        for store in (module._parameters, module._buffers):
            for key, t in store.items():
                if t is not None and id(t) in shared:
                    store[key] = (
                        nn.Parameter(t.detach().clone(), requires_grad=t.requires_grad)
                        if isinstance(t, nn.Parameter)
                        else t.clone()
                    )
    return pruned


def _prune_via_depgraph(
    model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], removed: Mapping[str, torch.Tensor]
) -> nn.Module:
    """Reference path (benchmarks and tests): trace a deep copy with Torch-Pruning, prune group by group.

    `removed` is ``select_channels``' output; group names are root modules with identity index maps.
    """
    import torch_pruning as tp

    from rlprune_edge.graph import _as_input_tuple

    pruned = copy.deepcopy(model)
    modes = {m: m.training for m in pruned.modules()}
    with torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(pruned, _as_input_tuple(example_inputs), verbose=False)
    for m, mode in modes.items():
        m.training = mode
    for name, idxs in removed.items():
        module = pruned.get_submodule(name)
        pruner = dg.get_pruner_of_module(module)
        dg.get_pruning_group(module, pruner.prune_out_channels, idxs.tolist()).prune()
    return pruned
