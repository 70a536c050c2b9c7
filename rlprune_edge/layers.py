"""One handler per supported layer type: channel counts, MACs, shrinking, checkpoint shape records.

In the style of Torch-Pruning's pruner registry, every layer type the package knows has one small
:class:`Handler`, and :func:`handler_for` is the only place that lists layer types. ``graph_rules``
asks it which modules the pruner may shrink and which convs are depthwise or grouped, ``graph``
which ones are filter banks (conv/linear: they start channel groups) and their MACs, ``flops``
and ``commands/inspect`` the MACs and a layer's shape, ``latency/artifacts`` the op and dims a
module contributes to the latency model, ``importance`` and ``baselines`` the filter banks and
their channel counts, ``pruning`` how to shrink a module to kept channel indices, and
``checkpoint`` which constructor shape arguments to record for a pruned model and how to rebuild a
module from them.

Covered: Conv (1d/2d/3d, incl. depthwise and grouped), ConvTranspose, Linear, BatchNorm (nd),
GroupNorm, LayerNorm and PReLU. ConvTranspose, GroupNorm and LayerNorm are recorded in checkpoints
but not pruned (``prunable`` False: groups through them are refused): removing channels would
change a GroupNorm/LayerNorm's statistics, and transposed convs are not implemented.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from rlprune_edge.errors import UserError

# Sides of a module in a group's plan: output channels (rows of a filter bank, per-channel norm
# params), input channels (columns of a consumer), or a depthwise conv whose in and out move together.
OUT, IN, DEPTHWISE = "out", "in", "depthwise"


def select(p: torch.Tensor, dim: int, keep: torch.Tensor) -> torch.Tensor:
    """Entries `keep` of `p` along `dim`, as a new tensor (a Parameter with the same requires_grad if `p` is one)."""
    data = p.detach().index_select(dim, keep.to(p.device))
    if isinstance(p, nn.Parameter):
        return nn.Parameter(data, requires_grad=p.requires_grad)
    return data


class Handler(ABC):
    """How one layer type takes part in channel pruning and in checkpoint shape records.

    ``types``: the module classes it handles (subclasses included). ``root``: a filter bank
    (conv/linear) whose output channels start a group and whose MACs are counted. ``prunable``:
    the pruner may remove its channels; groups reaching a module that is not are refused.
    """

    types: tuple[type[nn.Module], ...] = ()
    root = False
    prunable = True
    spatial = False  # works on a spatial map (convs): a 1x1 input means a pooled vector

    def macs(self, m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
        """Multiply-accumulates of one sample, from the module's input `x` and output `y` (batched)."""
        return 0

    def node_dims(self, m: nn.Module) -> dict[str, int | str]:
        """What the module fixes of its latency-model node ``{op, cin, cout, groups, k, hw_in, hw_out}``
        (the rest comes from the tensor shapes; ``op`` defaults to the module's type name)."""
        return {}

    def depthwise(self, m: nn.Module) -> bool:
        """A depthwise conv: its input and output channels move together."""
        return False

    def grouped(self, m: nn.Module) -> bool:
        """A grouped conv that is not depthwise: channels move in equal shares per conv group."""
        return False

    def describe(self, m: nn.Module, y: torch.Tensor) -> str:
        """A short shape description for tables (``in->out``)."""
        return f"{self.in_channels(m)}->{self.out_channels(m)}"

    @abstractmethod
    def out_channels(self, m: nn.Module) -> int | None:
        """Number of output channels, or None when the module has no per-channel output side."""

    def in_channels(self, m: nn.Module) -> int | None:
        """Number of input channels, or None when the module has no per-channel input side."""
        return self.out_channels(m)

    def size(self, m: nn.Module, kind: str) -> int | None:
        """Channels on side `kind` (IN: inputs; OUT or DEPTHWISE: outputs)."""
        return self.in_channels(m) if kind == IN else self.out_channels(m)

    def shrink(self, m: nn.Module, kind: str, keep: torch.Tensor) -> None:
        """Keep only channels `keep` (sorted indices in the module's own coordinates) on side `kind`, in place."""
        raise UserError(f"cannot shrink module of type {type(m).__name__}; mark its group unprunable.")

    @abstractmethod
    def shape_args(self, m: nn.Module) -> dict[str, int]:
        """Constructor shape arguments recorded in checkpoints (keys are part of the checkpoint format)."""

    @abstractmethod
    def rebuild(self, m: nn.Module, args: dict[str, int]) -> nn.Module:
        """A fresh module like `m` (same non-shape settings) with shape arguments `args`."""

    def problem(self, name: str, m: nn.Module) -> str | None:
        """Why the pruner refuses module `name`, or None."""
        return None if self.prunable else f"module {name} ({type(m).__name__}) is not supported by the pruner"


def _kernel(m: nn.Module) -> int:
    """Kernel elements of a conv (k_h * k_w for 2-d)."""
    k = 1
    for d in m.kernel_size:
        k *= int(d)
    return k


