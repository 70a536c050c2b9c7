"""The bundle directory: its layout, what it is built from, its manifest, installing and reading it.

:mod:`rlprune_edge.export` builds a bundle (``export_bundle``) from a :class:`BundleRequest` in a
temporary directory beside ``--out``; this module checks ``--out`` (:func:`check_out_dir`), writes
the manifest's content (:func:`build_manifest`), renames the finished directory into place
(:func:`install_bundle`) and reads a copied bundle back (:func:`load_manifest`, :func:`check_bundle`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from rlprune_edge.engine import EngineBuilder, versions
from rlprune_edge.errors import UserError
from rlprune_edge.fsutil import make_temp_dir, sha256_file
from rlprune_edge.onnx_io import INPUT_NAME, OUTPUT_NAME
from rlprune_edge.outputs import kind_of, read_marker
from rlprune_edge.runtimes import get_runtime
from rlprune_edge.runtimes.base import FP32_GRAPH, QDQ_INT8

MANIFEST_NAME = "manifest.json"
MANIFEST_TOOL = "rlprune-edge export"  # what makes a directory's manifest.json ours (rlprune_edge.outputs)
CLASSIFY_SCRIPT = Path(__file__).resolve().parent / "board" / "classify.py"  # devices/classify.py links here
BUNDLE_FORMAT = 1


@dataclass(frozen=True)
class BundleRequest:
    """What one bundle is built from: the inputs of `export_bundle`, resolved and checked."""

    model: nn.Module  # a CPU, eval-mode copy of the caller's model
    info: Any  # the checkpoint's ModelInfo: input shape, classes, mean/std
    profile: Any  # the Profile the bundle is for
    precision: str  # fp32, fp16 or int8, valid for the profile's runtime
    data: Any  # DataBundle: val images verify, train images calibrate, the test split gives accuracy
    input_shape: tuple[int, int, int]
    dynamic_batch: bool = False
    measure: bool = True
    verify_images: int = 500
    calib_images: int = 300
    test_limit: int | None = None
    opset: int = 17
    simplify: bool = True
    engine_builder: EngineBuilder | None = None

    @property
    def batch(self) -> int:
        """The profile's batch size (the static batch of the exported graph)."""
        return int(self.profile.input.batch)

    @property
    def kind(self) -> str:
        """What the bundle ships, as the profile's runtime says for this precision (``Runtime.bundles``):
        the fp32 graph (FP32_GRAPH), a QDQ INT8 graph beside it (QDQ_INT8), or an engine (ENGINE)."""
        return get_runtime(self.profile.runtime.name).bundle_kind(self.precision) or FP32_GRAPH

    @property
    def fp32_name(self) -> str:
        """File name of the fp32 graph: model_fp32.onnx beside a QDQ INT8 model.onnx, else model.onnx."""
        return "model_fp32.onnx" if self.kind == QDQ_INT8 else "model.onnx"


@dataclass
class BundleFacts:
    """What the build steps made and measured: the model file, accuracy, latency, calibration, engine."""

    accuracy: dict[str, Any]
    model_file: str
    files_extra: list[Path] = field(default_factory=list)
    engine: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None


def write_error(out_dir: Path, exc: OSError) -> str:
    """The UserError sentence for an OSError while writing the bundle `out_dir`."""
    where = f" ({exc.filename})" if getattr(exc, "filename", None) and str(exc.filename) != str(out_dir) else ""
    return (f"cannot write the bundle directory {out_dir}: {exc.strerror or exc}{where}; "
            "choose a writable output directory.")


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """Fail early (UserError naming the path) when the bundle directory cannot be created or replaced."""
    out_dir = Path(out_dir)
    for ancestor in out_dir.parents:
        if ancestor.exists() or ancestor.is_symlink():
            if not ancestor.is_dir():
                raise UserError(f"cannot write the bundle directory {out_dir}: {ancestor} is a file, not a directory; "
                                "choose an output path inside a directory.")
            break
    try:
        prepare_out_dir(out_dir)
        probe = tempfile.mkdtemp(prefix=f".{out_dir.name}.probe-", dir=out_dir.parent)
        os.rmdir(probe)
    except OSError as exc:
        raise UserError(write_error(out_dir, exc)) from None
    return out_dir


