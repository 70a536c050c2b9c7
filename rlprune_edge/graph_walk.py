"""Tensors that no layer produces: the model input, constants and buffers, parameters used directly.

Torch-Pruning's graph has a node for every layer and op of the traced forward, but none for a leaf
tensor: the model input, a buffer or constant of the model code, a parameter used directly by an
op (unless Torch-Pruning wraps it). So ``conv(x) + x`` with ``x`` the model input looks like an add
with one producer, and the conv's group looks free to prune, yet the input keeps all its channels:
the pruned model fails at forward, or broadcasts and computes something else. The same holds for
``x * sigmoid(conv(x))``, ``x2 = x * 2; conv(x2) + x2``, a BatchNorm or depthwise conv reading
the input, and an add of a per-channel buffer.

``LeafRecorder`` watches the traced forward (a ``TorchFunctionMode``) and records, for every call
that reads a leaf tensor, the shape of each tensor operand and what it is (``Operands``, keyed by
the grad_fn of the call's output: the key of Torch-Pruning's node for it). Then:

* ``op_leaf`` / ``layer_leaf``: a group member that reads such a tensor on its group's channels
  ties the group to it (an add, multiply or other broadcast op: any leaf operand of more than one
  channel; any other op, or a layer whose input side is in the group: its data input). The group
  is refused (``leaf_reason``).
* ``map_leaf_concats``: Torch-Pruning cannot place the other operands of a channel concat that also
  takes a leaf (it infers slice sizes from the producing nodes only, so ``cat([x, conv(x)])`` got no
  index map). Their slices are set from the recorded sizes; the leaf's slice belongs to no group,
  and a group reaching channels of that slice (through the concat's output) is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode
from torch_pruning.dependency.index_mapping import _ConcatIndexMapping

INPUT, CONSTANT, PARAMETER = "input", "constant", "parameter"

# Ops (grad_fn names) that broadcast every tensor operand onto their output: each carries its channels.
BROADCAST_OPS = frozenset(
    "Add Sub Rsub Mul Div Maximum Minimum Pow Lerp Addcmul Addcdiv Atan2 Fmod Remainder Where".split()
)
TIE_NAMES = {"Add": "a residual add", "Sub": "a residual add", "Rsub": "a residual add",
             "Mul": "an element-wise multiply", "Div": "an element-wise multiply"}


def grad_fn_name(grad_fn: object) -> str:
    """Autograd op name without the ``Backward<N>`` suffix ('?' when unknown)."""
    if grad_fn is None or not hasattr(grad_fn, "name"):
        return "?"
    return re.sub(r"Backward\d*$", "", grad_fn.name())


def signed_dims(dims: object) -> list[int]:
    """Autograd stores negative dims as unsigned 64-bit integers; turn them back into Python ints."""
    if isinstance(dims, int):
        dims = (dims,)
    out = []
    for d in dims:  # type: ignore[union-attr]
        d = int(d)
        out.append(d - 2**64 if d >= 2**63 else d)
    return out


@dataclass(frozen=True)
class Operands:
    """One recorded call: its output shape, and (shape, leaf kind or None when produced) per tensor operand."""

    out: tuple[int, ...]
    tensors: tuple[tuple[tuple[int, ...], str | None], ...]


@dataclass(frozen=True)
class LeafTie:
    """A leaf tensor tied to a group: what it is, its shape, the op that ties it (None: say it from the group)."""

    kind: str
    shape: tuple[int, ...]
    how: str | None
    via: str


def _tensors(obj: object, out: list[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _tensors(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _tensors(o, out)
    return out


class LeafRecorder(TorchFunctionMode):
    """Records every torch call of the traced forward that reads a leaf tensor (``records``: grad_fn -> Operands)."""

    def __init__(self, inputs: object) -> None:
        super().__init__()
        self.inputs = {id(t) for t in _tensors(inputs, [])}
        self.records: dict[object, Operands] = {}

    def _kind(self, t: torch.Tensor) -> str | None:
        if t.grad_fn is not None:
            return None
        if id(t) in self.inputs:
            return INPUT
        if isinstance(t, nn.Parameter):
            return PARAMETER
        return INPUT if t.requires_grad else CONSTANT

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        tensors = _tensors((args, kwargs), [])
        kinds = [self._kind(t) for t in tensors]  # before the call: an in-place op gives its operand a grad_fn
        out = func(*args, **kwargs)
        if any(kinds) and isinstance(out, torch.Tensor) and out.grad_fn is not None:
            shapes = [tuple(int(s) for s in t.shape) for t in tensors]
            self.records[out.grad_fn] = Operands(tuple(int(s) for s in out.shape), tuple(zip(shapes, kinds, strict=True)))
        return out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _carries(shape: tuple[int, ...], out: tuple[int, ...], broadcast: bool) -> bool:
    """Does an operand of `shape` hold the channels of an output of shape `out`?

    Channels are dim 1 (both dims 1 and 2 of a rank-3 output, whose layout is ambiguous). A broadcast
    operand does when it has more than one entry along them (a scalar or a spatial mask does not);
    the data input of any other op does unless it is a single number (ranks that differ: it does).
    """
    if _numel(shape) <= 1 or not out:
        return False
    if not broadcast and len(shape) != len(out):
        return True
    dims = {1, 2} if len(out) == 3 else {min(1, len(out) - 1)}
    lead = len(out) - len(shape)
    return any(0 <= d - lead < len(shape) and shape[d - lead] > 1 for d in dims)


def _from_autograd(grad_fn: object) -> Operands | None:
    """Operands seen from autograd alone (a call the recorder did not see): leaves that require grad only."""
    tensors = []
    for fn, _ in getattr(grad_fn, "next_functions", ()):
        var = getattr(fn, "variable", None) if fn is not None else None
        if isinstance(var, torch.Tensor) and not isinstance(var, nn.Parameter):
            tensors.append((tuple(int(s) for s in var.shape), INPUT))
    meta = getattr(grad_fn, "_input_metadata", None)
    if not tensors or not meta:
        return None
    return Operands(tuple(int(s) for s in meta[0].shape), tuple(tensors))


def _channel_cat(grad_fn: object, rank: int) -> bool:
    dim = getattr(grad_fn, "_saved_dim", None)
    return dim is not None and rank >= 2 and signed_dims(dim)[0] % rank == 1


def cat_slices(rec: Operands) -> list[tuple[int, int, str | None]]:
    """(start, end, leaf kind or None) of every operand of a channel concat, in the concat's channels."""
    out, start = [], 0
    for shape, kind in rec.tensors:
        size = shape[1] if len(shape) > 1 else 0
        out.append((start, start + size, kind))
        start += size
    return out


