"""Groups whose pruning breaks the model's own forward: a channel count held as a constant of the code.

A reshape whose target holds the channel count as a literal (``x.view(x.size(0), 16, -1)``,
``x.reshape(n, 16, h * w)``, ``x.view(n, 256)`` into a Linear, an SE gate's ``.view(n, 16, 1, 1)``)
traces exactly like one that reads it from the tensor (``x.size(1)``, ``torch.flatten(x, 1)``):
autograd records the shapes, not where they came from. ``graph_rules`` classifies both as keeping the
channel dimension (or as a flatten), so the group before it looks prunable; after pruning the literal
stays, and the pruned model fails at forward (or computes another output shape).

So ``refuse_breaking`` tries it: for the prunable groups whose channels pass through an op that
takes a shape (``shape_sensitive``: views, reshapes, flattens, expands, strided views), it removes
one channel step (the last channel of each of the group's ``blocks`` cells) from a copy of the model,
with the same layer handlers ``pruning`` shrinks layers with, runs the example inputs, and refuses
the group when the forward raises or an output's shape changes. The copy is new only on the touched
layers and their parents and shares every tensor of the model (shrinking replaces the touched
layers' tensors, it never writes into them), so it costs one forward of the example inputs. All checked groups are first pruned together: one forward when they
all pass (the usual case, a flatten into the classifier), then one per group only when that fails.
Groups that touch no such op (typical CNN bodies) cost nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
import torch_pruning as tp
from torch import nn

from rlprune_edge.graph_walk import grad_fn_name
from rlprune_edge.layers import handler_for

BREAKS_REASON = "pruning it breaks the model at forward (a fixed channel count in the model code, e.g. view(N, 16, -1)): {}"
SHAPE_REASON = ("pruning it changes the model's output shape {} -> {} (a fixed channel count in the model code, "
                "e.g. view(N, 16, -1))")
# Autograd ops (lower-case name fragments) whose output shape is an argument that model code may hold as a constant.
SHAPED_OPS = ("view", "reshape", "flatten", "expand", "asstrided")


def shape_sensitive(nodes: Iterable[tp.Node]) -> bool:
    """Does any of `nodes` take a shape argument (a view/reshape/flatten/expand/strided view)?"""
    op = tp.ops.OPTYPE
    for node in nodes:
        if node.type in (op.RESHAPE, op.EXPAND):
            return True
        # graph_rules turns reshapes it has sorted into element-wise nodes; a layer's own ops do not count
        if node.type == op.ELEMENTWISE and any(s in grad_fn_name(node.grad_fn).lower() for s in SHAPED_OPS):
            return True
    return False


def output_shapes(output: object) -> list[tuple[int, ...]]:
    """Shapes of every tensor in a model output (a tensor, or nested tuples/lists/dicts of them)."""
    return [tuple(t.shape) for t in tp.utils.flatten_as_list(output) if isinstance(t, torch.Tensor)]


def _step(group: object) -> torch.Tensor:
    """One channel step of `group`: its last channel, or the last of each cell when grouped convs share it."""
    if group.blocks > 1 and group.block_ids is not None:
        return torch.stack([(group.block_ids == c).nonzero().max() for c in range(group.blocks)])
    return torch.tensor([group.channels - 1])


def _removal(groups: Sequence[object]) -> dict[tuple[str, str], torch.Tensor]:
    """{(module, kind): removed channels in the module's coordinates} for one step of every group."""
    parts: dict[tuple[str, str], list[torch.Tensor]] = {}
    for g in groups:
        step = _step(g)
        for p in g.plan:
            idxs = p.idxs[torch.isin(p.root_idxs, step)]
            if len(idxs):
                parts.setdefault((p.module, p.kind), []).append(idxs)
    return {key: torch.unique(torch.cat(v)) for key, v in parts.items()}


def _first_line(exc: BaseException, limit: int = 120) -> str:
    text = (str(exc).strip().splitlines() or [""])[0].strip() or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _copy_around(model: nn.Module, touched: set[str]) -> nn.Module:
    """A copy of `model` in which only the `touched` modules and their parents are new objects.

    Every tensor and every other module is the model's own: shrinking replaces a touched layer's
    tensors (it never writes into them), so the model is not changed, and the copy costs a few objects.
    """
    paths = {".".join(name.split(".")[:i]) for name in touched for i in range(len(name.split(".")) + 1)}
    named = list(model.named_modules(remove_duplicate=False))
    new = {id(m) for name, m in named if name in paths}
    memo: dict[int, object] = {id(m): m for _, m in named if id(m) not in new}
    memo.update((id(t), t) for _, m in named for t in (*m._parameters.values(), *m._buffers.values()) if t is not None)
    return copy.deepcopy(model, memo=memo)


def dry_run(model: nn.Module, inputs: tuple[torch.Tensor, ...], groups: Sequence[object],
            want: list[tuple[int, ...]]) -> str | None:
    """Why the model with one channel step of each of `groups` removed fails (None: it runs, same output shapes)."""
    removal = _removal(groups)
    try:
        pruned = _copy_around(model, {name for name, _ in removal})
    except Exception:  # noqa: BLE001 - a model that cannot be copied cannot be pruned either (prune says why)
        return None
    for (name, kind), removed in removal.items():
        module = pruned.get_submodule(name)
        handler = handler_for(module)
        size = handler.size(module, kind)
        if size is not None:
            keep = torch.ones(size, dtype=torch.bool)
            keep[removed] = False
            handler.shrink(module, kind, keep.nonzero().squeeze(1))
    modes = {m: m.training for m in pruned.modules()}  # shared modules are the model's: their modes come back
    try:
        pruned.eval()
        with torch.no_grad():
            got = output_shapes(pruned(*(t.detach() for t in inputs)))
    except Exception as exc:  # noqa: BLE001 - whatever the model code raises is the reason
        return BREAKS_REASON.format(_first_line(exc))
    finally:
        for m, mode in modes.items():
            m.training = mode
    if got != want:
        show = (lambda shapes: ", ".join(str(list(s)) for s in shapes))  # noqa: E731
        return SHAPE_REASON.format(show(want), show(got))
    return None


def refuse_breaking(model: nn.Module, inputs: tuple[torch.Tensor, ...], groups: Sequence[object],
                    want: list[tuple[int, ...]]) -> None:
    """Mark the groups of `groups` (prunable, shape-sensitive) whose one-step pruning breaks the forward unprunable.

    When only their joint pruning fails (no group alone does), all of them are refused with that reason.
    """
    joint = dry_run(model, inputs, groups, want) if groups else None
    if joint is None:
        return
    reasons = [dry_run(model, inputs, [g], want) for g in groups] if len(groups) > 1 else [joint]
    if all(r is None for r in reasons):
        reasons = [joint] * len(groups)
    for g, reason in zip(groups, reasons, strict=True):
        if reason is not None:
            g.prunable, g.reason, g.blocks, g.block_ids = False, reason, 1, None
