"""Export: ONNX (verified), INT8 for CPU boards, TensorRT engines, the deployable bundle."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn


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
    was_training = model.training
    model.eval()
    example = torch.randn(batch, *input_shape)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        torch.onnx.export(
            model,
            (example,),
            tmp,
            input_names=["input"],
            output_names=["logits"],
            opset_version=opset,
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
            dynamo=False,
        )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        model.train(was_training)
    return path
