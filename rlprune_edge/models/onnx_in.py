"""An ONNX classifier as a model: ``--model model.onnx``, converted to PyTorch by onnx2torch.

onnx2torch (the optional extra ``onnx``) turns the graph into a ``torch.fx.GraphModule`` of real
``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.Linear`` modules, which the dependency graph traces and the
pruner shrinks like any other model, and which exports back to ONNX. An ONNX file is data, not
code: converting it imports nothing of the user's. The file is read once per use, bounded in size,
and its sha256 is recorded (:func:`onnx_record`), so a checkpoint of a converted model is rebuilt
only from the same file, named again with ``--arch`` (:func:`check_onnx_arch`), as for a model
class of your own (:mod:`rlprune_edge.models.user`).

Before converting, every node's (domain, op type, opset) is looked up in onnx2torch's converter
registry, so an op it cannot convert is named with its node instead of failing deep inside. Two
exact rewrites make exported graphs convertible and prunable: an ``Identity`` of a weight (torch's
exporter de-duplicates equal biases that way) is folded into the weight, and a ``Reshape`` to a
constant shape that only flattens ``(N, C, H, W)`` to ``(N, C*H*W)`` becomes ``Flatten``, which
follows the channel count when channels are pruned (a constant shape would not, and a static-batch
export bakes the batch size into it).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rlprune_edge.errors import UserError
from rlprune_edge.limits import WEIGHTS_MEMORY_SHARE, available_memory, gib, require_regular_file

MAX_ONNX_BYTES = (1 << 31) - 1  # one protobuf message: an ONNX file without external data is at most 2 GiB
ORT_MAX_REL_ERROR = 1e-4  # the converted module against ONNX Runtime on the original file
INSTALL = "pip install 'rlprune-edge[onnx]'"
_ONNX_DOMAINS = ("", "ai.onnx")
_HINT = "give the path of an .onnx file written by torch.onnx.export or your framework's ONNX exporter."


def is_onnx_spec(spec: object) -> bool:
    """True for a model spec that is an ONNX file's path (it ends in ``.onnx``)."""
    return isinstance(spec, (str, os.PathLike)) and str(spec).strip().lower().endswith(".onnx")


def require_onnx2torch(spec: object):
    """The onnx2torch package, or the one sentence saying how to install it."""
    try:
        import onnx2torch
    except ImportError:
        raise UserError(f"{spec} is an ONNX model, and converting it to PyTorch needs onnx2torch: "
                        f"{INSTALL}.") from None
    return onnx2torch


def _read(path: Path) -> bytes:
    """The file's bytes, read once: a regular file, at most 2 GiB and at most the memory share a model may take."""
    require_regular_file(path, "ONNX model", _HINT)
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            avail = available_memory()
            bound = min(MAX_ONNX_BYTES, int(WEIGHTS_MEMORY_SHARE * avail) if avail else MAX_ONNX_BYTES)
            if size > bound:
                why = ("more than one ONNX file can hold (2 GiB, protobuf's limit)" if bound == MAX_ONNX_BYTES
                       else f"more than {WEIGHTS_MEMORY_SHARE:.0%} of the memory available here ({gib(avail or 0)})")
                raise UserError(f"ONNX model {path} is {gib(size)}, {why}; use a smaller model or a machine "
                                "with more memory.")
            data = fh.read(bound + 1)
    except OSError as exc:
        raise UserError(f"cannot read ONNX model {path}: {exc.strerror or exc}; check its permissions.") from None
    if len(data) > bound:
        raise UserError(f"ONNX model {path} grew while it was being read; run again when it is complete.")
    return data


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def onnx_record(path: str | os.PathLike) -> dict:
    """The source record of an ONNX file (kind 'onnx', its absolute path and sha256); the file is read once."""
    return _record(Path(path).expanduser().resolve(), _read(Path(path).expanduser().resolve()))


def _record(path: Path, data: bytes) -> dict:
    return {"kind": "onnx", "file": str(path), "module": "", "factory": "", "args": {}, "sha256": _digest(data),
            "spec": str(path)}


def check_onnx_record(raw: object) -> bool:
    """True when a checkpoint header's ``source`` field is a well-formed record of an ONNX file."""
    return (isinstance(raw, dict) and raw.get("kind") == "onnx"
            and all(isinstance(raw.get(k), str) for k in ("file", "spec", "sha256"))
            and raw.get("module", "") == "" and raw.get("factory", "") == "" and raw.get("args", {}) == {}
            and is_onnx_spec(raw["spec"]) and bool(re.fullmatch(r"[0-9a-f]{64}", raw["sha256"])))


# --- reading and checking the graph --------------------------------------------------------------

