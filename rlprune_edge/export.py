"""Export: ONNX (verified), INT8 for CPU boards, TensorRT engines, the deployable bundle.

The bundle is a directory an embedded engineer copies to the board::

    DIR/model.onnx        the verified fp32 graph (the INT8 graph for int8 on onnxruntime profiles)
    DIR/model_fp32.onnx   int8 bundles only: the fp32 reference graph
    DIR/model.engine      TensorRT profiles with fp16/int8: the engine, built on the profile's device
    DIR/classify.py       minimal board example (numpy + runtime) that classifies one image file
    DIR/manifest.json     files + sha256, input spec, preprocessing, precision, accuracy, latency, versions

It is built in a temporary directory beside DIR and renamed into place only after every step
succeeded; a failed export leaves nothing behind and never touches a previous bundle.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlprune_edge.errors import DeviceError, UserError
from rlprune_edge.fsutil import atomic_path, atomic_write_json, make_temp_dir, remove_stale_temps

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MANIFEST_NAME = "manifest.json"
CLASSIFY_SCRIPT = Path(__file__).resolve().parent.parent / "devices" / "classify.py"
BUNDLE_FORMAT = 1

# fp32 verification thresholds (issue 7)
MAX_ABS_DIFF = 1e-4
MIN_TOP1_AGREEMENT = 0.999

# (profile, onnx_path, out_path, precision, calib_path | None) -> {"tensorrt_version", "gpu_name", ...}
EngineBuilder = Callable[[Any, Path, Path, str, "Path | None"], dict]

# ONNX opsets the bundle accepts: 17 (LayerNormalization) up to what torch's TorchScript exporter
# (dynamo=False, used below) supports; above it torch only warns and writes an unvalidated graph.
MIN_OPSET = 17
try:
    from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as MAX_OPSET
except ImportError:  # a torch without the constant: the value of torch 2.x
    MAX_OPSET = 20


def check_opset(opset: int) -> int:
    """UserError unless `opset` is an integer in MIN_OPSET..MAX_OPSET."""
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(f"--opset must be >= {MIN_OPSET} and <= {MAX_OPSET} (the range torch.onnx.export "
                        f"supports here), got {opset}; leave it out for {MIN_OPSET}.")
    return opset


def _write_error(out_dir: Path, exc: OSError) -> str:
    where = f" ({exc.filename})" if getattr(exc, "filename", None) and str(exc.filename) != str(out_dir) else ""
    return (f"cannot write the bundle --out {out_dir}: {exc.strerror or exc}{where}; "
            "choose a writable output directory.")


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """Fail early (UserError naming the path) when the bundle directory cannot be created or replaced."""
    out_dir = Path(out_dir)
    for ancestor in out_dir.parents:
        if ancestor.exists() or ancestor.is_symlink():
            if not ancestor.is_dir():
                raise UserError(f"cannot write the bundle --out {out_dir}: {ancestor} is a file, not a directory; "
                                "choose an output path inside a directory.")
            break
    try:
        _prepare_out_dir(out_dir)
        probe = tempfile.mkdtemp(prefix=f".{out_dir.name}.probe-", dir=out_dir.parent)
        os.rmdir(probe)
    except OSError as exc:
        raise UserError(_write_error(out_dir, exc)) from None
    return out_dir


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
        with atomic_path(path, suffix=".onnx") as tmp:
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


# ---------------------------------------------------------------------------------------------
# ONNX helpers: check, simplify, run, verify, metadata


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
        raise UserError("no validation images to verify the ONNX export against; check the --data split.")
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
    ok = bool(np.isfinite(diff) and diff <= max_abs_diff and agree >= min_agreement)
    return Verification(images=int(images.shape[0]), max_abs_diff=diff, top1_agreement=agree, passed=ok)


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


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# images from the data bundle


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
        raise UserError(f"the {split} split of the data has no images; check the --data spec.")
    return torch.cat(xs)[:limit]


def _test_batches(data: Any, limit: int | None) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    return data.loader("test", batch_size=256, shuffle=False, augment=False, limit=limit)


# ---------------------------------------------------------------------------------------------
# TensorRT


def build_engine(
    profile: Any,
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    precision: str,
    calib: str | os.PathLike | None = None,
) -> dict:
    """Build a TensorRT engine on the profile's device; return {"tensorrt_version", "gpu_name", ...}.

    Local profiles run the board runner's `build-engine` in-process; ssh profiles build on the board
    through `rlprune_edge.latency.remote.build_engine_remote` and read the board's facts.
    """
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if profile.connection.kind == "ssh":
        from rlprune_edge.latency.remote import RemoteBackend, build_engine_remote

        build_engine_remote(profile, onnx_path, out_path, precision, calib=calib)
        return engine_provenance({}, RemoteBackend(profile).facts())
    from rlprune_edge.board import runner

    argv = ["build-engine", "--onnx", str(onnx_path), "--out", str(out_path), "--precision", precision,
            "--workspace-mb", str(profile.runtime.workspace_mb)]
    if calib is not None:
        argv += ["--calib", str(calib)]
    if profile.runtime.timing_cache:
        argv += ["--timing-cache", str(Path(profile.runtime.timing_cache).expanduser())]
    code, doc = runner.run(argv)
    if code != 0:
        doc = doc if isinstance(doc, dict) else {}
        if doc.get("error") == "missing_runtime":
            raise DeviceError(
                f"cannot build a TensorRT engine for profile {profile.name!r}: {doc.get('package', 'tensorrt')} "
                "is not installed on this machine; run the export on the Jetson/GPU host or use an ssh profile."
            )
        raise DeviceError(
            f"TensorRT engine build failed for profile {profile.name!r}: "
            f"{doc.get('message') or doc.get('error') or 'unknown error'}."
        )
    facts = runner.collect_facts()
    if not facts.get("gpu_name"):
        name = local_gpu_name()
        if name:
            facts["gpu_name"] = name
    return engine_provenance(doc if isinstance(doc, dict) else {}, facts)


def local_gpu_name() -> str | None:
    """Name of this machine's first NVIDIA GPU (nvidia-smi, else pycuda); None when neither answers."""
    import subprocess

    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=False)
        if res.returncode == 0 and res.stdout.strip():
            return res.stdout.strip().splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import pycuda.driver as cuda

        cuda.init()
        return str(cuda.Device(0).name())
    except Exception:  # no pycuda, no driver, no device: the caller reports the missing name
        return None


