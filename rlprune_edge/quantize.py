"""INT8 post-training quantization for CPU boards (ONNX Runtime, QDQ) and calibration data for TensorRT."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from rlprune_edge.errors import UserError
from rlprune_edge.fsutil import atomic_path
from rlprune_edge.onnx_io import INPUT_NAME, onnx_input_batch


class ArrayCalibrationReader:
    """onnxruntime `CalibrationDataReader` over an in-memory array of normalised images (N, C, H, W).

    Yields batches of exactly `batch` images (the model's static batch), dropping a short tail when
    the batch is static, so every feed matches the graph's input shape.
    """

    def __init__(self, images: np.ndarray, batch: int | None, input_name: str = INPUT_NAME) -> None:
        self._images = np.ascontiguousarray(images, dtype=np.float32)
        self._batch = batch
        self._input_name = input_name
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next feed dict, or None when the images are used up."""
        step = self._batch or 32
        if self._pos >= len(self._images):
            return None
        chunk = self._images[self._pos : self._pos + step]
        if self._batch and len(chunk) < self._batch:
            return None
        self._pos += step
        return {self._input_name: chunk}

    def rewind(self) -> None:
        """Start again from the first image."""
        self._pos = 0

    def __len__(self) -> int:
        step = self._batch or 32
        return len(self._images) // step if self._batch else -(-len(self._images) // step)


def _reader_class() -> type:
    """ArrayCalibrationReader registered as a subclass of onnxruntime's CalibrationDataReader."""
    from onnxruntime.quantization import CalibrationDataReader

    CalibrationDataReader.register(ArrayCalibrationReader)
    return ArrayCalibrationReader


def quantize_int8(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calib_images: np.ndarray,
    per_channel: bool = True,
    calibrate_method: str = "minmax",
    preprocess: bool = True,
    activations: str = "int8",
    reduce_range: bool = True,
) -> dict[str, Any]:
    """Statically quantize an fp32 ONNX model to INT8 (QDQ, int8 weights) at `out_path`.

    `activations` is "int8" (S8S8, onnxruntime's recommended default for QDQ) or "uint8" (U8S8).
    `reduce_range` quantizes weights to 7 bits: x86 CPUs without VNNI (AVX2/AVX-512 `vpmaddubsw`)
    saturate int16 pair sums with 8-bit weights; on the default model this was a 2-point accuracy loss.

    Calibrated on `calib_images` (normalised float32 NCHW, typically a few hundred training images).
    Returns the settings used (for the manifest). Written atomically.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if calibrate_method not in methods:
        raise UserError(f"calibration method {calibrate_method!r} is not one of {', '.join(methods)}.")
    act_types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    if activations not in act_types:
        raise UserError(f"activation type {activations!r} is not one of int8, uint8.")
    calib_images = np.asarray(calib_images, dtype=np.float32)
    if calib_images.ndim != 4 or len(calib_images) == 0:
        raise UserError("INT8 calibration needs a non-empty (N, C, H, W) array of training images.")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    batch = onnx_input_batch(fp32_path)
    if batch and len(calib_images) < batch:
        raise UserError(f"INT8 calibration needs at least {batch} images (the model's batch); got {len(calib_images)}.")
    work = Path(tempfile.mkdtemp(prefix=".quant-", dir=out_path.parent))
    try:
        source = fp32_path
        preprocessed = False
        if preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            pre = work / "pre.onnx"
            try:
                quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
                source, preprocessed = pre, True
            except Exception:  # pre-processing is an optimisation; quantize the plain graph instead
                source, preprocessed = fp32_path, False
        reader = _reader_class()(calib_images, batch)
        with atomic_path(out_path, suffix=".onnx") as tmp_out:
            quantize_static(
                str(source),
                str(tmp_out),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=act_types[activations],
                weight_type=QuantType.QInt8,
                calibrate_method=methods[calibrate_method],
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "format": "QDQ",
        "weights": ("int8" if not reduce_range else "int8 (7-bit range)")
        + (" per-channel" if per_channel else " per-tensor"),
        "reduce_range": reduce_range,
        "activations": f"{activations} per-tensor (asymmetric)",
        "calibrate_method": calibrate_method,
        "preprocessed": preprocessed,
        "tool": "onnxruntime.quantization.quantize_static",
    }


def save_calibration(images: np.ndarray, path: str | os.PathLike) -> Path:
    """Save normalised calibration images (float32 NCHW) as .npy for the TensorRT INT8 calibrator."""
    images = np.ascontiguousarray(images, dtype=np.float32)
    if images.ndim != 4 or len(images) == 0:
        raise UserError("TensorRT calibration needs a non-empty (N, C, H, W) array of training images.")
    if not np.all(np.isfinite(images)):
        raise UserError("calibration images contain NaN or infinity; check the data.")
    path = Path(path)
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, images)
    return path