def _parse(data: bytes, path: Path):
    """The ModelProto of `data` (UserError when it is not an ONNX model or keeps weights elsewhere)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError, TypeError) as exc:
        raise UserError(f"{path} is not an ONNX model (protobuf parsing failed: {str(exc)[:80] or 'no message'}); "
                        f"{_HINT}") from None
    if not proto.graph.node or not proto.opset_import or proto.ir_version < 3:
        raise UserError(f"{path} is not an ONNX model (no graph nodes, opset or IR version >= 3 in it); {_HINT}")
    external = [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise UserError(f"{path} keeps its weights in external data files ({external[0]}, ...); save it as one file "
                        "(onnx.save_model(model, path, save_as_external_data=False)).")
    return proto


def _input_dims(proto, path: Path) -> tuple[int | None, int | None, int | None]:
    """(C, H, W) of the one image input, None where a dimension is not fixed."""
    import onnx

    weights = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in weights]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs[:4]) or "none"
        raise UserError(f"{path} has {len(inputs)} graph inputs ({names}); rlprune-edge takes a classifier with one "
                        "image input (N, C, H, W).")
    tensor = inputs[0].type.tensor_type
    if not inputs[0].type.HasField("tensor_type") or not tensor.HasField("shape") or len(tensor.shape.dim) != 4:
        rank = len(tensor.shape.dim) if tensor.HasField("shape") else "unknown"
        raise UserError(f"{path}: input {inputs[0].name!r} has rank {rank}, not 4; rlprune-edge takes a classifier "
                        "of images, (N, C, H, W).")
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        kind = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type) if tensor.elem_type else "undefined"
        raise UserError(f"{path}: input {inputs[0].name!r} is {kind}, not float32; export the model with a float32 "
                        "image input (normalisation inside or outside the network).")
    dims = [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim]
    return dims[1], dims[2], dims[3]  # type: ignore[return-value]


def _check_ops(proto, path: Path) -> None:
    """UserError naming the first node whose (domain, op type, opset) onnx2torch has no converter for."""
    from onnx2torch.node_converters import get_converter

    opsets = {("" if o.domain == "ai.onnx" else o.domain): int(o.version) for o in proto.opset_import}
    def convertible(op_type: str, version: int | None, domain: str) -> bool:
        if version is None:  # the file declares no opset for the node's domain
            return False
        try:
            get_converter(operation_type=op_type, version=version, domain=domain)
        except NotImplementedError:  # how onnx2torch says it has no converter
            return False
        return True

    for i, node in enumerate(proto.graph.node):
        domain = "" if node.domain == "ai.onnx" else node.domain
        version = opsets.get(domain)
        if not convertible(node.op_type, version, domain):
            where = f" of domain {domain!r}" if domain else ""
            name = node.name or f"#{i}"
            raise UserError(f"{path.name}: node {name!r} uses op {node.op_type}{where} (opset {version or '?'}), which "
                            "onnx2torch cannot convert to PyTorch; export the model without it (e.g. keep "
                            "post-processing outside the network).") from None


def _fold_weight_identities(proto) -> None:
    """Identity nodes of an initializer (torch's exporter shares equal biases that way) become the initializer."""
    graph = proto.graph
    weights = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias: dict[str, str] = {}
    kept = []
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in alias:
                node.input[k] = alias[name]
        if (node.op_type == "Identity" and node.domain in _ONNX_DOMAINS and len(node.input) == 1
                and node.input[0] in weights and node.output[0] not in outputs):
            alias[node.output[0]] = node.input[0]
            continue
        kept.append(node)
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)


def _constants(proto) -> dict[str, list[int]]:
    """Integer 1-D constants (initializers and Constant nodes) by value name: the candidates for a Reshape's shape."""
    from onnx import numpy_helper

    out: dict[str, list[int]] = {}
    tensors = [(t.name, t) for t in proto.graph.initializer]
    tensors += [(n.output[0], a.t) for n in proto.graph.node if n.op_type == "Constant" and n.domain in _ONNX_DOMAINS
                for a in n.attribute if a.name == "value" and a.type == a.TENSOR]
    for name, tensor in tensors:
        if len(tensor.dims) == 1 and tensor.dims[0] <= 8 and tensor.data_type == 7:  # INT64
            out[name] = [int(v) for v in numpy_helper.to_array(tensor)]
    return out


