"""Coupled channel groups of a CNN, found by Torch-Pruning's DependencyGraph.

A *group* is a set of channels that must be removed together: a conv's output channels, the
BatchNorm after it, the matching input channels of every consumer (through residual adds, concat
slices, depthwise convs, squeeze-excitation blocks, flatten into Linear). ``prunable_groups`` traces
the model once with Torch-Pruning, then turns every group into a plain, picklable description
with a stable human-readable name (the first conv/linear whose output channels the group
controls, in ``named_modules`` order) and an index plan: for every member module, which of its
channels map to which channel of the group. ``prune`` and ``channel_scores`` work from that plan
alone, so pruning a candidate needs no fresh trace.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from rlprune_edge.errors import UserError

# Member kinds in a plan: output channels (rows of a filter bank, per-channel norm params),
# input channels (columns of a consumer), or a depthwise conv whose in and out move together.
OUT, IN, DEPTHWISE = "out", "in", "depthwise"

# Autograd ops (grad_fn name without "Backward<N>") known to keep channel i in channel i.
_CHANNEL_PRESERVING_OPS = frozenset(
    """Add Sub Rsub Mul Div Relu Relu6 Hardtanh Hardswish Hardsigmoid Sigmoid Silu Gelu Tanh LeakyRelu
    Elu Selu Celu Softplus Mish Clamp ClampMin ClampMax Threshold MaxPool2DWithIndices MaxPool1DWithIndices
    MaxPool3DWithIndices MaxPool2D AvgPool2D AvgPool1D AvgPool3D AdaptiveAvgPool2D AdaptiveAvgPool1D
    AdaptiveMaxPool2D AdaptiveMaxPool1D UpsampleNearest2D UpsampleBilinear2D UpsampleNearest2DAliasToDefault
    ConstantPadNd ReflectionPad2D ReplicationPad2D Clone NativeDropout Neg Pow Exp Abs Sqrt Rsqrt Unsqueeze
    Squeeze Expand Alias Detach ToCopy Contiguous""".split()
)
# Reductions that are fine as long as they do not reduce over the channel dimension (1).
_REDUCTIONS = frozenset({"Mean", "Sum", "Amax", "Amin"})
_SUPPORTED_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.PReLU)


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


def _signed_dims(dims: object) -> list[int]:
    """Autograd stores negative dims as unsigned 64-bit integers; turn them back into Python ints."""
    if isinstance(dims, int):
        dims = (dims,)
    out = []
    for d in dims:  # type: ignore[union-attr]
        d = int(d)
        out.append(d - 2**64 if d >= 2**63 else d)
    return out


def _op_problem(node: tp.Node) -> str | None:
    """Why an op node on a group's path breaks channel-wise pruning, or None if it is fine."""
    kind = node.type
    op = tp.ops.OPTYPE
    if kind == op.PARAMETER:
        return f"it uses an unwrapped parameter ({node.name})"
    if kind in (op.UNBIND, op.CUSTOMIZED):
        return f"operation {node.name} is not supported"
    grad_fn = node.grad_fn
    gname = re.sub(r"Backward\d*$", "", grad_fn.name()) if grad_fn is not None else "?"
    if kind == op.CONCAT:
        if node.module.offsets is not None:
            return None
        dims = _signed_dims(getattr(grad_fn, "_saved_dim", -1))
        return None if dims[0] >= 0 and dims[0] != 1 else "a channel concat could not be mapped"
    if kind == op.SPLIT:
        return None if node.module.offsets is not None else "a channel split could not be mapped"
    if kind != op.ELEMENTWISE or not node.inputs:  # modules, reshapes, slices; ops on weights only
        return None
    if gname in _CHANNEL_PRESERVING_OPS:
        return None
    if gname in _REDUCTIONS and hasattr(grad_fn, "_saved_self_sym_sizes"):
        rank = len(grad_fn._saved_self_sym_sizes)
        dims = [d % rank for d in _signed_dims(grad_fn._saved_dim)]
        if rank >= 2 and 1 not in dims and dims:
            return None
    return f"operation {gname} on its path may mix or reorder channels"


