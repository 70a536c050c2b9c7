"""Export: build the deployable bundle (verified ONNX, INT8 for CPU boards, TensorRT engines, manifest).

The bundle is a directory an embedded engineer copies to the board::

    DIR/model.onnx        the verified fp32 graph (the INT8 graph for int8 on onnxruntime profiles)
    DIR/model_fp32.onnx   int8 bundles only: the fp32 reference graph
    DIR/model.engine      TensorRT profiles with fp16/int8: the engine, built on the profile's device
    DIR/classify.py       minimal board example (numpy + runtime) that classifies one image file
    DIR/manifest.json     files + sha256, input spec, preprocessing, precision, accuracy, latency, versions

It is built in a temporary directory beside DIR and renamed into place only after every step
succeeded; a failed export leaves nothing behind and never touches a previous bundle. This module
runs the steps; the directory, its manifest and reading it back are :mod:`rlprune_edge.bundle`, the
ONNX helpers :mod:`rlprune_edge.onnx_io`, the TensorRT build :mod:`rlprune_edge.engine`, INT8
quantization :mod:`rlprune_edge.quantize`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlprune_edge.bundle import (
    CLASSIFY_SCRIPT,
    MANIFEST_NAME,
    BundleFacts,
    BundleRequest,
    build_manifest,
    check_out_dir,
    install_bundle,
    prepare_out_dir,
    publish_permissions,
    write_error,
)
from rlprune_edge.engine import EngineBuilder, build_engine
from rlprune_edge.errors import DeviceError, UserError
from rlprune_edge.fsutil import atomic_write_json, make_temp_dir, remove_stale_temps
from rlprune_edge.onnx_io import (
    MAX_ABS_DIFF,
    MIN_TOP1_AGREEMENT,
    Verification,
    check_onnx,
    check_opset,
    export_onnx,
    onnx_accuracy,
    set_metadata,
    simplify_onnx,
    verify_onnx,
)
from rlprune_edge.runtimes.base import ENGINE, QDQ_INT8


def export_bundle(
    model: nn.Module,
    info: Any,
    profile: Any,
    out_dir: str | os.PathLike,
    precision: str = "fp32",
    data: Any = None,
    dynamic_batch: bool = False,
    measure: bool = True,
    *,
    verify_images: int = 500,
    calib_images: int = 300,
    test_limit: int | None = None,
    opset: int = 17,
    simplify: bool = True,
    engine_builder: EngineBuilder | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Build the deployable bundle in `out_dir` and return its manifest.

    `model` and `info` come from `load_checkpoint`; `profile` from `load_profile` (a name works too);
    `data` is a DataBundle (or a data spec string) for verification, calibration and test accuracy;
    without it, `info.meta["data"]` is used when present. `engine_builder` replaces the TensorRT
    builder (tests). Raises UserError on bad input and when the ONNX graph does not match PyTorch.
    The keyword options are packed into a :class:`BundleRequest` for the build steps.
    """
    from rlprune_edge.profiles import load_profile

    say = log or (lambda _msg: None)
    t_start = time.perf_counter()
    if isinstance(profile, (str, os.PathLike)):
        profile = load_profile(profile)
    precision = precision or profile.runtime.precision
    _check_precision(profile, precision)
    check_opset(opset)
    check_out_dir(out_dir)  # before loading data and exporting: minutes of work for nothing otherwise
    input_shape = _input_shape(info, profile)
    data = _resolve_data(info, data)
    _check_data(info, data)

    out_dir = Path(out_dir)
    remove_stale_temps(out_dir.parent, out_dir.name)  # what an export killed with SIGKILL left behind
    prepare_out_dir(out_dir)
    request = BundleRequest(
        model=copy.deepcopy(model).cpu().eval(),  # never move or mode-switch the caller's model
        info=info, profile=profile, precision=precision, data=data, input_shape=input_shape,
        dynamic_batch=dynamic_batch, measure=measure, verify_images=verify_images, calib_images=calib_images,
        test_limit=test_limit, opset=opset, simplify=simplify, engine_builder=engine_builder,
    )
    tmp_dir = make_temp_dir(out_dir.parent, out_dir.name)  # .NAME.tmp-<pid>-<random>
    try:
        manifest = _build(request, tmp_dir, say)
        manifest["build_s"] = round(time.perf_counter() - t_start, 2)
        atomic_write_json(tmp_dir / MANIFEST_NAME, manifest)
        publish_permissions(tmp_dir)
        install_bundle(tmp_dir, out_dir)
    except OSError as exc:  # disk full, permissions changed under us, ...: a sentence naming the path
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise UserError(write_error(out_dir, exc)) from None
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    say(f"bundle written to {out_dir}")
    return manifest


