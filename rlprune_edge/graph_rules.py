"""What the pruner refuses, and why: per-op and per-module rules, reshapes, grouped convs.

``graph.py`` walks Torch-Pruning's dependency graph; this module decides, for every node and
member it meets, whether pruning through it keeps the model exact:

* ops that may mix or reorder channels (a transpose, softmax over channels, reductions over dim 1);
* channel splits and channel slices (``chunk``, ``split``, ``x[:, a:b]``): their sizes or bounds are
  constants of the model code, so removing channels before them would shift the cut;
* reshapes that split or merge the channel dimension, such as ShuffleNet's channel shuffle
  (``view(n, g, c // g, h, w).transpose(1, 2).view(n, c, h, w)``). ``SafeDependencyGraph`` marks them
  before Torch-Pruning derives its index maps (its own reshape map divides by zero on a shuffle), and
  the group walk stops at them: the groups reaching one are refused, every other group is unaffected;
* grouped convolutions (ResNeXt, RegNet): supported when the group holds the conv's whole input or
  output side; then channels are removed in equal numbers from every conv group (``channel_blocks``);
* a layer concatenated with its own depthwise copy (GhostNet's cheap operation): a channel of a later
  member follows two channels of the group, which are then one channel (``copy_classes``), kept only
  when every member holds the same number of channels of each (``copies_problem``).
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from rlprune_edge.graph_walk import LeafRecorder, grad_fn_name, map_leaf_concats, signed_dims
from rlprune_edge.layers import IN, OUT, handler_for

# Attribute set on a Torch-Pruning node by SafeDependencyGraph: why pruning through it is refused.
PROBLEM_ATTR = "_rlprune_problem"
# Attribute set on a reshape that keeps the channel dimension (treated as identity on channels).
IDENTITY_ATTR = "_rlprune_identity"

# Autograd ops (grad_fn name without "Backward<N>") known to keep channel i in channel i.
CHANNEL_PRESERVING_OPS = frozenset(
    """Add Sub Rsub Mul Div Relu Relu6 Hardtanh Hardswish Hardsigmoid Sigmoid Silu Gelu Tanh LeakyRelu
    Elu Selu Celu Softplus Mish Clamp ClampMin ClampMax Threshold MaxPool2DWithIndices MaxPool1DWithIndices
    MaxPool3DWithIndices MaxPool2D AvgPool2D AvgPool1D AvgPool3D AdaptiveAvgPool2D AdaptiveAvgPool1D
    AdaptiveMaxPool2D AdaptiveMaxPool1D UpsampleNearest2D UpsampleBilinear2D UpsampleNearest2DAliasToDefault
    ConstantPadNd ReflectionPad2D ReplicationPad2D Clone NativeDropout Neg Pow Exp Abs Sqrt Rsqrt Unsqueeze
    Squeeze Expand Alias Detach ToCopy Contiguous""".split()
)
# Reductions that are fine as long as they do not reduce over the channel dimension (1).
REDUCTIONS = frozenset({"Mean", "Sum", "Amax", "Amin"})

SHUFFLE_REASON = "channels pass through a channel shuffle (view/transpose), which pruning would scramble"
SPLIT_REASON = "channels pass through a channel split (chunk/split), whose sizes are fixed in the model code"
SLICE_REASON = "channels pass through a channel slice (x[:, a:b]), whose bounds are fixed in the model code"
CROSS_COUPLED_REASON = (
    "channels of {} follow two different channels of this group unevenly (e.g. a concat of a layer with "
    "its own depthwise copy, GhostNet's cheap operation, read in part): removing one without the other "
    "would misalign them"
)
COPIES_UNNAMED_REASON = (
    "no layer owns the group's {} channels one each (channels that stand for several channels of every "
    "member, as after a concat of a layer with its own copy, need one such layer to be counted by)"
)


def _channel_dim_op(grad_fn: object) -> bool | None:
    """For a split/slice grad_fn: does it cut along dim 1 (channels)? None when it cannot tell."""
    sizes = getattr(grad_fn, "_saved_self_sym_sizes", None)
    dim = getattr(grad_fn, "_saved_dim", None)
    if sizes is None or dim is None:
        return None
    rank = len(sizes)
    d = signed_dims(dim)[0]
    if rank == 0 or not -rank <= d < rank:
        return None
    return d % rank == 1


def is_depthwise(module: nn.Module) -> bool:
    """A depthwise conv (by its layer handler): input and output channels move together."""
    handler = handler_for(module)
    return handler is not None and handler.depthwise(module)


def is_grouped(module: nn.Module) -> bool:
    """A grouped conv that is not depthwise (ResNeXt, RegNet): channels move in equal shares per conv group."""
    handler = handler_for(module)
    return handler is not None and handler.grouped(module)


def op_problem(node: tp.Node) -> str | None:
    """Why an op node on a group's path breaks channel-wise pruning, or None if it is fine."""
    marked = getattr(node, PROBLEM_ATTR, None)
    if marked:
        return marked
    if getattr(node, IDENTITY_ATTR, False):
        return None
    kind = node.type
    op = tp.ops.OPTYPE
    if kind == op.PARAMETER:
        return f"it uses an unwrapped parameter ({node.name})"
    if kind in (op.UNBIND, op.CUSTOMIZED):
        return f"operation {node.name} is not supported"
    grad_fn = node.grad_fn
    gname = grad_fn_name(grad_fn)
    if kind == op.CONCAT:
        if node.module.offsets is not None:
            return None
        dims = signed_dims(getattr(grad_fn, "_saved_dim", -1))
        return None if dims[0] >= 0 and dims[0] != 1 else "a channel concat could not be mapped"
    if kind == op.SPLIT:
        on_channels = _channel_dim_op(grad_fn)
        if on_channels:
            return SPLIT_REASON
        return None if on_channels is False else "a channel split could not be mapped"
    if kind == op.SLICE:
        return SLICE_REASON if _channel_dim_op(grad_fn) else None
    if kind != op.ELEMENTWISE or not node.inputs:  # modules, flatten reshapes; ops on weights only
        return None
    if gname in CHANNEL_PRESERVING_OPS:
        return None
    if gname in REDUCTIONS and hasattr(grad_fn, "_saved_self_sym_sizes"):
        rank = len(grad_fn._saved_self_sym_sizes)
        dims = [d % rank for d in signed_dims(grad_fn._saved_dim)]
        if rank >= 2 and 1 not in dims and dims:
            return None
    return f"operation {gname} on its path may mix or reorder channels"