def engine_provenance(build_doc: dict, facts: dict) -> dict:
    """TensorRT version and GPU name for the manifest, from the builder's reply and the device facts."""
    packages = facts.get("packages") or {}
    out = {k: v for k, v in build_doc.items() if k not in ("device", "engine") and not isinstance(v, (dict, list))}
    out["tensorrt_version"] = build_doc.get("tensorrt_version") or packages.get("tensorrt")
    out["gpu_name"] = build_doc.get("gpu_name") or facts.get("gpu_name") or facts.get("board_model")
    for key in ("l4t_release", "jetpack", "hostname"):
        if facts.get(key):
            out[key] = facts[key]
    return out


# ---------------------------------------------------------------------------------------------
# bundle


def versions() -> dict[str, str]:
    """Versions of the tools that made the bundle."""
    import onnx
    import onnxruntime

    import rlprune_edge

    out = {
        "rlprune-edge": rlprune_edge.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }
    try:
        import onnxslim

        out["onnxslim"] = onnxslim.__version__
    except ImportError:
        pass
    return out


def _check_precision(profile: Any, precision: str) -> None:
    runtime = profile.runtime.name
    if precision not in ("fp32", "fp16", "int8"):
        raise UserError(f"precision {precision!r} is not one of fp32, fp16, int8; pick one of those.")
    if precision == "fp16" and runtime != "tensorrt":
        raise UserError(
            f"precision fp16 needs a TensorRT profile, but profile {profile.name!r} runs {runtime}; "
            "use --precision fp32 or int8 for CPU boards."
        )
    if precision == "int8" and runtime not in ("onnxruntime", "tensorrt"):
        raise UserError(
            f"precision int8 needs an onnxruntime or TensorRT profile, but profile {profile.name!r} runs "
            f"{runtime}; use --precision fp32."
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
            f"{list(info.input_shape)}; pass the --data the model was trained on."
        )
    n_classes = len(data.class_names)
    if n_classes != int(info.num_classes):
        raise UserError(
            f"the data has {n_classes} classes but the model has {info.num_classes} outputs; "
            "pass the --data the model was trained on."
        )


