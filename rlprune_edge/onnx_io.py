"""Low-level ONNX helpers: export a module, check, simplify, run with onnxruntime, verify, metadata.

Every graph written here has one input ``input`` (NCHW float32) and one output ``logits``; files
are written atomically (:func:`rlprune_edge.fsutil.atomic_path`). The bundle step
(:mod:`rlprune_edge.export`) and INT8 quantization (:mod:`rlprune_edge.quantize`) build on these.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlprune_edge.errors import UserError
from rlprune_edge.fsutil import atomic_path

INPUT_NAME = "input"
OUTPUT_NAME = "logits"

# fp32 verification thresholds (issue 7)
MAX_ABS_DIFF = 1e-4
MIN_TOP1_AGREEMENT = 0.999

# ONNX opsets export accepts (check_opset): 17 (LayerNormalization) up to what torch's TorchScript exporter
# (dynamo=False, used below) supports; above it torch only warns and writes an unvalidated graph.
MIN_OPSET = 17
try:
    from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as MAX_OPSET
except ImportError:  # a torch without the constant: the value of torch 2.x
    MAX_OPSET = 20


def check_opset(opset: int, name: str = "opset") -> int:
    """UserError unless `opset` is an integer in MIN_OPSET..MAX_OPSET (`name`: how the message calls it)."""
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(f"{name} must be >= {MIN_OPSET} and <= {MAX_OPSET} (the range torch.onnx.export "
                        f"supports here), got {opset}; leave it out for {MIN_OPSET}.")
    return opset


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_shape: tuple[int, int, int],
    batch: int = 1,
    opset: int = 17,
    dynamic_batch: bool = False,
) -> Path:
    """Write `model` (eval mode, CPU) to ONNX at `path` atomically; input 'input', output 'logits'."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if any(t.device.type != "cpu" for t in list(model.parameters()) + list(model.buffers())):
        model = copy.deepcopy(model).cpu()  # the caller's module stays where it is
    was_training = model.training
    model.eval()
    example = torch.randn(batch, *input_shape)
    try:
        # torch's export warnings (tracer notes, deprecations) are not addressed to our user: a failed export
        # raises, and a bundle's graph is verified against PyTorch, a mismatch reported in one sentence
        with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None,
                dynamo=False,
            )
    finally:
        model.train(was_training)
    return path


def check_onnx(path: str | os.PathLike) -> None:
    """Run `onnx.checker` (full check, with shape inference) on the file; raise UserError on failure."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise UserError(f"exported ONNX {path} fails onnx.checker ({exc}); this model cannot be deployed as is.") from None


def simplify_onnx(path: str | os.PathLike) -> bool:
    """Simplify the graph in place with onnxslim; return True when it changed the node count.

    The caller verifies the result against PyTorch; an unchanged graph is left untouched.
    """
    import onnx
    import onnxslim

    path = Path(path)
    original = onnx.load(str(path))
    n_before = len(original.graph.node)
    slimmed = onnxslim.slim(original)
    if slimmed is None or len(slimmed.graph.node) >= n_before:
        return False
    with atomic_path(path, suffix=".onnx") as tmp:
        onnx.save(slimmed, str(tmp))
    return True


def onnx_input_batch(path: str | os.PathLike) -> int | None:
    """Static batch size of the model's input, or None when the batch dimension is dynamic."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    return int(dim.dim_value) if dim.HasField("dim_value") else None


def ort_session(path: str | os.PathLike, threads: int = 0):
    """A CPU onnxruntime session for checking outputs and accuracy on the host."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_onnx(session, images: np.ndarray, batch: int | None) -> np.ndarray:
    """Logits for `images` (N, C, H, W float32); static-batch models get zero-padded chunks."""
    n = images.shape[0]
    step = batch or 64
    outs = []
    for start in range(0, n, step):
        chunk = images[start : start + step]
        real = chunk.shape[0]
        if batch and real < batch:
            pad = np.zeros((batch - real, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        outs.append(session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(chunk, dtype=np.float32)})[0][:real])
    return np.concatenate(outs) if outs else np.zeros((0, 0), dtype=np.float32)


@dataclass(frozen=True)
class Verification:
    """How the ONNX graph agrees with PyTorch on real images."""

    images: int
    max_abs_diff: float
    top1_agreement: float
    passed: bool
    logit_scale: float = 1.0  # max(1, the largest |logit| of PyTorch): the diff is bounded relative to it

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for the manifest."""
        return dataclasses.asdict(self)


def verify_onnx(
    model: nn.Module,
    onnx_path: str | os.PathLike,
    images: torch.Tensor,
    max_abs_diff: float = MAX_ABS_DIFF,
    min_agreement: float = MIN_TOP1_AGREEMENT,
) -> Verification:
    """Compare ONNX Runtime logits with PyTorch logits on `images` (normalised NCHW)."""
    if images.shape[0] == 0:
        raise UserError("no validation images to verify the ONNX export against; check the data split.")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref = torch.cat([model(images[i : i + 256]) for i in range(0, images.shape[0], 256)]).numpy()
    finally:
        model.train(was_training)
    got = run_onnx(ort_session(onnx_path), images.numpy().astype(np.float32), onnx_input_batch(onnx_path))
    diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
    agree = float(np.mean(got.argmax(1) == ref.argmax(1)))
    # float32 rounding grows with the logits' size: an unnormalised model (random init, logits ~1e4) is
    # held to the same relative bound as a trained one (logits ~10)
    scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
    ok = bool(np.isfinite(diff) and diff <= max_abs_diff * scale and agree >= min_agreement)
    return Verification(images=int(images.shape[0]), max_abs_diff=diff, top1_agreement=agree, passed=ok,
                        logit_scale=scale)


def onnx_accuracy(onnx_path: str | os.PathLike, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy (fraction) of an ONNX model over (x, y) batches, run with onnxruntime on CPU."""
    session = ort_session(onnx_path)
    batch = onnx_input_batch(onnx_path)
    correct = total = 0
    for x, y in batches:
        logits = run_onnx(session, x.numpy().astype(np.float32), batch)
        correct += int((logits.argmax(1) == y.numpy()).sum())
        total += int(y.shape[0])
    if total == 0:
        raise UserError("the test split is empty; cannot measure accuracy for the bundle.")
    return correct / total


def set_metadata(onnx_path: str | os.PathLike, props: dict[str, Any]) -> None:
    """Replace the model's `metadata_props` with `props` (values JSON-encoded unless str), atomically."""
    import onnx

    path = Path(onnx_path)
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    with atomic_path(path, suffix=".onnx") as tmp:
        onnx.save(model, str(tmp))


def read_metadata(onnx_path: str | os.PathLike) -> dict[str, str]:
    """The model's `metadata_props` as a dict of strings."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}