def tie_kind(node: tp.Node) -> set[str]:
    """How an op node couples channels of different layers (for the reasons shown to users)."""
    if node.type == tp.ops.OPTYPE.CONCAT:
        return {"a concat"}
    if node.type != tp.ops.OPTYPE.ELEMENTWISE or node.grad_fn is None or len(node.inputs) < 2:
        return set()
    gname = grad_fn_name(node.grad_fn)
    if gname in ("Add", "Sub", "Rsub"):
        return {"a residual add"}
    if gname in ("Mul", "Div"):
        return {"a channel-wise multiply (squeeze-excitation)"}
    return set()


def is_prunable_layer(module: object) -> bool:
    """Can the pruner shrink this module's channels (its layer handler says so)?"""
    handler = handler_for(module)
    return handler is not None and handler.prunable


def module_problem(name: str, module: nn.Module) -> str | None:
    """Why the pruner cannot shrink `module` (no layer handler, or one that refuses it), or None."""
    handler = handler_for(module)
    if handler is None:
        return f"module {name} ({type(module).__name__}) is not supported by the pruner"
    return handler.problem(name, module)


# ------------------------------------------------------------------------------------------------
# Reshapes


def _reshape_shapes(grad_fn: object) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(input shape, output shape) of a view/reshape, or None when autograd does not expose them."""
    src = getattr(grad_fn, "_saved_self_sym_sizes", None)
    meta = getattr(grad_fn, "_input_metadata", None)
    if src is None or not meta:
        return None
    try:
        return tuple(int(s) for s in src), tuple(int(s) for s in meta[0].shape)
    except (AttributeError, TypeError, ValueError):
        return None


def classify_reshape(grad_fn: object) -> str:
    """'identity' (channel dim kept), 'flatten' (to/from [N, C*H*W], left to Torch-Pruning) or 'mixes'."""
    shapes = _reshape_shapes(grad_fn)
    if shapes is None:
        return "flatten"  # unknown shapes: Torch-Pruning's own rules, as before
    src, dst = shapes
    if len(src) < 2 or len(dst) < 2 or src[0] != dst[0]:
        return "mixes"
    if src[1] == dst[1]:
        return "identity"

    def prod(dims: tuple[int, ...]) -> int:
        out = 1
        for d in dims:
            out *= d
        return out

    if len(dst) == 2 and len(src) > 2 and dst[1] == prod(src[1:]):
        return "flatten"
    if len(src) == 2 and len(dst) > 2 and src[1] == prod(dst[1:]):
        return "flatten"
    return "mixes"


def _near_transpose(node: tp.Node, hops: int = 3) -> bool:
    """Is a transpose/permute within `hops` op nodes of `node` (the middle of a channel shuffle)?"""
    frontier, seen = [node], {node}
    for _ in range(hops):
        nxt = []
        for n in frontier:
            for m in (*n.inputs, *n.outputs):
                if m in seen or is_prunable_layer(m.module):
                    continue
                seen.add(m)
                if grad_fn_name(m.grad_fn) in ("Transpose", "Permute"):
                    return True
                nxt.append(m)
        frontier = nxt
    return False


BATCH_NORM_OPS = frozenset({"NativeBatchNorm", "CudnnBatchNorm", "MiopenBatchNorm"})


def _same_storage(saved: object, tensor: object) -> bool:
    return (isinstance(saved, torch.Tensor) and isinstance(tensor, torch.Tensor) and saved.numel() > 0
            and saved.data_ptr() == tensor.data_ptr() and saved.shape == tensor.shape)


def _norm_of_module(node: tp.Node, hops: int = 4) -> nn.Module | None:
    """The BatchNorm module whose own per-channel tensors a batch_norm op node uses, or None.

    A BatchNorm subclass that also applies an activation or dropout (timm's ``BatchNormAct2d``) calls
    ``F.batch_norm`` itself; Torch-Pruning then sees the module's node at its last op (the activation)
    and the batch_norm as a separate op. That op is per-channel and its weight/bias/running stats are
    shrunk with the module when the batch_norm saved exactly that module's tensors and the module's
    node follows it through a chain of single ops (each of which is checked on its own) and the
    module's own last op (the one its node stands for) is known to keep channel i in channel i. Anything
    else (a functional batch_norm on tensors of no module) is left to the usual refusal.
    """
    grad_fn = node.grad_fn
    saved = [getattr(grad_fn, f"_saved_{a}", None) for a in ("weight", "running_mean")]
    cur = node
    for _ in range(hops):
        if len(cur.outputs) != 1:
            return None
        cur = cur.outputs[0]
        module = cur.module
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            own = (getattr(module, "weight", None), getattr(module, "running_mean", None))
            ok = any(s is not None and o is not None for s, o in zip(saved, own, strict=True)) and all(
                _same_storage(s, o) for s, o in zip(saved, own, strict=True) if s is not None or o is not None
            )
            # the module's node stands for its last op (the activation): that op must keep channels too
            last = grad_fn_name(cur.grad_fn)
            return module if ok and (last in BATCH_NORM_OPS or last in CHANNEL_PRESERVING_OPS) else None
        if cur.type != tp.ops.OPTYPE.ELEMENTWISE:  # another module or a concat/split/reshape: not ours
            return None
    return None


def _shape_of(grad_fn: object, output_nr: int = 0) -> tuple[int, ...] | None:
    """The shape of output `output_nr` of the op behind `grad_fn` (None when autograd does not say)."""
    try:
        return tuple(int(s) for s in grad_fn._input_metadata[output_nr].shape)  # type: ignore[union-attr]
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


def _whole_view(grad_fn: object) -> bool:
    """An ``as_strided`` view that is its whole (contiguous) base: same shape, offset 0, row-major strides."""
    size, stride = getattr(grad_fn, "_saved_size", None), getattr(grad_fn, "_saved_stride", None)
    offset = getattr(grad_fn, "_saved_storage_offset", None)
    nxt = getattr(grad_fn, "next_functions", ())
    if size is None or stride is None or offset != 0 or len(nxt) != 1 or nxt[0][0] is None:
        return False
    size = tuple(int(s) for s in size)
    expect, acc = [], 1
    for s in reversed(size):
        expect.append(acc)
        acc *= s
    return size == _shape_of(*nxt[0]) and all(
        int(st) == e for st, e, s in zip(stride, reversed(expect), size, strict=True) if s > 1)


def _whole_view_op(node: tp.Node) -> bool:
    """An in-place op on a view that covers its whole base, or the re-read of that view.

    GhostNet's ``out = cat(...)[:, :C]`` (the whole concat) then ``out += shortcut``: autograd records
    a ``CopySlices`` (the base with the op applied to the view) and every later read of the view as an
    ``AsStrided`` of it. Both keep channel i in channel i when the view is the whole base: same shape,
    the op itself per-channel, and every re-read an offset-0 row-major view of the base's own shape.
    The base is taken to be row-major: the caller applies this only when the model's parameters and
    inputs are (a channels_last model stays refused). A view of part of the base, or any other
    geometry, is left to the usual refusal ("may mix or reorder channels").
    """
    grad_fn = node.grad_fn
    name = grad_fn_name(grad_fn)
    if name == "AsStrided":
        return _whole_view(grad_fn)
    if name != "torch::autograd::CopySlices":
        return False
    wrapped = getattr(grad_fn, "_wrapped_node", None)
    base = _shape_of(grad_fn)
    if wrapped is None or grad_fn_name(wrapped) not in CHANNEL_PRESERVING_OPS or base != _shape_of(wrapped):
        return False
    reads = [o for o in node.outputs if o.grad_fn is not None and grad_fn_name(o.grad_fn) == "AsStrided"]
    return bool(reads) and len(reads) == len(node.outputs) and all(_whole_view(o.grad_fn) for o in reads)


class SafeDependencyGraph(tp.DependencyGraph):
    """Torch-Pruning's graph with reshapes sorted before index maps are derived from them.

    A reshape that keeps dim 1 becomes a channel-wise identity; one that splits or merges the channel
    dimension (channel shuffle, group reshapes) becomes an opaque node carrying the reason, so that
    Torch-Pruning neither derives a bogus flatten map for it nor fails on it; only 2-D flattens
    (and their inverse) keep Torch-Pruning's flatten index map. Channel splits and slices carry
    their reason too. ``graph._coupled`` stops at every node carrying a reason: the groups reaching
    it are refused, and the layers beyond it form groups of their own.
    """

    def build_dependency(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        super().build_dependency(*args, **kwargs)
        map_leaf_concats(self, self.leaf_operands)  # concats that also take the input or a constant
        return self

    def _trace(self, model, example_inputs, forward_fn, output_transform):  # noqa: ANN001, ANN202
        with LeafRecorder(example_inputs) as recorder:  # the model input, constants: no node of their own
            module2node = super()._trace(model, example_inputs, forward_fn, output_transform)
        self.leaf_operands = recorder.records  # grad_fn -> graph_walk.Operands, for graph_walk's checks
        for node in module2node.values():  # channel splits/slices end a group's walk like a shuffle
            if node.type == tp.ops.OPTYPE.SPLIT and _channel_dim_op(node.grad_fn):
                setattr(node, PROBLEM_ATTR, SPLIT_REASON)
            elif node.type == tp.ops.OPTYPE.SLICE and _channel_dim_op(node.grad_fn):
                setattr(node, PROBLEM_ATTR, SLICE_REASON)
        for node in module2node.values():  # the batch_norm inside a norm-act module (timm's BatchNormAct2d)
            if node.type == tp.ops.OPTYPE.ELEMENTWISE and grad_fn_name(node.grad_fn) in BATCH_NORM_OPS:
                if _norm_of_module(node) is not None:
                    setattr(node, IDENTITY_ATTR, True)
        tensors = [t for t in (*model.parameters(), *tp.utils.flatten_as_list(example_inputs))
                   if isinstance(t, torch.Tensor)]
        if all(t.is_contiguous() for t in tensors):  # in-place ops on a whole-tensor view (GhostNet's x += s)
            for node in module2node.values():
                if node.type == tp.ops.OPTYPE.ELEMENTWISE and _whole_view_op(node):
                    setattr(node, IDENTITY_ATTR, True)
        reshapes = [n for n in module2node.values() if n.type == tp.ops.OPTYPE.RESHAPE]
        for node in reshapes:
            verdict = classify_reshape(node.grad_fn)
            if verdict == "flatten":
                continue
            if verdict == "identity":
                setattr(node, IDENTITY_ATTR, True)
            else:
                shapes = _reshape_shapes(node.grad_fn)
                if _near_transpose(node):
                    reason = SHUFFLE_REASON
                elif shapes is not None:
                    reason = (
                        f"channels pass through a reshape {list(shapes[0])} -> {list(shapes[1])} "
                        "that splits or merges the channel dimension"
                    )
                else:
                    reason = "channels pass through a reshape that splits or merges the channel dimension"
                setattr(node, PROBLEM_ATTR, reason)
            node.type = tp.ops.OPTYPE.ELEMENTWISE  # pass-through; no Torch-Pruning reshape index map
        return module2node


# ------------------------------------------------------------------------------------------------
# Grouped convolutions


def channel_blocks(
    members: list[tuple[str, nn.Module, bool, torch.Tensor, torch.Tensor]], channels: int
) -> tuple[int, torch.Tensor | None, str | None]:
    """Cells of a group's channels that must lose equal numbers of channels, from its grouped convs.

    `members`: (name, module, input side?, idxs, root_idxs) for every member plan. A grouped conv
    with G conv groups splits the side it shares with the group into G equal blocks; channels can
    only be removed in equal numbers from every block. Returns (number of cells, cell id of every
    group channel, None), (1, None, None) without grouped convs, or (1, None, reason) when the
    constraint cannot be kept inside this group (the conv takes only part of its channels from it,
    blocks of different convs do not nest into equal cells, or every block is a single channel).
    """
    cells: torch.Tensor | None = None
    first = ""
    for name, module, input_side, idxs, root_idxs in members:
        if not is_grouped(module):
            continue
        side = "input" if input_side else "output"
        size = handler_for(module).size(module, IN if input_side else OUT)
        groups = module.groups
        whole = (
            size == channels == len(idxs) == len(root_idxs)
            and len(set(idxs.tolist())) == size
            and len(set(root_idxs.tolist())) == channels
        )
        if not whole:
            return 1, None, f"grouped conv {name} (groups={groups}) takes only part of its {side} channels from this group"
        block = torch.empty(channels, dtype=torch.long)
        block[root_idxs] = idxs // (size // groups)
        cells = block if cells is None else cells * groups + block
        first = first or f"grouped conv {name} (groups={groups})"
    if cells is None:
        return 1, None, None
    ids = torch.unique(cells, return_inverse=True)[1]
    counts = torch.bincount(ids)
    if bool((counts != counts[0]).any()):
        return 1, None, f"{first}: the conv groups of its members do not line up in equal blocks"
    if int(counts[0]) == 1:
        return 1, None, f"{first} has one channel per conv group here; pruning would remove whole conv groups"
    return len(counts), ids, None


# ------------------------------------------------------------------------------------------------
# Channels copied into several channels of a member (GhostNet's cheap operation)


def copy_classes(items: list, channels: int) -> tuple[list[int], int]:
    """Group channels that are one channel because a member channel follows several of them.

    GhostNet's ``cat([x1, cheap(x1)])``, with ``cheap`` a depthwise conv of ``x1``: concat channels i
    and C/2 + i both come from x1's channel i. Rooted at a consumer of the concat, x1's channel i
    follows group channels i and C/2 + i; rooted at x1's conv, the consumer's channels i and C/2 + i
    both follow group channel i. Either way removing one of them forces removing the other, so they
    form one class (union-find over every member channel's group channels, through any number of
    concats, depthwise convs and adds). `items`: for every member, (member channel, group channel)
    pairs. Returns (class of every group channel, number of classes), classes numbered in the order
    of their lowest group channel; without such members every channel is its own class, in order.
    """
    parent = list(range(channels))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for pairs in items:
        first: dict[int, int] = {}
        for idx, root in pairs:
            a, b = find(first.setdefault(idx, root)), find(root)
            if a != b:
                parent[max(a, b)] = min(a, b)  # the lowest channel represents its class
    reps = sorted({find(r) for r in range(channels)})
    number = {r: i for i, r in enumerate(reps)}
    return [number[find(r)] for r in range(channels)], len(reps)


def copies_problem(members: list[tuple[str, torch.Tensor]], channels: int) -> str | None:
    """Why a group whose channels stand for several channels of some member cannot be pruned, or None.

    `members`: (name, group channel of each of the member's channels). Removing group channel c
    removes every member channel that follows c; this keeps the model consistent only when every
    member holds the same number of channels of every group channel (GhostNet: one in the primary
    conv, two in every reader of the concat), so that each member loses its copies of c together.
    A member that reads only some of them (a slice of the concat) or holds them unevenly is refused.
    """
    for name, classes in members:
        counts = torch.bincount(classes, minlength=channels)
        if int(counts.min()) != int(counts.max()):
            return CROSS_COUPLED_REASON.format(name)
    return None