def _measure(profile: Any, onnx_path: Path, precision: str) -> dict[str, Any]:
    from rlprune_edge.latency.backend import get_backend

    prof = dataclasses.replace(profile, runtime=dataclasses.replace(profile.runtime, precision=precision))
    backend = get_backend(prof)
    m = backend.measure(onnx_path, warmup=profile.measure.warmup, runs=profile.measure.runs)
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
    from rlprune_edge.latency.backend import get_backend

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


def _prepare_out_dir(out_dir: Path) -> None:
    """Refuse to replace anything that is not a previous bundle (or an empty directory)."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise UserError(f"--out {out_dir} exists and is not a directory; choose another output path.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).is_file():
        raise UserError(
            f"--out {out_dir} exists and is not an rlprune-edge bundle (no {MANIFEST_NAME}); "
            "choose another output directory or empty it first."
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)


def _install_bundle(tmp_dir: Path, out_dir: Path) -> None:
    """Rename the finished bundle into place; a previous bundle is kept until the new one is in."""
    if not out_dir.exists():
        os.replace(tmp_dir, out_dir)
        return
    old = make_temp_dir(out_dir.parent, out_dir.name, "old")
    os.rmdir(old)
    os.replace(out_dir, old)
    try:
        os.replace(tmp_dir, out_dir)
    except BaseException:
        os.replace(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _publish_permissions(bundle: Path) -> None:
    """Temp files are private (0600/0700); a bundle is meant to be copied around: 0755 dir, 0644 files."""
    os.chmod(bundle, 0o755)
    for p in bundle.iterdir():
        if p.is_file():
            os.chmod(p, 0o755 if p.suffix == ".py" else 0o644)


def _file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


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
    batch = int(profile.input.batch)
    trt = profile.runtime.name == "tensorrt"

    out_dir = Path(out_dir)
    remove_stale_temps(out_dir.parent, out_dir.name)  # what an export killed with SIGKILL left behind
    _prepare_out_dir(out_dir)
    model = copy.deepcopy(model).cpu().eval()  # never move or mode-switch the caller's model
    tmp_dir = make_temp_dir(out_dir.parent, out_dir.name)  # .NAME.tmp-<pid>-<random>
    try:
        manifest = _build(
            model, info, profile, tmp_dir, precision, data, dynamic_batch, measure, input_shape, batch, trt,
            verify_images, calib_images, test_limit, opset, simplify, engine_builder, say,
        )
        manifest["build_s"] = round(time.perf_counter() - t_start, 2)
        _write_json(tmp_dir / MANIFEST_NAME, manifest)
        _publish_permissions(tmp_dir)
        _install_bundle(tmp_dir, out_dir)
    except OSError as exc:  # disk full, permissions changed under us, ...: a sentence naming the path
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise UserError(_write_error(out_dir, exc)) from None
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
                "the checkpoint does not say which data it was trained on; pass --data SPEC "
                "(e.g. fashion-mnist) so the export can be verified on real images."
            )
    if isinstance(data, str):
        from rlprune_edge.data import load_data

        data = load_data(data)
    return data


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj)


def _build(
    model: nn.Module,
    info: Any,
    profile: Any,
    tmp_dir: Path,
    precision: str,
    data: Any,
    dynamic_batch: bool,
    measure: bool,
    input_shape: tuple[int, int, int],
    batch: int,
    trt: bool,
    verify_images: int,
    calib_images: int,
    test_limit: int | None,
    opset: int,
    simplify: bool,
    engine_builder: EngineBuilder | None,
    say: Callable[[str], None],
) -> dict:
    """Every step of the export inside `tmp_dir`; returns the manifest (not yet written)."""
    # 1. fp32 ONNX, checked, simplified where it helps, verified against PyTorch
    fp32_name = "model_fp32.onnx" if (precision == "int8" and not trt) else "model.onnx"
    fp32_path = tmp_dir / fp32_name
    say(f"exporting ONNX (opset {opset}, {'dynamic' if dynamic_batch else f'static batch {batch}'})")
    export_onnx(model, fp32_path, input_shape, batch=batch, opset=opset, dynamic_batch=dynamic_batch)
    check_onnx(fp32_path)
    val = collect_images(data, "val", verify_images)
    simplified = False
    if simplify:
        backup = tmp_dir / ".unsimplified.onnx"
        shutil.copyfile(fp32_path, backup)
        try:
            simplified = simplify_onnx(fp32_path)
        except Exception as exc:  # a simplifier failure is not fatal: keep the plain export
            say(f"onnxslim failed ({type(exc).__name__}: {exc}); keeping the unsimplified graph")
            simplified = False
        ver = None
        if simplified:
            check_onnx(fp32_path)
            ver = verify_onnx(model, fp32_path, val)
            if not ver.passed:
                say("simplified graph did not match PyTorch; keeping the unsimplified graph")
                os.replace(backup, fp32_path)
                simplified, ver = False, None
        backup.unlink(missing_ok=True)
    else:
        ver = None
    ver = ver or verify_onnx(model, fp32_path, val)
    say(f"verified on {ver.images} val images: max |logit diff| {ver.max_abs_diff:.2e}, top-1 agreement {ver.top1_agreement:.4f}")
    if not ver.passed:
        raise UserError(
            f"the ONNX export does not match PyTorch on {ver.images} validation images (max |logit diff| "
            f"{ver.max_abs_diff:.3g} > {MAX_ABS_DIFF:g} or top-1 agreement {ver.top1_agreement:.4f} < "
            f"{MIN_TOP1_AGREEMENT}); no bundle was written — report this model."
        )

    # 2. accuracy of the fp32 graph on the test split
    say("measuring fp32 test accuracy")
    fp32_acc = onnx_accuracy(fp32_path, _test_batches(data, test_limit))
    accuracy: dict[str, Any] = {
        "test_acc": fp32_acc,
        "split": "test",
        "images": _count(data, test_limit),
        "measured_with": "the fp32 ONNX graph in onnxruntime (CPU) on the host",
    }
    model_file = fp32_name
    files_extra: list[Path] = []
    engine_info: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None

    # 3. precision-specific artefacts
    if precision == "int8" and not trt:
        from rlprune_edge.quantize import quantize_int8

        int8_path = tmp_dir / "model.onnx"
        say(f"quantizing to INT8 (QDQ, per-channel) with {calib_images} training images")
        calib = collect_images(data, "train", calib_images, shuffle=True).numpy()
        qinfo = quantize_int8(fp32_path, int8_path, calib)
        check_onnx(int8_path)
        int8_acc = onnx_accuracy(int8_path, _test_batches(data, test_limit))
        accuracy = {
            "test_acc": int8_acc,
            "fp32_test_acc": fp32_acc,
            "drop_points": round(100 * (fp32_acc - int8_acc), 3),
            "split": "test",
            "images": accuracy["images"],
            "measured_with": "the fp32 and INT8 ONNX graphs in onnxruntime (CPU) on the host",
        }
        calibration = {"images": int(calib.shape[0]), "split": "train", **qinfo}
        model_file = "model.onnx"
        files_extra.append(fp32_path)
        if measure:
            say(f"timing fp32 vs int8 on {profile.name}")
            latency = _compare(profile, fp32_path, int8_path)
    elif trt and precision in ("fp16", "int8"):
        calib_path = None
        if precision == "int8":
            from rlprune_edge.quantize import save_calibration

            calib_path = tmp_dir / ".calib.npy"
            calib_arr = collect_images(data, "train", calib_images, shuffle=True).numpy()
            save_calibration(calib_arr, calib_path)
            calibration = {"images": int(calib_arr.shape[0]), "split": "train",
                           "file": "float32 N x C x H x W normalised training images (.npy), not kept in the bundle"}
        engine_path = tmp_dir / "model.engine"
        say(f"building a TensorRT {precision} engine on {profile.name}")
        builder = engine_builder or build_engine
        engine_info = dict(builder(profile, fp32_path, engine_path, precision, calib_path) or {})
        if not engine_path.is_file():
            raise DeviceError(f"the TensorRT builder reported success but wrote no engine for profile {profile.name!r}.")
        for key in ("tensorrt_version", "gpu_name"):
            if not engine_info.get(key):
                raise DeviceError(f"the TensorRT builder did not report {key}; cannot record the engine's provenance.")
        engine_info["precision"] = precision
        if calib_path is not None:
            calib_path.unlink(missing_ok=True)
        model_file = "model.engine"
        files_extra.append(fp32_path)
        accuracy["measured_with"] += "; the TensorRT engine's own accuracy is not measured by export"
        if measure:
            latency = _measure(profile, fp32_path, precision)
    elif measure:
        say(f"timing on {profile.name}")
        latency = _measure(profile, fp32_path, "fp32")

    # 4. metadata in every ONNX file, then the example script and the manifest
    meta = {
        "rlprune_edge.profile": profile.name,
        "rlprune_edge.precision": precision,
        "rlprune_edge.input_shape": [batch if not dynamic_batch else -1, *input_shape],
        "rlprune_edge.mean": [float(v) for v in info.mean],
        "rlprune_edge.std": [float(v) for v in info.std],
        "rlprune_edge.class_names": list(info.class_names),
        "rlprune_edge.test_acc": accuracy["test_acc"],
        "rlprune_edge.latency_median_ms": latency["median_ms"] if latency else None,
        "rlprune_edge.latency_p90_ms": latency["p90_ms"] if latency else None,
    }
    onnx_files = [p for p in {tmp_dir / model_file, *files_extra} if p.suffix == ".onnx"]
    for p in onnx_files:
        m = dict(meta)
        if p == fp32_path and p.name != model_file:
            m["rlprune_edge.precision"] = "fp32"
            m["rlprune_edge.test_acc"] = accuracy.get("fp32_test_acc", accuracy["test_acc"])
        set_metadata(p, m)
    shutil.copyfile(CLASSIFY_SCRIPT, tmp_dir / "classify.py")

    names = sorted(p.name for p in tmp_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "profile": profile.name,
        "runtime": profile.runtime.name,
        "precision": precision,
        "model_file": model_file,
        "reference_onnx": fp32_name,
        "files": {n: _file_entry(tmp_dir / n) for n in names},
        "input": {
            "name": INPUT_NAME,
            "shape": [None if dynamic_batch else batch, *input_shape],
            "dynamic_batch": bool(dynamic_batch),
            "dtype": "float32",
            "layout": "NCHW",
        },
        "output": {"name": OUTPUT_NAME, "shape": [None if dynamic_batch else batch, int(info.num_classes)]},
        "preprocessing": {
            "resize": [int(input_shape[1]), int(input_shape[2])],
            "channels": int(input_shape[0]),
            "scale": 1.0 / 255.0,
            "mean": [float(v) for v in info.mean],
            "std": [float(v) for v in info.std],
            "resize_method": _resize_method(data),
            "order": "pixel/255, convert channels (grey -> 3 copies), resize or pad to HxW, (x - mean) / std, NCHW",
        },
        "class_names": list(info.class_names),
        "accuracy": accuracy,
        "verification": {**ver.to_dict(), "simplified_with_onnxslim": simplified, "opset": opset},
        "latency": latency,
        "calibration": calibration,
        "engine": engine_info,
        "model": {
            "name": getattr(info, "model", None),
            "width": getattr(info, "width", None),
            "num_classes": int(info.num_classes),
            "checkpoint_test_acc": (getattr(info, "meta", None) or {}).get("test_acc"),
        },
        "versions": versions(),
    }
    if engine_info:
        manifest["tensorrt_version"] = engine_info["tensorrt_version"]
        manifest["gpu_name"] = engine_info["gpu_name"]
    return manifest


def _resize_method(data: Any) -> str:
    """How raw images reach the model's H x W: Fashion-MNIST is zero-padded 28 -> 32, others resized."""
    spec = str(getattr(data, "spec", "") or "")
    return "pad" if spec.split(":", 1)[0] == "fashion-mnist" else "bilinear"


def _count(data: Any, limit: int | None) -> int:
    n = len(data.test) if getattr(data, "test", None) is not None else 0
    return min(n, limit) if limit else n


def load_manifest(bundle_dir: str | os.PathLike) -> dict:
    """Read a bundle's manifest.json."""
    path = Path(bundle_dir) / MANIFEST_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not a readable bundle manifest ({exc}); re-run `rlprune-edge export`.") from None


def check_bundle(bundle_dir: str | os.PathLike) -> list[str]:
    """Problems found in a bundle (missing files, sha256 mismatches); empty when it is intact."""
    bundle_dir = Path(bundle_dir)
    manifest = load_manifest(bundle_dir)
    problems = []
    for name, entry in manifest.get("files", {}).items():
        p = bundle_dir / name
        if not p.is_file():
            problems.append(f"{name}: missing")
        elif sha256_file(p) != entry.get("sha256") or p.stat().st_size != entry.get("bytes"):
            problems.append(f"{name}: sha256 or size differs from the manifest")
    return problems