def is_bundle_manifest(doc: Any) -> bool:
    """True for a manifest an export of ours wrote (its ``tool``, or the shape of one written before that key)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
        return False
    if doc.get("tool") == MANIFEST_TOOL:
        return True
    return doc.get("format") == BUNDLE_FORMAT and doc.get("model_file") in doc["files"] and "profile" in doc


def prepare_out_dir(out_dir: Path) -> None:
    """Refuse to replace anything that is not a previous bundle of ours (or an empty directory).

    A directory is a bundle of ours only when its manifest.json is a plain single-link file an export
    wrote and every entry in it is a file that manifest lists: replacing it loses nothing of the user's.
    """
    kind = kind_of(out_dir)
    if kind is not None and kind != "a directory":
        raise UserError(f"bundle directory {out_dir} is {kind}, not a directory; rlprune-edge never writes through "
                        "links or onto special files: choose another output path.")
    if kind == "a directory" and any(out_dir.iterdir()):
        manifest = read_marker(out_dir, MANIFEST_NAME)
        if not is_bundle_manifest(manifest):
            raise UserError(
                f"bundle directory {out_dir} exists and is not an rlprune-edge bundle (no {MANIFEST_NAME} written "
                "by an export); choose another output directory or empty it first."
            )
        listed = set(manifest["files"]) | {MANIFEST_NAME}
        foreign = sorted(n for n in os.listdir(out_dir) if n not in listed)
        if foreign:
            raise UserError(
                f"bundle directory {out_dir} holds files its manifest does not list ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); replacing the bundle would delete them: move them out or "
                "choose another output directory."
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)


def install_bundle(tmp_dir: Path, out_dir: Path) -> None:
    """Rename the finished bundle into place; a previous bundle is kept until the new one is in.

    `out_dir` is checked again first: minutes passed since :func:`check_out_dir`."""
    prepare_out_dir(out_dir)
    if not os.path.lexists(out_dir):
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


def publish_permissions(bundle: Path) -> None:
    """Temp files are private (0600/0700); a bundle is meant to be copied around: 0755 dir, 0644 files."""
    os.chmod(bundle, 0o755)
    for p in bundle.iterdir():
        if p.is_file():
            os.chmod(p, 0o755 if p.suffix == ".py" else 0o644)


def file_entry(path: Path) -> dict[str, Any]:
    """A manifest `files` entry: sha256 and size."""
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def build_manifest(req: BundleRequest, tmp_dir: Path, verification: dict[str, Any], facts: BundleFacts) -> dict:
    """manifest.json's content for the files now in `tmp_dir` (hidden files are not part of the bundle)."""
    info, batch, input_shape = req.info, req.batch, req.input_shape
    names = sorted(p.name for p in tmp_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    manifest: dict[str, Any] = {
        "tool": MANIFEST_TOOL,
        "format": BUNDLE_FORMAT,
        "profile": req.profile.name,
        "runtime": req.profile.runtime.name,
        "precision": req.precision,
        "model_file": facts.model_file,
        "reference_onnx": req.fp32_name,
        "files": {n: file_entry(tmp_dir / n) for n in names},
        "input": {
            "name": INPUT_NAME,
            "shape": [None if req.dynamic_batch else batch, *input_shape],
            "dynamic_batch": bool(req.dynamic_batch),
            "dtype": "float32",
            "layout": "NCHW",
        },
        "output": {"name": OUTPUT_NAME, "shape": [None if req.dynamic_batch else batch, int(info.num_classes)]},
        "preprocessing": {
            "resize": [int(input_shape[1]), int(input_shape[2])],
            "channels": int(input_shape[0]),
            "scale": 1.0 / 255.0,
            "mean": [float(v) for v in info.mean],
            "std": [float(v) for v in info.std],
            "resize_method": _resize_method(req.data),
            "order": "pixel/255, convert channels (grey -> 3 copies), resize or pad to HxW, (x - mean) / std, NCHW",
        },
        "class_names": list(info.class_names),
        "accuracy": facts.accuracy,
        "verification": verification,
        "latency": facts.latency,
        "calibration": facts.calibration,
        "engine": facts.engine,
        "model": {
            "name": getattr(info, "model", None),
            "width": getattr(info, "width", None),
            "num_classes": int(info.num_classes),
            "checkpoint_test_acc": (getattr(info, "meta", None) or {}).get("test_acc"),
        },
        "versions": versions(),
    }
    if facts.engine:
        manifest["tensorrt_version"] = facts.engine["tensorrt_version"]
        manifest["gpu_name"] = facts.engine["gpu_name"]
    return manifest



def _resize_method(data: Any) -> str:
    """How raw images reach the model's H x W: Fashion-MNIST is zero-padded 28 -> 32, others resized."""
    spec = str(getattr(data, "spec", "") or "")
    return "pad" if spec.split(":", 1)[0] == "fashion-mnist" else "bilinear"



# ---------------------------------------------------------------------------------------------
# reading a bundle back


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