def _resolve_data(info: Any, data: Any) -> Any:
    if data is None:
        meta = getattr(info, "meta", None) or {}
        data = meta.get("data") if isinstance(meta, dict) else None
        if not data:
            raise UserError(
                "the checkpoint does not say which data it was trained on; give the data spec "
                "(e.g. fashion-mnist) so the export can be verified on real images."
            )
    if isinstance(data, str):
        from rlprune_edge.data import load_data

        data = load_data(data)
    return data


# ---------------------------------------------------------------------------------------------
# the build steps, inside the temporary bundle directory


def _build(req: BundleRequest, tmp_dir: Path, say: Callable[[str], None]) -> dict:
    """Every step of the export inside `tmp_dir`; returns the manifest (not yet written)."""
    # 1. fp32 ONNX, checked, simplified where it helps, verified against PyTorch
    fp32_path = tmp_dir / req.fp32_name
    ver, simplified = _export_verified(req, fp32_path, say)

    # 2. accuracy of the fp32 graph on the test split
    say("measuring fp32 test accuracy")
    fp32_acc = onnx_accuracy(fp32_path, _test_batches(req.data, req.test_limit))
    facts = BundleFacts(
        accuracy={
            "test_acc": fp32_acc,
            "split": "test",
            "images": _count(req.data, req.test_limit),
            "measured_with": "the fp32 ONNX graph in onnxruntime (CPU) on the host",
        },
        model_file=req.fp32_name,
    )

    # 3. precision-specific artefacts: what the profile's runtime ships at this precision
    if req.kind == QDQ_INT8:
        _quantize_step(req, fp32_path, facts, say)
    elif req.kind == ENGINE:
        _engine_step(req, fp32_path, facts, say)
    elif req.measure:
        say(f"timing on {req.profile.name}")
        facts.latency = _measure(req, fp32_path, "fp32")

    # 4. metadata in every ONNX file, then the example script and the manifest
    _stamp_metadata(req, fp32_path, facts)
    shutil.copyfile(CLASSIFY_SCRIPT, tmp_dir / "classify.py")
    verification = {**ver.to_dict(), "simplified_with_onnxslim": simplified, "opset": req.opset}
    return build_manifest(req, tmp_dir, verification, facts)


def _export_verified(req: BundleRequest, fp32_path: Path, say: Callable[[str], None]) -> tuple[Verification, bool]:
    """Export, check and (optionally) simplify the fp32 graph; UserError unless it matches PyTorch."""
    say(f"exporting ONNX (opset {req.opset}, {'dynamic' if req.dynamic_batch else f'static batch {req.batch}'})")
    export_onnx(req.model, fp32_path, req.input_shape, batch=req.batch, opset=req.opset,
                dynamic_batch=req.dynamic_batch)
    check_onnx(fp32_path)
    val = collect_images(req.data, "val", req.verify_images)
    ver, simplified = _simplify_verified(req.model, fp32_path, val, say) if req.simplify else (None, False)
    ver = ver or verify_onnx(req.model, fp32_path, val)
    scale = f" (largest |logit| {ver.logit_scale:.3g})" if ver.logit_scale > 1 else ""
    say(f"verified on {ver.images} val images: max |logit diff| {ver.max_abs_diff:.2e}{scale}, top-1 agreement "
        f"{ver.top1_agreement:.4f}")
    if not ver.passed:
        raise UserError(
            f"the ONNX export does not match PyTorch on {ver.images} validation images (max |logit diff| "
            f"{ver.max_abs_diff:.3g} > {MAX_ABS_DIFF:g} x max(1, largest |logit| {ver.logit_scale:.3g}) or top-1 "
            f"agreement {ver.top1_agreement:.4f} < "
            f"{MIN_TOP1_AGREEMENT}); no bundle was written — report this model."
        )
    return ver, simplified