def _generalise_reshapes(proto, path: Path) -> int:
    """Reshapes to a constant shape, made to follow the batch and pruned channels where that is exact.

    A reshape from (N, C, H, W...) to (N, C*H*W) (shapes from ONNX shape inference, whether the target is
    a constant or computed from the batch size) becomes Flatten(axis=1); another constant shape whose
    first entry is the (static) first dimension of its input gets 0 there ("copy it from the input"),
    so a static-batch export runs on any batch. Both are the same graph on the exported shapes.
    Returns how many nodes were rewritten."""
    import onnx
    from onnx import numpy_helper

    shaped = [n for n in proto.graph.node if n.op_type == "Reshape" and n.domain in _ONNX_DOMAINS and len(n.input) == 2
              and not any(a.name == "allowzero" and a.i for a in n.attribute)]
    if not shaped:
        return 0
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as exc:  # onnx's own error types vary by version: all mean "the graph is inconsistent"
        raise UserError(f"{path} fails ONNX shape inference ({type(exc).__name__}: {str(exc)[:120]}); re-export "
                        "the model.") from None
    dims = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            dims[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                             for d in vi.type.tensor_type.shape.dim]
    consts = _constants(proto)
    opset = next((o.version for o in proto.opset_import if o.domain in _ONNX_DOMAINS), 0)
    rewritten = 0
    for node in shaped:
        src, out, target = dims.get(node.input[0]), dims.get(node.output[0]), consts.get(node.input[1])
        if not src or len(src) < 2:
            continue
        features = math.prod(src[1:]) if len(src) >= 3 and all(isinstance(d, int) for d in src[1:]) else None
        inferred_flat = bool(out) and len(out) == 2 and out[0] is not None and out[0] == src[0] and out[1] == features
        constant_flat = (bool(target) and len(target) == 2 and target != [-1, -1] and target[1] in (-1, features)
                         and (target[0] in (0, -1) or target[0] == src[0]))
        extra = len(out or []) - len(src)
        if features is not None and (inferred_flat or constant_flat):
            del node.input[1:]
            node.op_type = "Flatten"
            node.attribute.append(onnx.helper.make_attribute("axis", 1))
        elif (out and extra > 0 and all(isinstance(d, int) for d in src[1:]) and out[:len(src)] == src
              and set(out[len(src):]) == {1}):  # (N, C) -> (N, C, 1, 1), as squeeze-excitation does: Unsqueeze
            axes = list(range(len(src), len(out)))
            node.op_type = "Unsqueeze"
            del node.input[1:]
            if opset >= 13:
                name = f"{node.output[0]}__axes"
                proto.graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), name))
                node.input.append(name)
            else:
                node.attribute.append(onnx.helper.make_attribute("axes", axes))
        elif target and isinstance(src[0], int) and target[0] == src[0] > 0:
            name = f"{node.input[1]}__any_batch"
            if name not in consts:
                proto.graph.initializer.append(numpy_helper.from_array(np.array([0, *target[1:]], np.int64), name))
                consts[name] = [0, *target[1:]]
            node.input[1] = name
        else:
            continue
        rewritten += 1
    if rewritten:
        _drop_dead_nodes(proto)
    return rewritten


def _drop_dead_nodes(proto) -> None:
    """Remove nodes none of whose outputs is used (the shape computations a rewritten Reshape left behind)."""
    nodes = list(proto.graph.node)
    while True:
        used = {name for n in nodes for name in n.input} | {o.name for o in proto.graph.output}
        kept = [n for n in nodes if any(o in used for o in n.output)]
        if len(kept) == len(nodes):
            break
        nodes = kept
    if len(nodes) != len(proto.graph.node):
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)


def _export_compat() -> None:
    """onnx2torch 1.5.15's modules (Shape, Gather, Squeeze, ReduceSum...) read the export opset from
    ``torch.onnx.symbolic_helper.GLOBALS``, which newer torch keeps only in its TorchScript exporter
    package; name that same object there too, so a converted model exports back to ONNX."""
    from torch.onnx import symbolic_helper

    if hasattr(symbolic_helper, "GLOBALS") or hasattr(symbolic_helper, "_export_onnx_opset_version"):
        return
    try:
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    except ImportError:  # another layout: onnx2torch's own lookup is all there is
        return
    symbolic_helper.GLOBALS = GLOBALS


