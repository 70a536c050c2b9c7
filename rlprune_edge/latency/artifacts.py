"""What a backend measures, and the layer dimensions the latency model is fitted on.

A runtime says what its backend measures (``Runtime.artifact``): file runtimes (ONNX Runtime,
TensorRT, and any board over ssh) an exported ``.onnx`` file; module runtimes (torch) the
``nn.Module`` itself (no ONNX in between, so what is timed is what a PyTorch deployment runs).
``materialize`` gives a backend the form it takes, and ``node_dims``
describes that form's compute nodes in one shape for both: per node ``{op, cin, cout, groups, k,
hw_out, hw_in}``, keyed by the ONNX node name or the module's qualified name (the same names the
backend's per-layer times carry in ``LayerTime.onnx_nodes``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rlprune_edge.runtimes import get_runtime
from rlprune_edge.runtimes.base import MODULE, ONNX_FILE


def takes_modules(backend: Any) -> bool:
    """True when the backend measures ``nn.Module`` objects rather than ONNX files: its own ``takes``
    when it says, else its profile's runtime's ``artifact`` (a board over ssh always takes files)."""
    takes = getattr(backend, "takes", None)
    if takes is None:
        profile = getattr(backend, "profile", None)
        local = profile is not None and not profile.is_remote
        takes = get_runtime(profile.runtime.name).artifact if local else ONNX_FILE
    return takes == MODULE


def materialize(backend: Any, model: Any, path: str | Path, input_shape: Sequence[int], batch: int) -> Any:
    """The form `backend` measures: an eval-mode CPU copy of `model` (torch), else `model` exported to `path`.

    The module copy carries ``input_shape`` so the backend builds inputs of the right shape.
    """
    if takes_modules(backend):
        m = copy.deepcopy(model).eval().cpu()
        m.input_shape = tuple(int(d) for d in input_shape)
        return m
    from rlprune_edge.onnx_io import export_onnx

    return export_onnx(copy.deepcopy(model).eval().cpu(), Path(path), tuple(input_shape), batch=int(batch))


def node_dims(artifact: Any, input_shape: Sequence[int] | None = None, batch: int = 1) -> dict[str, dict[str, Any]]:
    """Per compute node of an ONNX file or module: op, channel counts and spatial sizes."""
    if isinstance(artifact, (str, Path)):
        return onnx_node_dims(artifact)
    shape = tuple(input_shape or getattr(artifact, "input_shape", ()))
    return module_node_dims(artifact, shape, batch)


def module_node_dims(module: Any, input_shape: Sequence[int], batch: int = 1) -> dict[str, dict[str, Any]]:
    """Per leaf module, from one forward pass with hooks; a module called twice keeps its first call.

    The shapes give channels and spatial sizes; a layer handler (``layers.Handler.node_dims``) gives
    what the module itself fixes: the ONNX op a filter bank exports as, its groups and kernel size."""
    import torch

    from rlprune_edge.layers import handler_for, leaf_modules

    out: dict[str, dict[str, Any]] = {}
    handles = []

    def hook(name: str):
        def record(mod: Any, inputs: tuple, output: Any) -> None:
            if name in out or not inputs or not isinstance(inputs[0], torch.Tensor) or not isinstance(output, torch.Tensor):
                return
            x, y = inputs[0], output
            handler = handler_for(mod)
            d: dict[str, Any] = {"op": type(mod).__name__, "groups": 1, "k": 1}
            d["cin"] = int(x.shape[1]) if x.dim() > 1 else int(x.numel())
            d["cout"] = int(y.shape[1]) if y.dim() > 1 else int(y.numel())
            d["hw_in"] = int(np.prod(x.shape[2:])) if x.dim() > 2 else 1
            d["hw_out"] = int(np.prod(y.shape[2:])) if y.dim() > 2 else 1
            if handler is not None:  # filter banks fix their op (Conv, ConvTranspose, Gemm), groups, kernel, channels
                d.update(handler.node_dims(mod))
            out[name] = d
        return record

    for name, mod in leaf_modules(module):
        handles.append(mod.register_forward_hook(hook(name)))
    try:
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        with torch.no_grad():
            module.eval()(torch.zeros(int(batch), *input_shape, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
    return out


def onnx_node_dims(path: str | Path) -> dict[str, dict[str, Any]]:
    """Per ONNX node: op, channel counts and spatial sizes (from the weights and shape inference)."""
    import onnx
    from onnx import shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    shapes: dict[str, list[int]] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    inits = {t.name: list(t.dims) for t in g.initializer}
    for t in g.initializer:
        shapes.setdefault(t.name, list(t.dims))
    out: dict[str, dict[str, Any]] = {}
    for n in g.node:
        if all(t in inits for t in n.input if t):
            continue  # constant subgraph (Constant, Identity of a weight): folded by runtimes
        in_shape = shapes.get(n.input[0], []) if n.input else []
        out_shape = shapes.get(n.output[0], []) if n.output else []
        d: dict[str, Any] = {"op": n.op_type}
        if n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 1 and n.input[1] in inits:
            w = inits[n.input[1]]
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            cout = w[0] if n.op_type == "Conv" else w[1] * group
            d.update(cin=int(in_shape[1]) if len(in_shape) > 1 else int(w[1] * group), cout=int(cout),
                     groups=int(group), k=int(np.prod(w[2:])) if len(w) > 2 else 1,
                     hw_out=int(np.prod(out_shape[2:])) if len(out_shape) > 2 else 1,
                     hw_in=int(np.prod(in_shape[2:])) if len(in_shape) > 2 else 1)
        elif n.op_type in ("Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in inits:
            w = inits[n.input[1]]
            trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
            cout, cin = (w[0], w[1]) if (n.op_type == "Gemm" and trans_b) else (w[-1], w[-2])
            d.update(cin=int(cin), cout=int(cout), groups=1, k=1, hw_out=1, hw_in=1)
        else:
            c = int(out_shape[1]) if len(out_shape) > 1 else int(np.prod(out_shape) or 1)
            cin = int(in_shape[1]) if len(in_shape) > 1 else c
            d.update(cin=cin, cout=c, groups=1, k=1, hw_out=int(np.prod(out_shape[2:])) if len(out_shape) > 2 else 1,
                     hw_in=int(np.prod(in_shape[2:])) if len(in_shape) > 2 else 1)
        out[n.name] = d
    return out