def _simplify_verified(
    model: nn.Module, path: Path, val: torch.Tensor, say: Callable[[str], None]
) -> tuple[Verification | None, bool]:
    """Simplify `path` with onnxslim; keep the result only when it still verifies.

    Returns (its verification, True) when the simplified graph is kept, else (None, False) with
    the plain export restored.
    """
    backup = path.parent / ".unsimplified.onnx"
    shutil.copyfile(path, backup)
    try:
        simplified = simplify_onnx(path)
    except Exception as exc:  # a simplifier failure is not fatal: keep the plain export
        say(f"onnxslim failed ({type(exc).__name__}: {exc}); keeping the unsimplified graph")
        simplified = False
    ver = None
    if simplified:
        check_onnx(path)
        ver = verify_onnx(model, path, val)
        if not ver.passed:
            say("simplified graph did not match PyTorch; keeping the unsimplified graph")
            os.replace(backup, path)
            simplified, ver = False, None
    backup.unlink(missing_ok=True)
    return ver, simplified


def _quantize_step(req: BundleRequest, fp32_path: Path, facts: BundleFacts, say: Callable[[str], None]) -> None:
    """onnxruntime profiles, int8: the QDQ model.onnx beside model_fp32.onnx, both graphs' accuracy."""
    from rlprune_edge.quantize import quantize_int8

    int8_path = fp32_path.parent / "model.onnx"
    say(f"quantizing to INT8 (QDQ, per-channel) with {req.calib_images} training images")
    calib = collect_images(req.data, "train", req.calib_images, shuffle=True).numpy()
    qinfo = quantize_int8(fp32_path, int8_path, calib)
    check_onnx(int8_path)
    int8_acc = onnx_accuracy(int8_path, _test_batches(req.data, req.test_limit))
    fp32_acc = facts.accuracy["test_acc"]
    facts.accuracy = {
        "test_acc": int8_acc,
        "fp32_test_acc": fp32_acc,
        "drop_points": round(100 * (fp32_acc - int8_acc), 3),
        "split": "test",
        "images": facts.accuracy["images"],
        "measured_with": "the fp32 and INT8 ONNX graphs in onnxruntime (CPU) on the host",
    }
    facts.calibration = {"images": int(calib.shape[0]), "split": "train", **qinfo}
    facts.model_file = "model.onnx"
    facts.files_extra.append(fp32_path)
    if req.measure:
        say(f"timing fp32 vs int8 on {req.profile.name}")
        facts.latency = _compare(req.profile, fp32_path, int8_path)


def _engine_step(req: BundleRequest, fp32_path: Path, facts: BundleFacts, say: Callable[[str], None]) -> None:
    """TensorRT profiles, fp16/int8: model.engine built on the profile's device, with its provenance."""
    profile, tmp_dir = req.profile, fp32_path.parent
    calib_path = None
    if req.precision == "int8":
        from rlprune_edge.quantize import save_calibration

        calib_path = tmp_dir / ".calib.npy"
        calib_arr = collect_images(req.data, "train", req.calib_images, shuffle=True).numpy()
        save_calibration(calib_arr, calib_path)
        facts.calibration = {"images": int(calib_arr.shape[0]), "split": "train",
                           "file": "float32 N x C x H x W normalised training images (.npy), not kept in the bundle"}
    engine_path = tmp_dir / "model.engine"
    say(f"building a TensorRT {req.precision} engine on {profile.name}")
    builder = req.engine_builder or build_engine
    engine_info = dict(builder(profile, fp32_path, engine_path, req.precision, calib_path) or {})
    if not engine_path.is_file():
        raise DeviceError(f"the TensorRT builder reported success but wrote no engine for profile {profile.name!r}.")
    for key in ("tensorrt_version", "gpu_name"):
        if not engine_info.get(key):
            raise DeviceError(f"the TensorRT builder did not report {key}; cannot record the engine's provenance.")
    engine_info["precision"] = req.precision
    if calib_path is not None:
        calib_path.unlink(missing_ok=True)
    facts.engine = engine_info
    facts.model_file = "model.engine"
    facts.files_extra.append(fp32_path)
    facts.accuracy["measured_with"] += "; the TensorRT engine's own accuracy is not measured by export"
    if req.measure:
        facts.latency = _measure(req, fp32_path, req.precision)