def _tie_kind(node: tp.Node) -> set[str]:
    """How an op node couples channels of different layers (for the reasons shown to users)."""
    if node.type == tp.ops.OPTYPE.CONCAT:
        return {"a concat"}
    if node.type != tp.ops.OPTYPE.ELEMENTWISE or node.grad_fn is None or len(node.inputs) < 2:
        return set()
    gname = re.sub(r"Backward\d*$", "", node.grad_fn.name())
    if gname in ("Add", "Sub", "Rsub"):
        return {"a residual add"}
    if gname in ("Mul", "Div"):
        return {"a channel-wise multiply (squeeze-excitation)"}
    return set()


def _module_problem(name: str, module: nn.Module) -> str | None:
    """Why the pruner cannot shrink `module`, or None."""
    if not isinstance(module, _SUPPORTED_MODULES):
        return f"module {name} ({type(module).__name__}) is not supported by the pruner"
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.transposed:
            return f"transposed conv {name} is not supported"
        if module.groups > 1 and not (module.groups == module.in_channels == module.out_channels):
            return f"grouped conv {name} (groups={module.groups}) is not supported"
    return None


def _mapping_problem(name: str, module: nn.Module, item: _RawItem, pruner: object) -> str | None:
    """Index maps must stay inside the member and, on the output side, be one-to-one."""
    out_side = item.handler == pruner.prune_out_channels or _is_depthwise(module)
    size = pruner.get_out_channels(module) if out_side else pruner.get_in_channels(module)
    bad = size is not None and (not item.idxs or max(item.idxs) >= size or min(item.idxs) < 0)
    if out_side and len(set(item.root_idxs)) != len(item.root_idxs):
        bad = True
    # a (non-depthwise) conv/linear's outputs move as a whole: all of them belong to this group
    if out_side and not _is_depthwise(module) and isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        bad = bad or len(set(item.idxs)) != size
    if bad:
        return f"channel counts do not line up at {name} (a broadcast or reshape across channels?)"
    return None


def _is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _macs_hook(store: dict[nn.Module, int]):
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if not isinstance(output, torch.Tensor) or output.dim() == 0:
            return
        per_sample = output[0].numel() if output.dim() > 1 else output.numel()
        if isinstance(module, nn.modules.conv._ConvNd):
            k = 1
            for s in module.kernel_size:
                k *= s
            macs = per_sample * (module.in_channels // module.groups) * k
        else:
            macs = per_sample * module.in_features
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
) -> tuple[tp.DependencyGraph, dict[nn.Module, int], set[object]]:
    """Build the dependency graph (model in eval mode, modes restored), per-layer MACs, output grad_fns."""
    modes = {m: m.training for m in model.modules()}
    macs: dict[nn.Module, int] = {}
    out_fns: set[object] = set()

    def record_outputs(module: nn.Module, args: tuple, output: object) -> None:
        out_fns.update(t.grad_fn for t in tp.utils.flatten_as_list(output) if isinstance(t, torch.Tensor))

    hooks = [
        m.register_forward_hook(_macs_hook(macs))
        for m in model.modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    ]
    hooks.append(model.register_forward_hook(record_outputs))
    try:
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=inputs, verbose=False)
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
    return dg, macs, out_fns


@dataclass(eq=False)
class _RawItem:
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
    if _is_depthwise(module):
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
            stack.append((dep.target, dep.handler, new))
    merged: dict[tuple[tp.Node, object], dict[int, int]] = {}
    for node, fn, idxs in items:
        slot = merged.setdefault((node, fn), {})
        for h in idxs:
            slot.setdefault(h.idx, h.root_idx)
    return [
        _RawItem(node=node, handler=fn, idxs=list(slot), root_idxs=list(slot.values()))
        for (node, fn), slot in merged.items()
    ]


