#!/usr/bin/env python3
"""Classify one image file with an rlprune-edge bundle, on the board.

Needs only python3, numpy and the runtime (onnxruntime, or tensorrt + pycuda for .engine bundles).
Reads PNG (8-bit grey/grey+alpha/RGB/RGBA, non-interlaced), PGM/PPM (P2/P3/P5/P6) and .npy
(H x W, H x W x C or C x H x W; uint8 0..255 or float 0..1) without any image library.

    python3 classify.py IMAGE [--bundle DIR] [--top K] [--json]

The bundle directory defaults to the directory holding this script. Preprocessing follows
manifest.json: pixel/255, resize to the model's H x W, convert channels, (x - mean) / std, NCHW.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import zlib

import numpy as np

# ----------------------------------------------------------------------------- image readers


def _png_unfilter(raw: bytes, width: int, height: int, bpp: int) -> np.ndarray:
    stride = width * bpp
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int32)
    pos = 0
    for y in range(height):
        ftype = raw[pos]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=pos + 1).astype(np.int32)
        pos += stride + 1
        if ftype == 0:
            cur = line
        elif ftype == 1:
            cur = line.copy()
            for x in range(bpp, stride):
                cur[x] = (cur[x] + cur[x - bpp]) & 0xFF
        elif ftype == 2:
            cur = (line + prev) & 0xFF
        elif ftype == 3:
            cur = line.copy()
            for x in range(stride):
                left = cur[x - bpp] if x >= bpp else 0
                cur[x] = (cur[x] + ((left + prev[x]) >> 1)) & 0xFF
        elif ftype == 4:
            cur = line.copy()
            for x in range(stride):
                a = cur[x - bpp] if x >= bpp else 0
                b = prev[x]
                c = prev[x - bpp] if x >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
                cur[x] = (cur[x] + pred) & 0xFF
        else:
            raise ValueError(f"bad PNG filter type {ftype}")
        out[y] = cur
        prev = cur
    return out


def read_png(path: str) -> np.ndarray:
    """8-bit PNG -> uint8 array H x W x C (C = 1 or 3; alpha dropped)."""
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos, idat, header, palette = 8, [], None, None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = np.frombuffer(body, dtype=np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise ValueError("PNG without IHDR")
    width, height, depth, color, _, _, interlace = header
    if depth != 8 or interlace != 0:
        raise ValueError("only 8-bit non-interlaced PNG is supported; convert the image or save it as .npy")
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    img = _png_unfilter(zlib.decompress(b"".join(idat)), width, height, channels)
    img = img.reshape(height, width, channels)
    if color == 3:
        if palette is None:
            raise ValueError("palette PNG without PLTE")
        return palette[img[:, :, 0]]
    if channels in (2, 4):
        img = img[:, :, : channels - 1]
    return img


def read_pnm(path: str) -> np.ndarray:
    """PGM/PPM (P2, P3, P5, P6) -> array H x W x C (uint8, or uint16 for maxval > 255), plus scaling."""
    with open(path, "rb") as fh:
        data = fh.read()
    magic = data[:2]
    if magic not in (b"P2", b"P3", b"P5", b"P6"):
        raise ValueError("not a PGM/PPM file")
    tokens: list[bytes] = []
    pos = 2
    while len(tokens) < 3:
        while data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":
            pos = data.index(b"\n", pos) + 1
            continue
        start = pos
        while not data[pos : pos + 1].isspace():
            pos += 1
        tokens.append(data[start:pos])
    width, height, maxval = (int(t) for t in tokens)
    channels = 3 if magic in (b"P3", b"P6") else 1
    count = width * height * channels
    if magic in (b"P5", b"P6"):
        dtype = np.uint8 if maxval < 256 else np.dtype(">u2")
        img = np.frombuffer(data, dtype=dtype, count=count, offset=pos + 1)
    else:
        img = np.array(data[pos:].split()[:count], dtype=np.int64)
    img = img.reshape(height, width, channels).astype(np.float32) * (255.0 / maxval)
    return img


def read_npy(path: str) -> np.ndarray:
    """.npy -> H x W x C float array in 0..255."""
    img = np.load(path, allow_pickle=False)
    if img.ndim == 2:
        img = img[:, :, None]
    elif img.ndim == 3 and img.shape[0] in (1, 3, 4) and img.shape[2] not in (1, 3, 4):
        img = img.transpose(1, 2, 0)
    elif img.ndim != 3:
        raise ValueError(f"expected an H x W, H x W x C or C x H x W array, got shape {img.shape}")
    img = img.astype(np.float32)
    if img.shape[2] == 4:
        img = img[:, :, :3]
    if img.size and float(img.max()) <= 1.0:
        img = img * 255.0
    return img


def read_image(path: str) -> np.ndarray:
    """Any supported file -> float32 H x W x C in 0..255."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        return read_npy(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"\x89PNG"):
        return read_png(path).astype(np.float32)
    if head[:2] in (b"P2", b"P3", b"P5", b"P6"):
        return read_pnm(path)
    raise ValueError("unsupported image format; use PNG, PGM/PPM or .npy")


# ----------------------------------------------------------------------------- preprocessing