def _stamp_metadata(req: BundleRequest, fp32_path: Path, facts: BundleFacts) -> None:
    """Write the bundle's facts into every ONNX file's metadata (the fp32 reference says fp32)."""
    info, latency, accuracy = req.info, facts.latency, facts.accuracy
    meta = {
        "rlprune_edge.profile": req.profile.name,
        "rlprune_edge.precision": req.precision,
        "rlprune_edge.input_shape": [req.batch if not req.dynamic_batch else -1, *req.input_shape],
        "rlprune_edge.mean": [float(v) for v in info.mean],
        "rlprune_edge.std": [float(v) for v in info.std],
        "rlprune_edge.class_names": list(info.class_names),
        "rlprune_edge.test_acc": accuracy["test_acc"],
        "rlprune_edge.latency_median_ms": latency["median_ms"] if latency else None,
        "rlprune_edge.latency_p90_ms": latency["p90_ms"] if latency else None,
    }
    onnx_files = [p for p in {fp32_path.parent / facts.model_file, *facts.files_extra} if p.suffix == ".onnx"]
    for p in onnx_files:
        m = dict(meta)
        if p == fp32_path and p.name != facts.model_file:
            m["rlprune_edge.precision"] = "fp32"
            m["rlprune_edge.test_acc"] = accuracy.get("fp32_test_acc", accuracy["test_acc"])
        set_metadata(p, m)


# ---------------------------------------------------------------------------------------------
# inputs: images from the data bundle, checks of the profile, model and data


def collect_images(data: Any, split: str, limit: int, shuffle: bool = False, seed: int = 0) -> torch.Tensor:
    """Up to `limit` normalised images (N, C, H, W) from `split` of a DataBundle (no augmentation)."""
    xs: list[torch.Tensor] = []
    n = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for x, _ in data.loader(split, batch_size=256, shuffle=shuffle, augment=False, limit=limit):
            xs.append(x.float())
            n += x.shape[0]
            if n >= limit:
                break
    if not xs:
        raise UserError(f"the {split} split of the data has no images; check the data spec.")
    return torch.cat(xs)[:limit]


def _test_batches(data: Any, limit: int | None) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    return data.loader("test", batch_size=256, shuffle=False, augment=False, limit=limit)


def _check_precision(profile: Any, precision: str) -> None:
    """`precision` must be one the profile's runtime ships a bundle at (``Runtime.bundles``)."""
    from rlprune_edge.runtimes import get_runtime, runtime_names

    runtimes = [get_runtime(n) for n in runtime_names()]
    known = sorted({p for rt in runtimes for p in rt.bundles}, key=lambda p: (p != "fp32", p))
    if precision not in known:
        raise UserError(f"precision {precision!r} is not one of {', '.join(known)}; pick one of those.")
    rt = get_runtime(profile.runtime.name)
    if rt.bundle_kind(precision) is None:
        able = " or ".join(r.title for r in runtimes if r.bundle_kind(precision) is not None)
        article = "an" if able[:1].lower() in "aeiou" else "a"
        raise UserError(
            f"precision {precision} needs {article} {able} profile, but profile {profile.name!r} runs {rt.name}; "
            f"use precision {' or '.join(rt.bundles)}."
        )