def _raw_groups(dg: tp.DependencyGraph) -> list[list[_RawItem]]:
    """Every coupled group rooted at a conv/linear's output channels (prunable or not)."""
    groups = []
    visited: set[nn.Module] = set()
    roots = (nn.modules.conv._ConvNd, nn.Linear)
    for m in list(dg.module2node):
        if not isinstance(m, roots) or m in visited:
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
    dg, macs, out_fns = _trace(model, inputs)
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    total_macs = max(1, sum(macs.values()))

    rows: list[Group] = []
    followers: dict[str, list[str]] = {}
    tied_by: dict[str, set[str]] = {}
    for raw in _raw_groups(dg):
        channels = len(raw[0].idxs)
        plan: list[MemberPlan] = []
        problems: list[str] = []
        produces_output = False
        ties: set[str] = set()
        out_layers: list[str] = []
        in_layers: list[str] = []
        for item in raw:
            node = item.node
            module = node.module
            if node.type == tp.ops.OPTYPE.OUTPUT:  # the output is a non-module op (flatten, add, ...)
                produces_output = True
                continue
            mname = names.get(module) if isinstance(module, nn.Module) else None
            if mname is None:
                ties.update(_tie_kind(node))
                problem = _op_problem(node)
                if problem:
                    problems.append(problem)
                continue
            pruner = dg.get_pruner_of_module(module)
            if _is_depthwise(module):
                kind = DEPTHWISE
            elif pruner is not None and item.handler == pruner.prune_out_channels:
                kind = OUT
            else:
                kind = IN
            if kind != IN and node.grad_fn in out_fns:
                produces_output = True
            if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
                (in_layers if kind == IN else out_layers).append(mname)
            problem = _module_problem(mname, module) or _mapping_problem(mname, module, item, pruner)
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
        plan.sort(key=lambda p: (order.get(p.module, 0), p.kind))
        full = torch.arange(channels)
        identity_outs = [
            p.module
            for p in plan
            if p.kind in (OUT, DEPTHWISE)
            and isinstance(_get(model, p.module), (nn.modules.conv._ConvNd, nn.Linear))
            and len(p.idxs) == channels == _out_size(_get(model, p.module))
            and torch.equal(p.idxs, full)
            and torch.equal(p.root_idxs, full)
        ]
        root_name = names[raw[0].node.module]
        name = min(identity_outs, key=order.__getitem__) if identity_outs else root_name

        ignored_out = [n for n in out_layers if _get(model, n) in ignored]
        if produces_output:
            prunable, reason = False, "produces the model output"
        elif ignored_out:
            prunable, reason = False, f"ignored by request ({ignored_out[0]})"
        elif problems:
            prunable, reason = False, problems[0]
        elif channels < 2:
            prunable, reason = False, "single channel"
        else:
            prunable, reason = True, ""
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
            )
        )
        for n in dict.fromkeys(out_layers):
            if n != name:
                followers.setdefault(n, []).append(name)
                tied_by.setdefault(n, set()).update(ties)

    for n, leaders in followers.items():
        module = _get(model, n)
        if _is_depthwise(module):
            reason = f"depthwise conv follows its producer group {', '.join(leaders)}"
        else:
            how = " and ".join(sorted(tied_by.get(n, ()))) or "a shared consumer"
            reason = f"output channels are tied to group {', '.join(leaders)} by {how}"
        rows.append(
            Group(
                name=n,
                channels=_out_size(module),
                prunable=False,
                reason=reason,
                members=[],
                flops_share=macs.get(module, 0) / total_macs,
                follows=leaders,
            )
        )
    rows.sort(key=lambda g: order.get(g.name, len(order)))
    return rows


def _out_size(module: nn.Module) -> int:
    return int(module.out_channels if hasattr(module, "out_channels") else module.out_features)


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
