"""Coupled channel groups of a CNN, found by Torch-Pruning's DependencyGraph.

A *group* is a set of channels that must be removed together: a conv's output channels, the
BatchNorm after it, the matching input channels of every consumer (through residual adds, concat
slices, depthwise convs, squeeze-excitation blocks, flatten into Linear). ``prunable_groups`` traces
the model once with Torch-Pruning, then turns every group into a plain, picklable description
with a stable human-readable name (the first conv/linear whose output channels the group
controls, in ``named_modules`` order) and an index plan: for every member module, which of its
channels map to which channel of the group (several of them when the group's channel was copied,
as by GhostNet's concat of a conv with its own depthwise copy: ``graph_rules.copy_classes``). ``prune`` and ``channel_scores`` work from that plan
alone, so pruning a candidate needs no fresh trace. What is refused and why (channel shuffles,
channel splits, ops that mix channels) and how grouped convs are kept consistent: ``graph_rules``; channels
tied to the model input, a constant or a parameter used directly (``conv(x) + x``): ``graph_walk``;
a channel count held as a literal of the model code (``x.view(n, 16, -1)``): ``graph_check``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from rlprune_edge.errors import UserError
from rlprune_edge.graph_check import output_shapes, refuse_breaking, shape_sensitive
from rlprune_edge.graph_rules import (
    COPIES_UNNAMED_REASON,
    PROBLEM_ATTR,
    SafeDependencyGraph,
    channel_blocks,
    copies_problem,
    copy_classes,
    is_depthwise,
    module_problem,
    op_problem,
    tie_kind,
)
from rlprune_edge.graph_walk import layer_leaf, leaf_reason, op_leaf
from rlprune_edge.layers import DEPTHWISE, IN, OUT, filter_bank, handler_for

# Member kinds in a plan (OUT, IN, DEPTHWISE; defined in ``layers``, imported from here by callers):
# output channels (rows of a filter bank, per-channel norm params), input channels (columns of a
# consumer), or a depthwise conv whose in and out move together.


@dataclass(eq=False)
class MemberPlan:
    """One member of a group: channels ``idxs`` of ``module`` (``kind`` side) follow group channels ``root_idxs``."""

    module: str
    kind: str
    idxs: torch.Tensor
    root_idxs: torch.Tensor


@dataclass(eq=False)
class Group:
    """A set of coupled channels, pruned together.

    ``members`` lists (module name, kind) with kind "out", "in" or "depthwise". ``flops_share`` is the
    fraction of the model's conv/linear MACs in the layers whose output channels this group controls;
    ``coupled_flops_share`` also counts the consumers whose input channels it controls (the MACs that
    shrink when the group shrinks). Rows for a conv/linear whose output channels belong to another
    group (residual partners, depthwise convs) have ``prunable=False``, ``follows`` = that group.
    ``blocks`` > 1 when a grouped conv (ResNeXt, RegNet) shares the channels: they fall into
    ``blocks`` equal cells (``block_ids``: the cell of every channel) that must lose channels in equal
    numbers, so keep counts are multiples of ``blocks``.
    """

    name: str
    channels: int
    prunable: bool
    reason: str
    members: list[tuple[str, str]]
    flops_share: float
    coupled_flops_share: float = 0.0
    follows: list[str] = field(default_factory=list)
    plan: list[MemberPlan] = field(default_factory=list, repr=False)
    blocks: int = 1
    block_ids: torch.Tensor | None = field(default=None, repr=False)


def _as_input_tuple(example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Example inputs as a tuple of tensors that require grad (so frozen models still trace)."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or not all(
        isinstance(t, torch.Tensor) for t in example_inputs
    ):
        raise UserError(
            "example_inputs must be a tensor or a tuple of tensors shaped like one model input batch; "
            f"got {type(example_inputs).__name__}."
        )
    out = []
    for t in example_inputs:
        t = t.detach().clone()
        if t.is_floating_point():
            t.requires_grad_(True)
        out.append(t)
    return tuple(out)


def _mapping_problem(name: str, module: nn.Module, item: _RawItem, pruner: object) -> str | None:
    """Index maps must stay inside the member (several channels per group channel: ``copies_problem``)."""
    out_side = item.handler == pruner.prune_out_channels or is_depthwise(module)
    size = pruner.get_out_channels(module) if out_side else pruner.get_in_channels(module)
    bad = size is not None and (not item.idxs or max(item.idxs) >= size or min(item.idxs) < 0)
    # a (non-depthwise) conv/linear's outputs move as a whole: all of them belong to this group
    if out_side and not is_depthwise(module) and _is_root(module):
        bad = bad or len(set(item.idxs)) != size
    if bad:
        return f"channel counts do not line up at {name} (a broadcast or reshape across channels?)"
    return None


def _macs_hook(store: dict[nn.Module, int]):
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if not isinstance(output, torch.Tensor) or output.dim() == 0 or not inputs:
            return
        macs = handler_for(module).macs(module, inputs[0], output)  # hooked on filter banks only
        store[module] = store.get(module, 0) + int(macs)

    return hook


def _resolve_ignored(model: nn.Module, ignored_layers: Iterable[str | nn.Module] | None) -> set[nn.Module]:
    if not ignored_layers:
        return set()
    named = dict(model.named_modules())
    out: set[nn.Module] = set()
    for item in ignored_layers:
        if isinstance(item, nn.Module):
            out.add(item)
        elif item in named:
            out.add(named[item])
        else:
            raise UserError(f"ignored layer {item!r} is not a module of the model; use a name from model.named_modules().")
    return out


def _trace(
    model: nn.Module, inputs: tuple[torch.Tensor, ...]
) -> tuple[tp.DependencyGraph, dict[nn.Module, int], set[object], list[tuple[int, ...]]]:
    """Build the dependency graph (model in eval mode, modes restored), per-layer MACs, output grad_fns and shapes."""
    modes = {m: m.training for m in model.modules()}
    macs: dict[nn.Module, int] = {}
    out_fns: set[object] = set()
    shapes: list[tuple[int, ...]] = []

    def record_outputs(module: nn.Module, args: tuple, output: object) -> None:
        out_fns.update(t.grad_fn for t in tp.utils.flatten_as_list(output) if isinstance(t, torch.Tensor))
        shapes[:] = output_shapes(output)

    hooks = [
        m.register_forward_hook(_macs_hook(macs))
        for m in model.modules()
        if _is_root(m)
    ]
    hooks.append(model.register_forward_hook(record_outputs))
    try:
        with torch.enable_grad():
            dg = SafeDependencyGraph().build_dependency(model, example_inputs=inputs, verbose=False)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(
            f"could not trace the model with the example inputs ({type(exc).__name__}: {exc}); "
            "check that the input shape matches the model."
        ) from exc
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    out_fns.discard(None)
    return dg, macs, out_fns, shapes


@dataclass(eq=False)
class _RawItem:
    """Channel ``idxs[k]`` of a node follows group channel ``root_idxs[k]`` (pairs; an index may repeat)."""

    node: tp.Node
    handler: object
    idxs: list[int]
    root_idxs: list[int]


def _coupled(dg: tp.DependencyGraph, module: nn.Module, pruning_fn: object, channels: int) -> list[_RawItem]:
    """Everything coupled to `module`'s output channels, with index maps back to those channels.

    Same walk as ``DependencyGraph.get_pruning_group`` minus its per-call refresh of every concat's
    index mapping (idempotent on an unpruned graph, and quadratic: 15 s of 21 s on DenseNet-121).
    """
    hybrid = tp._helpers._HybridIndex
    if is_depthwise(module):
        pruning_fn = tp.pruner.function.prune_depthwise_conv_out_channels
    root = dg.module2node[module]
    start = [hybrid(idx=i, root_idx=i) for i in range(channels)]
    items: list[tuple[tp.Node, object, list]] = [(root, pruning_fn, start)]
    seen = {(root, pruning_fn, tuple(start))}
    stack = [(root, pruning_fn, start)]
    while stack:
        node, fn, idxs = stack.pop()
        for dep in node.dependencies:
            if not dep.is_triggered_by(fn):
                continue
            new = idxs
            for mapping in dep.index_mapping:
                if mapping is not None:
                    new = mapping(new)
            if not new:
                continue
            key = (dep.target, dep.handler, tuple(new))
            if key in seen:
                continue
            seen.add(key)
            items.append((dep.target, dep.handler, new))
            if not getattr(dep.target, PROBLEM_ATTR, None):  # a channel shuffle: the group ends (refused) here
                stack.append((dep.target, dep.handler, new))
    merged: dict[tuple[tp.Node, object], dict[tuple[int, int], None]] = {}
    for node, fn, idxs in items:
        merged.setdefault((node, fn), {}).update(dict.fromkeys((h.idx, h.root_idx) for h in idxs))
    return [
        _RawItem(node=node, handler=fn, idxs=[i for i, _ in pairs], root_idxs=[r for _, r in pairs])
        for (node, fn), pairs in merged.items()
    ]


def _merge_copies(raw: list[_RawItem]) -> tuple[list[_RawItem], int]:
    """`raw` with every group channel replaced by its class (``copy_classes``), one class per member channel."""
    classes, n = copy_classes([zip(item.idxs, item.root_idxs, strict=True) for item in raw], len(set(raw[0].idxs)))
    out = []
    for item in raw:
        slot = {i: classes[r] for i, r in zip(item.idxs, item.root_idxs, strict=True)}
        out.append(_RawItem(node=item.node, handler=item.handler, idxs=list(slot), root_idxs=list(slot.values())))
    return out, n


def _relabel_copies(plan: list[MemberPlan], model: nn.Module, channels: int) -> bool:
    """Number a group's channels after the first filter bank (in `plan`'s order) that owns each of them once.

    That layer then names the group (its output channels are the group's channels, in order). False when
    no layer does (nothing to name the group after: it stays refused).
    """
    full = torch.arange(channels)
    for p in plan:
        module = _get(model, p.module)
        if p.kind == IN or not _is_root(module) or _out_size(module) != channels or len(p.idxs) != channels:
            continue
        if torch.equal(torch.sort(p.idxs).values, full) and torch.equal(torch.sort(p.root_idxs).values, full):
            new = torch.empty(channels, dtype=torch.long)
            new[p.root_idxs] = p.idxs
            for q in plan:
                q.root_idxs = new[q.root_idxs]
            p.idxs, p.root_idxs = full, full.clone()  # its own channels in order: the identity map that names the group
            return True
    return False


def _raw_groups(dg: tp.DependencyGraph) -> list[list[_RawItem]]:
    """Every coupled group rooted at a conv/linear's output channels (prunable or not)."""
    groups = []
    visited: set[nn.Module] = set()
    for m in list(dg.module2node):
        if not _is_root(m) or m in visited:
            continue
        pruner = dg.get_pruner_of_module(m)
        channels = pruner.get_out_channels(m) if pruner is not None else None
        if not channels:
            continue
        group = _coupled(dg, m, pruner.prune_out_channels, channels)
        for item in group:
            if dg.is_out_channel_pruning_fn(item.handler):
                visited.add(item.node.module)
        groups.append(group)
    return groups


def _verdict(produces_output: bool, ignored_out: list[str], problems: list[str], channels: int) -> tuple[bool, str]:
    """(prunable, reason) of a group: the first rule that refuses it, in order of importance."""
    if produces_output:
        return False, "produces the model output"
    if ignored_out:
        return False, f"ignored by request ({ignored_out[0]})"
    if problems:
        return False, problems[0]
    if channels < 2:
        return False, "single channel"
    return True, ""


def _follower_rows(model: nn.Module, followers: dict[str, list[str]], tied_by: dict[str, set[str]], macs: dict,
                   total_macs: int) -> list[Group]:
    """Rows for layers whose output channels follow another group (depthwise convs, tied outputs)."""
    rows = []
    for n, leaders in followers.items():
        module = _get(model, n)
        if is_depthwise(module):
            reason = f"depthwise conv follows its producer group {', '.join(leaders)}"
        else:
            how = " and ".join(sorted(tied_by.get(n, ()))) or "a shared consumer"
            reason = f"output channels are tied to group {', '.join(leaders)} by {how}"
        rows.append(Group(name=n, channels=_out_size(module), prunable=False, reason=reason, members=[],
                          flops_share=macs.get(module, 0) / total_macs, follows=leaders))
    return rows


def _members(raw: list, dg: Any, names: dict, out_fns: set) -> tuple[list[MemberPlan], list[str], bool, set[str],
                                                                     list[str], list[str]]:
    """One raw Torch-Pruning group's members -> (plan, problems, produces the output, ties, out layers, in layers)."""
    plan: list[MemberPlan] = []
    problems: list[str] = []
    produces_output = False
    ties: set[str] = set()
    out_layers: list[str] = []
    in_layers: list[str] = []
    leaves: list = []  # leaf tensors (model input, constants) the members read on the group's channels
    for item in raw:
        node = item.node
        module = node.module
        if node.type == tp.ops.OPTYPE.OUTPUT:  # the output is a non-module op (flatten, add, ...)
            produces_output = True
            continue
        mname = names.get(module) if isinstance(module, nn.Module) else None
        if mname is None:
            ties.update(tie_kind(node))
            leaves.append(op_leaf(node, dg.leaf_operands, item.idxs))
            problem = op_problem(node)
            if problem and getattr(node, PROBLEM_ATTR, None):
                problems.insert(0, problem)  # the root cause (a shuffle) before its side effects
            elif problem:
                problems.append(problem)
            continue
        pruner = dg.get_pruner_of_module(module)
        if is_depthwise(module):
            kind = DEPTHWISE
        elif pruner is not None and item.handler == pruner.prune_out_channels:
            kind = OUT
        else:
            kind = IN
        if kind != IN and node.grad_fn in out_fns:
            produces_output = True
        if _is_root(module):
            (in_layers if kind == IN else out_layers).append(mname)
        if kind != OUT or not _is_root(module):  # its input side holds the group's channels too
            leaves.append(layer_leaf(node, dg.leaf_operands, mname))
        problem = module_problem(mname, module) or _mapping_problem(mname, module, item, pruner)
        if problem:
            problems.append(problem)
            continue
        plan.append(
            MemberPlan(
                module=mname,
                kind=kind,
                idxs=torch.as_tensor(list(item.idxs), dtype=torch.long),
                root_idxs=torch.as_tensor(list(item.root_idxs), dtype=torch.long),
            )
        )
    tie = next((t for t in leaves if t is not None), None)
    if tie is not None:
        problems.append(leaf_reason(tie, ties))
    return plan, problems, produces_output, ties, out_layers, in_layers


def prunable_groups(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    ignored_layers: Iterable[str | nn.Module] | None = None,
) -> list[Group]:
    """Coupled channel groups of `model`, in module order, each with name, channels, prunable/reason.

    `example_inputs` is one small input batch (e.g. ``torch.randn(1, 3, 32, 32)``). Output channels of
    `ignored_layers` (names or modules) are kept. The layer producing the model output is never
    prunable. The model is not modified (its train/eval modes are restored).
    """
    inputs = _as_input_tuple(example_inputs)
    ignored = _resolve_ignored(model, ignored_layers)
    dg, macs, out_fns, out_shapes = _trace(model, inputs)
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    total_macs = max(1, sum(macs.values()))

    rows: list[Group] = []
    followers: dict[str, list[str]] = {}
    tied_by: dict[str, set[str]] = {}
    for raw in (raws := _raw_groups(dg)):
        root_channels = len(set(raw[0].idxs))
        items, channels = _merge_copies(raw)
        plan, problems, produces_output, ties, out_layers, in_layers = _members(items, dg, names, out_fns)
        plan.sort(key=lambda p: (order.get(p.module, 0), p.kind))
        if channels < root_channels or any(p.kind != IN and len(set(p.root_idxs.tolist())) < len(p.root_idxs)
                                           for p in plan):  # a channel stands for several of a member's
            problem = copies_problem([(p.module, p.root_idxs) for p in plan], channels)
            if problem is None and not _relabel_copies(plan, model, channels):
                problem = COPIES_UNNAMED_REASON.format(channels)
            if problem:
                problems.append(problem)
                channels = root_channels  # refused: the row keeps its root layer's width
        blocks, block_ids, block_problem = channel_blocks(
            [(p.module, _get(model, p.module), p.kind == IN, p.idxs, p.root_idxs) for p in plan], channels
        )
        if block_problem:
            problems.append(block_problem)
        full = torch.arange(channels)
        identity_outs = [
            p.module
            for p in plan
            if p.kind in (OUT, DEPTHWISE)
            and _is_root(_get(model, p.module))
            and len(p.idxs) == channels == _out_size(_get(model, p.module))
            and torch.equal(p.idxs, full)
            and torch.equal(p.root_idxs, full)
        ]
        root_name = names[raw[0].node.module]
        name = min(identity_outs, key=order.__getitem__) if identity_outs else root_name

        ignored_out = [n for n in out_layers if _get(model, n) in ignored]
        prunable, reason = _verdict(produces_output, ignored_out, problems, channels)
        own = sum(macs.get(_get(model, n), 0) for n in set(out_layers))
        coupled = sum(macs.get(_get(model, n), 0) for n in set(out_layers) | set(in_layers))
        rows.append(
            Group(
                name=name,
                channels=channels,
                prunable=prunable,
                reason=reason,
                members=[(p.module, p.kind) for p in plan],
                flops_share=own / total_macs,
                coupled_flops_share=coupled / total_macs,
                plan=plan,
                blocks=blocks if prunable else 1,
                block_ids=block_ids if prunable else None,
            )
        )
        for n in dict.fromkeys(out_layers):
            if n != name:
                followers.setdefault(n, []).append(name)
                tied_by.setdefault(n, set()).update(ties)

    shaped = [g for g, raw in zip(rows, raws, strict=True) if g.prunable and shape_sensitive(i.node for i in raw)]
    refuse_breaking(model, inputs, shaped, out_shapes)  # tried at forward: a channel count held as a literal
    rows += _follower_rows(model, followers, tied_by, macs, total_macs)
    rows.sort(key=lambda g: order.get(g.name, len(order)))
    return rows


def _is_root(module: object) -> bool:
    """A filter bank (conv/linear, by its layer handler): its output channels start a group, its MACs count."""
    return filter_bank(module) is not None


def _out_size(module: nn.Module) -> int:
    return int(handler_for(module).out_channels(module))


def _get(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def format_groups_table(groups: Sequence[Group]) -> str:
    """Plain-text table: name, channels, prunable (or why not), FLOPs share."""
    header = ("group", "channels", "prunable", "FLOPs share")
    rows = [
        (g.name, str(g.channels), "yes" if g.prunable else f"no: {g.reason}", f"{100 * g.flops_share:.1f}%")
        for g in groups
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = [
        f"{header[0]:<{widths[0]}}  {header[1]:>{widths[1]}}  {header[2]:<{widths[2]}}  {header[3]}"
    ]
    lines.append("-" * len(lines[0]))
    for r in rows:
        lines.append(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>{len(header[3])}}")
    n_prunable = sum(g.prunable for g in groups)
    lines.append(f"{n_prunable} prunable group(s) of {len(groups)} rows")
    return "\n".join(lines)