def op_leaf(node: tp.Node, records: dict[object, Operands], idxs: list[int]) -> LeafTie | None:
    """A leaf tensor that an op node of a group reads on the group's channels (`idxs`: its channels there)."""
    grad_fn = node.grad_fn
    rec = records.get(grad_fn)
    exact = rec is not None
    rec = rec or _from_autograd(grad_fn)
    if rec is None:
        return None
    name = grad_fn_name(grad_fn)
    if node.type == tp.ops.OPTYPE.CONCAT:
        if _channel_cat(grad_fn, len(rec.out)):
            if not exact:  # the input's slice is unknown: the whole concat stays tied to it
                return LeafTie(INPUT, rec.tensors[0][0], "a concat", "a concat")
            for (start, end, kind), (shape, _) in zip(cat_slices(rec), rec.tensors, strict=True):
                if kind and any(start <= i < end for i in idxs):
                    return LeafTie(kind, shape, "a concat", "a concat")
            return None
        broadcast = True  # a concat along another dim: every operand holds all the channels
    else:
        broadcast = name in BROADCAST_OPS
    candidates = rec.tensors if broadcast or not exact else rec.tensors[:1]
    # the op itself ties the leaf to the group when it also reads a produced tensor (conv(x) + x, not x * 2)
    how = TIE_NAMES.get(name) if broadcast and any(k is None for _, k in rec.tensors) else None
    for shape, kind in candidates:
        if kind and _carries(shape, rec.out, broadcast):
            return LeafTie(kind, shape, how, f"operation {name}")
    return None