def resize_bilinear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of H x W x C (half-pixel centres, like torch interpolate align_corners=False)."""
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img

    def coords(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        x = np.clip(x, 0, n_in - 1)
        lo = np.floor(x).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (x - lo)[:, None]

    y0, y1, fy = coords(height, h)
    x0, x1, fx = coords(width, w)
    top = img[y0][:, x0] * (1 - fx[None, :, :]) + img[y0][:, x1] * fx[None, :, :]
    bot = img[y1][:, x0] * (1 - fx[None, :, :]) + img[y1][:, x1] * fx[None, :, :]
    return (top * (1 - fy[:, :, None]) + bot * fy[:, :, None]).astype(np.float32)


def resize_pad(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Zero-pad (centred) or centre-crop H x W x C to height x width (e.g. 28 -> 32 for Fashion-MNIST)."""
    h, w = img.shape[:2]
    out = np.zeros((height, width, img.shape[2]), dtype=np.float32)
    ch, cw = min(h, height), min(w, width)
    sy, sx = (h - ch) // 2, (w - cw) // 2
    dy, dx = (height - ch) // 2, (width - cw) // 2
    out[dy : dy + ch, dx : dx + cw] = img[sy : sy + ch, sx : sx + cw]
    return out


def preprocess(img: np.ndarray, prep: dict) -> np.ndarray:
    """H x W x C pixels (0..255) -> normalised C x H x W float32 as the model was trained."""
    height, width = prep["resize"]
    channels = int(prep["channels"])
    x = img.astype(np.float32) * float(prep.get("scale", 1 / 255))
    if x.shape[2] == 3 and channels == 1:
        x = (x @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[:, :, None]
    elif x.shape[2] == 1 and channels == 3:
        x = np.repeat(x, 3, axis=2)
    elif x.shape[2] != channels:
        raise ValueError(f"image has {x.shape[2]} channels, the model takes {channels}")
    if prep.get("resize_method", "bilinear") == "pad":
        x = resize_pad(x, height, width)
    else:
        x = resize_bilinear(x, height, width)
    mean = np.asarray(prep["mean"], dtype=np.float32).reshape(1, 1, -1)
    std = np.asarray(prep["std"], dtype=np.float32).reshape(1, 1, -1)
    return np.ascontiguousarray(((x - mean) / std).transpose(2, 0, 1), dtype=np.float32)


# ----------------------------------------------------------------------------- runtimes


def run_onnxruntime(model_path: str, batch: np.ndarray, input_name: str) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    return session.run(None, {input_name: batch})[0]


def run_tensorrt(engine_path: str, batch: np.ndarray, n_classes: int) -> np.ndarray:  # pragma: no cover - needs a GPU
    import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
    import pycuda.driver as cuda
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    with open(engine_path, "rb") as fh:
        engine = trt.Runtime(logger).deserialize_cuda_engine(fh.read())
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inp = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
    out = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
    context.set_input_shape(inp, batch.shape)
    result = np.empty((batch.shape[0], n_classes), dtype=np.float32)
    d_in, d_out = cuda.mem_alloc(batch.nbytes), cuda.mem_alloc(result.nbytes)
    stream = cuda.Stream()
    cuda.memcpy_htod_async(d_in, batch, stream)
    context.set_tensor_address(inp, int(d_in))
    context.set_tensor_address(out, int(d_out))
    context.execute_async_v3(stream.handle)
    cuda.memcpy_dtoh_async(result, d_out, stream)
    stream.synchronize()
    return result


# ----------------------------------------------------------------------------- main


def classify(image_path: str, bundle: str) -> list[tuple[str, float]]:
    """Class names with probabilities, most likely first."""
    with open(os.path.join(bundle, "manifest.json")) as fh:
        manifest = json.load(fh)
    x = preprocess(read_image(image_path), manifest["preprocessing"])[None]
    spec = manifest["input"]
    static_batch = spec["shape"][0]
    if static_batch and static_batch > 1:
        x = np.repeat(x, static_batch, axis=0)
    model_path = os.path.join(bundle, manifest["model_file"])
    classes = manifest["class_names"]
    if model_path.endswith(".engine"):
        logits = run_tensorrt(model_path, x, len(classes))[0]
    else:
        logits = run_onnxruntime(model_path, x, spec["name"])[0]
    z = np.exp(logits - logits.max())
    probs = z / z.sum()
    order = np.argsort(-probs)
    return [(str(classes[i]), float(probs[i])) for i in order]


def main(argv: list[str] | None = None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description="Classify an image file with an rlprune-edge bundle.")
    parser.add_argument("image", help="PNG, PGM/PPM or .npy image")
    parser.add_argument("--bundle", default=here, help="bundle directory (default: this script's directory)")
    parser.add_argument("--top", type=int, default=1, help="print the K most likely classes")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    args = parser.parse_args(argv)
    try:
        ranked = classify(args.image, args.bundle)
    except (OSError, ValueError, KeyError) as exc:
        print(f"classify.py: error: {exc}", file=sys.stderr)
        return 2
    top = ranked[: max(1, args.top)]
    if args.json:
        print(json.dumps({"image": args.image, "top": [{"class": c, "prob": p} for c, p in top]}))
    else:
        for name, p in top:
            print(f"{name}\t{p:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