def _per_sample(t: torch.Tensor) -> int:
    """Values of one sample of a batched tensor (all of it when it has one dimension)."""
    return int(t[0].numel()) if t.dim() > 1 else int(t.numel())


def _check_balanced(m: nn.Module, keep: torch.Tensor, size: int, side: str) -> None:
    """A grouped conv must keep the same number of channels in every conv group."""
    per = torch.bincount(keep // (size // m.groups), minlength=m.groups)
    if bool((per != per[0]).any()) or int(per[0]) == 0:
        raise UserError(
            f"grouped conv would keep {per.tolist()} {side} channels per conv group; every conv group "
            "must keep the same number (recompute the groups with prunable_groups and prune through prune())."
        )


def _select_grouped_inputs(m: nn.Module, keep: torch.Tensor) -> torch.Tensor:
    """Weight of a grouped conv keeping input channels `keep` (sorted, the same number per conv group).

    Each conv group's filters see only their own input block, so the columns to keep differ per block.
    """
    w = m.weight
    groups, per_in = m.groups, m.in_channels // m.groups
    k = len(keep) // groups
    local = (keep.view(groups, k) - torch.arange(groups).unsqueeze(1) * per_in).to(w.device)
    rest = w.shape[2:]
    data = w.detach().reshape(groups, w.shape[0] // groups, per_in, *rest)
    idx = local.view(groups, 1, k, *([1] * len(rest))).expand(groups, w.shape[0] // groups, k, *rest)
    data = torch.gather(data, 2, idx).reshape(w.shape[0], k, *rest)
    return nn.Parameter(data, requires_grad=w.requires_grad) if isinstance(w, nn.Parameter) else data


class ConvHandler(Handler):
    """Conv1d/2d/3d, including depthwise (groups == channels) and grouped (ResNeXt, RegNet) convs."""

    types = (nn.modules.conv._ConvNd,)
    root = True
    spatial = True
    onnx_op = "Conv"

    def out_channels(self, m: nn.Module) -> int:
        return m.out_channels

    def macs(self, m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
        return _per_sample(y) * (m.in_channels // m.groups) * _kernel(m)

    def node_dims(self, m: nn.Module) -> dict[str, int | str]:
        return {"op": self.onnx_op, "cout": int(m.out_channels), "groups": int(m.groups), "k": _kernel(m)}

    def depthwise(self, m: nn.Module) -> bool:
        return m.groups > 1 and m.groups == m.in_channels == m.out_channels

    def grouped(self, m: nn.Module) -> bool:
        return m.groups > 1 and not self.depthwise(m)

    def describe(self, m: nn.Module, y: torch.Tensor) -> str:
        return (f"{m.in_channels}->{m.out_channels} k{'x'.join(map(str, m.kernel_size))} s{m.stride[0]}"
                f"{f' g{m.groups}' if m.groups > 1 else ''} out {'x'.join(map(str, y.shape[2:]))}")

    def in_channels(self, m: nn.Module) -> int:
        return m.in_channels

    def shrink(self, m: nn.Module, kind: str, keep: torch.Tensor) -> None:
        grouped = m.groups > 1 and kind != DEPTHWISE
        if kind == IN:
            if grouped:
                _check_balanced(m, keep, m.in_channels, "input")
                m.weight = _select_grouped_inputs(m, keep)
            else:
                m.weight = select(m.weight, 1, keep)
            m.in_channels = len(keep)
            return
        if grouped:
            _check_balanced(m, keep, m.out_channels, "output")
        m.weight = select(m.weight, 0, keep)
        if m.bias is not None:
            m.bias = select(m.bias, 0, keep)
        m.out_channels = len(keep)
        if kind == DEPTHWISE:
            m.in_channels = m.groups = len(keep)

    def shape_args(self, m: nn.Module) -> dict[str, int]:
        return {"in_channels": m.in_channels, "out_channels": m.out_channels, "groups": m.groups}

    def _settings(self, m: nn.Module) -> dict:
        return dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
                    bias=m.bias is not None, padding_mode=m.padding_mode)

    def rebuild(self, m: nn.Module, args: dict[str, int]) -> nn.Module:
        return type(m)(args["in_channels"], args["out_channels"], groups=args["groups"], **self._settings(m))


class ConvTransposeHandler(ConvHandler):
    """ConvTranspose1d/2d/3d: recorded in checkpoints; not pruned (its weight is laid out [in, out/groups, ...])."""

    types = (nn.modules.conv._ConvTransposeNd,)
    prunable = False
    shrink = Handler.shrink
    onnx_op = "ConvTranspose"

    def macs(self, m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
        """Every input value meets out_channels/groups kernels (the conv formula counts the output side)."""
        return _per_sample(x) * (m.out_channels // m.groups) * _kernel(m)

    def _settings(self, m: nn.Module) -> dict:
        return {**super()._settings(m), "output_padding": m.output_padding}


class LinearHandler(Handler):
    types = (nn.Linear,)
    root = True

    def macs(self, m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
        return _per_sample(y) * m.in_features

    def node_dims(self, m: nn.Module) -> dict[str, int | str]:
        return {"op": "Gemm", "cin": int(m.in_features), "cout": int(m.out_features), "hw_in": 1, "hw_out": 1}

    def out_channels(self, m: nn.Module) -> int:
        return m.out_features

    def in_channels(self, m: nn.Module) -> int:
        return m.in_features

    def shrink(self, m: nn.Module, kind: str, keep: torch.Tensor) -> None:
        if kind == IN:
            m.weight = select(m.weight, 1, keep)
            m.in_features = len(keep)
            return
        m.weight = select(m.weight, 0, keep)
        if m.bias is not None:
            m.bias = select(m.bias, 0, keep)
        m.out_features = len(keep)

    def shape_args(self, m: nn.Module) -> dict[str, int]:
        return {"in_features": m.in_features, "out_features": m.out_features}

    def rebuild(self, m: nn.Module, args: dict[str, int]) -> nn.Module:
        return type(m)(args["in_features"], args["out_features"], bias=m.bias is not None)


class BatchNormHandler(Handler):
    """BatchNorm1d/2d/3d (and SyncBatchNorm): per-channel affine params and running stats, in == out."""

    types = (nn.modules.batchnorm._BatchNorm,)

    def out_channels(self, m: nn.Module) -> int:
        return m.num_features

    def shrink(self, m: nn.Module, kind: str, keep: torch.Tensor) -> None:
        for attr in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(m, attr, None)
            if t is not None:
                setattr(m, attr, select(t, 0, keep))
        m.num_features = len(keep)

    def shape_args(self, m: nn.Module) -> dict[str, int]:
        return {"num_features": m.num_features}

    def rebuild(self, m: nn.Module, args: dict[str, int]) -> nn.Module:
        return type(m)(args["num_features"], eps=m.eps, momentum=m.momentum, affine=m.affine,
                       track_running_stats=m.track_running_stats)


class GroupNormHandler(Handler):
    """GroupNorm: recorded in checkpoints; not pruned (removing channels changes its group statistics)."""

    types = (nn.GroupNorm,)
    prunable = False

    def out_channels(self, m: nn.Module) -> int:
        return m.num_channels

    def shape_args(self, m: nn.Module) -> dict[str, int]:
        return {"num_groups": m.num_groups, "num_channels": m.num_channels}

    def rebuild(self, m: nn.Module, args: dict[str, int]) -> nn.Module:
        return type(m)(args["num_groups"], args["num_channels"], eps=m.eps, affine=m.affine)


class LayerNormHandler(Handler):
    """LayerNorm (last normalized dim): recorded in checkpoints; not pruned (it normalizes across channels)."""

    types = (nn.LayerNorm,)
    prunable = False

    def out_channels(self, m: nn.Module) -> int:
        return int(m.normalized_shape[-1])

    def shape_args(self, m: nn.Module) -> dict[str, int]:
        return {"normalized_size": int(m.normalized_shape[-1])}

    def rebuild(self, m: nn.Module, args: dict[str, int]) -> nn.Module:
        shape = tuple(m.normalized_shape[:-1]) + (args["normalized_size"],)
        return type(m)(shape, eps=m.eps, elementwise_affine=m.elementwise_affine, bias=m.bias is not None)


class PReLUHandler(Handler):
    """PReLU: per-channel slopes; a single shared slope (num_parameters == 1) has no channel side."""

    types = (nn.PReLU,)

    def out_channels(self, m: nn.Module) -> int | None:
        return m.num_parameters if m.num_parameters > 1 else None

    def shrink(self, m: nn.Module, kind: str, keep: torch.Tensor) -> None:
        if m.num_parameters > 1:
            m.weight = select(m.weight, 0, keep)
            m.num_parameters = len(keep)

    def shape_args(self, m: nn.Module) -> dict[str, int]:
        return {"num_parameters": m.num_parameters}

    def rebuild(self, m: nn.Module, args: dict[str, int]) -> nn.Module:
        return type(m)(num_parameters=args["num_parameters"])


HANDLERS: tuple[Handler, ...] = (
    ConvHandler(), ConvTransposeHandler(), LinearHandler(), BatchNormHandler(),
    GroupNormHandler(), LayerNormHandler(), PReLUHandler(),
)
_BY_TYPE: dict[type, Handler] = {t: h for h in HANDLERS for t in h.types}


def leaf_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every module without children: what per-layer torch times cover."""
    return [(n, m) for n, m in module.named_modules() if n and not list(m.children())]


def filter_bank(module: object) -> Handler | None:
    """The handler of a conv/linear (a group root that carries MACs), or None for any other module."""
    handler = handler_for(module)
    return handler if handler is not None and handler.root else None


def handler_for(module: object) -> Handler | None:
    """The handler of `module`'s most specific registered type (e.g. ConvTranspose before Conv), or None."""
    for cls in type(module).__mro__:
        handler = _BY_TYPE.get(cls)
        if handler is not None:
            return handler
    return None
