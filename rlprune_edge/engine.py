"""TensorRT engines for the bundle, and the provenance recorded in its manifest.

:func:`build_engine` builds on the profile's device: in-process through the board runner for local
profiles, on the board through :mod:`rlprune_edge.latency.remote` for ssh profiles. The manifest
records the TensorRT version and GPU name (:func:`engine_provenance`) and the host's tool
versions (:func:`versions`).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlprune_edge.errors import DeviceError

# (profile, onnx_path, out_path, precision, calib_path | None) -> {"tensorrt_version", "gpu_name", ...}
EngineBuilder = Callable[[Any, Path, Path, str, "Path | None"], dict]


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
    from rlprune_edge.runtimes import get_runtime

    argv = ["build-engine", "--onnx", str(onnx_path), "--out", str(out_path), "--precision", precision,
            *get_runtime(profile.runtime.name).engine_args(profile.runtime, local=True)]
    if calib is not None:
        argv += ["--calib", str(calib)]
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


def versions() -> dict[str, str]:
    """Versions of the tools that made the bundle."""
    import onnx
    import onnxruntime
    import torch

    import rlprune_edge

    out = {
        "rlprune-edge": rlprune_edge.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }
    import onnxslim  # a pinned dependency (ONNX simplification before export)

    out["onnxslim"] = onnxslim.__version__
    return out