def _convert(data: bytes, path: Path) -> nn.Module:
    """The checked, rewritten graph converted by onnx2torch; `input_shape` set when C, H and W are fixed."""
    onnx2torch = require_onnx2torch(path)
    proto = _parse(data, path)
    c, h, w = _input_dims(proto, path)
    _fold_weight_identities(proto)
    _generalise_reshapes(proto, path)
    _check_ops(proto, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = onnx2torch.convert(proto)
    except Exception as exc:  # an attribute or a weight layout a registered converter does not handle
        text = " ".join(str(exc).split())[:160] or "no message"
        raise UserError(f"onnx2torch cannot convert {path} ({type(exc).__name__}: {text}); export the model "
                        "without that construct, or with another opset.") from None
    _export_compat()
    if c is not None and h is not None and w is not None:
        model.input_shape = (c, h, w)
    model.onnx_input_dims = (c, h, w)
    return model.eval()


def build_from_onnx(record: dict) -> nn.Module:
    """The module recorded by an ONNX source record: the file read again, its sha256 checked, converted."""
    path = Path(record["file"])
    data = _read(path)
    digest = _digest(data)
    if digest != record["sha256"]:
        raise UserError(f"ONNX model {path} has changed since it was recorded (sha256 {digest[:12]}, recorded "
                        f"{record['sha256'][:12]}); restore that file or re-create the checkpoint.")
    return _convert(data, path)


def check_onnx_arch(record: dict, arch: str | None, path: object, flag: str = "--arch") -> dict:
    """Compare the ONNX file named now (`arch`) with a checkpoint's record; returns the record to build from."""
    recorded = record["spec"]
    if arch is None or not str(arch).strip():
        raise UserError(f"checkpoint {path} holds a model converted from the ONNX file {recorded}, which it needs to "
                        f"be rebuilt: give it again with {flag} {recorded} (Python: load_checkpoint(path, arch=...)).")
    if not is_onnx_spec(arch):
        raise UserError(f"{flag} {arch!r} is not an .onnx file; checkpoint {path} was converted from the ONNX file "
                        f"{recorded}: give {flag} {recorded}.")
    file = Path(arch).expanduser().resolve()
    digest = _digest(_read(file))
    if digest != record["sha256"]:
        why = (f"{file} has changed since the checkpoint was saved (sha256 {digest[:12]}, recorded "
               f"{record['sha256'][:12]})" if str(file) == record["file"] else
               f"{file} is not the ONNX file recorded ({record['file']}, sha256 {record['sha256'][:12]})")
        raise UserError(f"checkpoint {path} cannot be rebuilt: {why}; restore that file or re-create the checkpoint.")
    return {**record, "file": str(file)}


def onnx_model(spec: str, *, shape: tuple[int, int, int] | None, num_classes: int | None, width: float | None = 1.0,
               arch: str | None = None, name: str = "model") -> tuple[nn.Module, dict, int]:
    """(module, source record, class count) for ``--model model.onnx``: converted from one read of the file,
    checked to map `shape` (the data's; else the file's own) to (N, num_classes) logits."""
    from rlprune_edge.models.user import check_classifier

    if arch is not None:
        raise UserError(f"--arch is for reloading a checkpoint; {name} {spec} already names the ONNX file, so leave "
                        "--arch out.")
    if width not in (None, 1.0):
        raise UserError(f"--width applies only to the built-in zoo, not to the ONNX model {spec}, which is converted "
                        "as it is.")
    require_onnx2torch(spec)
    path = Path(spec).expanduser().resolve()
    data = _read(path)
    model = _convert(data, path)
    fixed = model.onnx_input_dims
    if shape is not None:
        shape = tuple(int(d) for d in shape)  # type: ignore[assignment]
        named = zip(("channels", "height", "width"), fixed, shape, strict=True)
        clash = [f"{what} {f} (the data's {s})" for what, f, s in named if f is not None and f != s]
        if clash:
            raise UserError(f"{spec} takes inputs of {', '.join(clash)}; use data of the size it was exported for "
                            f"(imagefolder@SIZE:DIR) or export it with that size.")
    else:
        shape = getattr(model, "input_shape", None) or ((fixed[0] or 3), (fixed[1] or 32), (fixed[2] or 32))
    classes = check_classifier(model, shape, None, spec)  # type: ignore[arg-type]
    if num_classes is not None and classes != num_classes:
        raise UserError(f"{spec} predicts {classes} classes but the data has {num_classes}; give the --data it was "
                        "trained on, or export a model with a head for this data.")
    model.input_shape = shape
    return model, _record(path, data), classes


def ort_relative_error(model: nn.Module, record: dict, x: torch.Tensor) -> float:
    """max |ONNX Runtime - module| / max |ONNX Runtime| on `x`, ONNX Runtime running the recorded file itself."""
    import onnxruntime as ort

    path = Path(record["file"])
    data = _read(path)
    if _digest(data) != record["sha256"]:
        raise UserError(f"ONNX model {path} changed while it was being imported; run again.")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0]
        batch = feed.shape[0] if isinstance(feed.shape[0], int) and feed.shape[0] > 0 else len(x)
        outs = []
        for i in range(0, len(x), batch):  # a static batch: zero-padded chunks
            chunk = x[i:i + batch].numpy()
            pad = np.zeros((batch - len(chunk), *chunk.shape[1:]), dtype=np.float32)
            outs.append(session.run(None, {feed.name: np.concatenate([chunk, pad])})[0][:len(chunk)])
        want = np.concatenate(outs)
    except Exception as exc:  # onnxruntime raises its own exception types
        text = " ".join(str(exc).split())[:160]
        raise UserError(f"ONNX Runtime cannot run {path} ({type(exc).__name__}: {text}), so its conversion cannot be "
                        "checked; re-export the model.") from None
    with torch.no_grad():
        got = model.eval()(x).numpy()
    if got.shape != want.shape:
        return math.inf
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))