def layer_leaf(node: tp.Node, records: dict[object, Operands], name: str) -> LeafTie | None:
    """The leaf tensor a layer whose input side is in a group reads as its data input, or None."""
    rec = records.get(node.grad_fn)
    if rec is None:
        rec = _from_autograd(node.grad_fn)
        candidates = rec.tensors if rec is not None else ()
    else:
        candidates = rec.tensors[:1]
    for shape, kind in candidates:
        if kind and _carries(shape, rec.out, broadcast=False):
            return LeafTie(kind, shape, None, f"layer {name}, which reads it")
    return None


def leaf_reason(tie: LeafTie, ties: set[str]) -> str:
    """The refusal of a group tied to a leaf tensor (`ties`: how the group's layers are tied, for the wording)."""
    how = tie.how or " and ".join(sorted(ties)) or tie.via
    if tie.kind == INPUT:
        return f"output channels are tied to the model input by {how} (the input's channels cannot be removed)"
    what = "a parameter used directly" if tie.kind == PARAMETER else "a constant or buffer of the model code"
    return f"output channels are tied to {what} (shape {list(tie.shape)}) by {how}, which pruning cannot shrink"


def _placed(node: tp.Node, rec: Operands, unwrapped: list) -> list[tuple[int, int, str | None]] | None:
    """The slices of a concat's node inputs, in order (None when they cannot be matched to the operands)."""
    nxt = node.grad_fn.next_functions
    slices = cat_slices(rec)
    if len(nxt) != len(slices) or slices[-1][1] != rec.out[1]:
        return None
    # Torch-Pruning's node inputs: the operands with a grad_fn, and the parameters it wraps, in order
    placed = [sl for sl, (fn, _) in zip(slices, nxt, strict=True) if fn is not None and (
        "accumulategrad" not in fn.name().lower() or any(fn.variable is p for p in unwrapped))]
    return placed if len(placed) == len(node.inputs) else None


def map_leaf_concats(dg: tp.DependencyGraph, records: dict[object, Operands]) -> None:
    """Index maps for the produced operands of every channel concat that also takes a leaf tensor."""
    unwrapped = [p for p, _ in getattr(dg, "unwrapped_parameters", ())]
    for node in dg.module2node.values():
        rec = records.get(node.grad_fn)
        if node.type != tp.ops.OPTYPE.CONCAT or rec is None or not _channel_cat(node.grad_fn, len(rec.out)):
            continue
        placed = _placed(node, rec, unwrapped)
        if placed is None or not getattr(node, "enable_index_mapping", True):
            node.module.offsets = None  # refused: "a channel concat could not be mapped" (graph_rules.op_problem)
            continue
        slices = cat_slices(rec)
        node.module.offsets = [0, *(end for _, end, _ in slices)]
        node.module.concat_sizes = [end - start for start, end, _ in slices]
        for reverse in (True, False):  # concat -> operand (drops the other slices), operand -> concat (shifts)
            addressed: list[object] = []
            for (start, end, _), in_node in zip(placed, node.inputs, strict=True):
                source, target = (node, in_node) if reverse else (in_node, node)
                for dep in source.dependencies:
                    if dep.target is target and not any(dep is d for d in addressed):
                        dep.index_mapping[1] = _ConcatIndexMapping(offset=[start, end], reverse=reverse)
                        addressed.append(dep)
                        break