def _input_shape(info: Any, profile: Any) -> tuple[int, int, int]:
    shape = tuple(int(d) for d in (profile.input.shape or info.input_shape))
    if len(shape) != 3:
        raise UserError(f"input shape {list(shape)} is not (C, H, W); fix the profile's [input] shape.")
    if profile.input.shape and tuple(profile.input.shape) != tuple(info.input_shape):
        raise UserError(
            f"profile {profile.name!r} fixes the input shape to {list(profile.input.shape)} but the model takes "
            f"{list(info.input_shape)}; use a profile without [input] shape or a matching model."
        )
    return shape  # type: ignore[return-value]


def _check_data(info: Any, data: Any) -> None:
    if tuple(data.input_shape) != tuple(info.input_shape):
        raise UserError(
            f"the data gives images of shape {list(data.input_shape)} but the model takes "
            f"{list(info.input_shape)}; give the data the model was trained on."
        )
    n_classes = len(data.class_names)
    if n_classes != int(info.num_classes):
        raise UserError(
            f"the data has {n_classes} classes but the model has {info.num_classes} outputs; "
            "give the data the model was trained on."
        )


def _count(data: Any, limit: int | None) -> int:
    n = len(data.test) if getattr(data, "test", None) is not None else 0
    return min(n, limit) if limit else n


# ---------------------------------------------------------------------------------------------
# latency of the bundle's model on the profile


def _measure(req: BundleRequest, onnx_path: Path, precision: str) -> dict[str, Any]:
    """The bundle's model timed on the profile at `precision`: the ONNX file, or the module for module runtimes."""
    from rlprune_edge.latency.artifacts import materialize, takes_modules
    from rlprune_edge.latency.registry import get_backend

    profile = req.profile
    prof = dataclasses.replace(profile, runtime=dataclasses.replace(profile.runtime, precision=precision))
    backend = get_backend(prof)
    target = (materialize(backend, req.model, onnx_path, req.input_shape, req.batch) if takes_modules(backend)
              else onnx_path)
    m = backend.measure(target, warmup=profile.measure.warmup, runs=profile.measure.runs)
    return {
        "median_ms": float(m.median_ms),
        "p90_ms": float(m.p90_ms),
        "profile": profile.name,
        "runtime": profile.runtime.name,
        "precision": precision,
        "batch": int(profile.input.batch),
        "how": (
            f"{profile.measure.warmup} warm-up runs then {profile.measure.runs} timed runs of the bundle's "
            f"model on profile {profile.name!r} ({profile.runtime.name}, {profile.connection.kind})"
        ),
    }


def _compare(profile: Any, fp32_path: Path, int8_path: Path) -> dict[str, Any]:
    """Interleaved fp32-vs-int8 comparison on the profile's backend."""
    from rlprune_edge.latency.registry import get_backend

    backend = get_backend(profile)
    ms = backend.compare(
        [fp32_path, int8_path], blocks=profile.measure.blocks, warmup=profile.measure.warmup, runs=profile.measure.runs
    )
    if isinstance(ms, dict):
        ms = [ms[fp32_path] if fp32_path in ms else ms[str(fp32_path)], ms[int8_path] if int8_path in ms else ms[str(int8_path)]]
    fp32, int8 = ms[0], ms[1]
    ratio = getattr(int8, "ratio", None)
    if ratio:
        speedup = 1.0 / float(ratio)
    else:
        speedup = float(fp32.median_ms) / float(int8.median_ms) if int8.median_ms else None
    return {
        "median_ms": float(int8.median_ms),
        "p90_ms": float(int8.p90_ms),
        "fp32_median_ms": float(fp32.median_ms),
        "fp32_p90_ms": float(fp32.p90_ms),
        "speedup_vs_fp32": speedup,
        "profile": profile.name,
        "runtime": profile.runtime.name,
        "precision": "int8",
        "batch": int(profile.input.batch),
        "how": (
            f"fp32 and int8 models each warmed up {profile.measure.warmup} runs, then {profile.measure.runs} "
            f"timed runs each split into {profile.measure.blocks} interleaved blocks in one window on profile "
            f"{profile.name!r} ({profile.runtime.name}, {profile.connection.kind}); median/p90 over all samples, "
            "speed-up = 1 / (median over blocks of the int8/fp32 block-median ratio)"
        ),
    }
