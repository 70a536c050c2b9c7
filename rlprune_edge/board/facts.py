"""Facts about the device the runner executes on (stdlib only; runs on the board).

``collect_facts()`` returns a JSON-ready dict: host, CPU, governor, temperature, throttling,
Jetson L4T/JetPack release, Python and runtime versions. Every probe is best effort: a file,
command or package that is absent leaves its key out; nothing here raises.
"""

from __future__ import annotations

import glob
import importlib
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from typing import Any

_PROBE_TIMEOUT_S = 5.0
_RUNTIME_MODULES = ("numpy", "onnxruntime", "tensorrt", "pycuda")
_RUNTIME_DISTRIBUTIONS = ("cuda-python", "onnxruntime-gpu")


def _read(path: str) -> str | None:
    """Text of a small file, stripped; None when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _run(argv: list[str]) -> str | None:
    """Stdout of a short command, stripped; None when absent, failing or slow."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def cpu_model(cpuinfo: str) -> str | None:
    """CPU model name from /proc/cpuinfo text (x86 `model name`, ARM `Model`/`Hardware`/`CPU part`)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(key.strip().lower(), value.strip())
    for key in ("model name", "model", "hardware", "cpu model", "processor"):
        value = fields.get(key)
        if value and not value.isdigit():
            return value
    part = fields.get("cpu part")
    return f"ARM CPU part {part}" if part else None


def parse_throttled(text: str) -> dict[str, Any] | None:
    """Decode `vcgencmd get_throttled` output (``throttled=0x50005``) into named flags."""
    m = re.search(r"throttled=(0x[0-9a-fA-F]+)", text)
    if not m:
        return None
    bits = int(m.group(1), 16)
    names = {
        0: "under_voltage_now",
        1: "arm_frequency_capped_now",
        2: "throttled_now",
        3: "soft_temperature_limit_now",
        16: "under_voltage_occurred",
        17: "arm_frequency_capped_occurred",
        18: "throttled_occurred",
        19: "soft_temperature_limit_occurred",
    }
    flags = {name: bool(bits >> bit & 1) for bit, name in names.items()}
    return {"raw": m.group(1), **flags}


def parse_nv_tegra_release(text: str) -> str | None:
    """L4T release from /etc/nv_tegra_release (``# R35 (release), REVISION: 4.1, ...`` → ``35.4.1``)."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def _temperatures() -> dict[str, float]:
    temps: dict[str, float] = {}
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        raw = _read(os.path.join(zone, "temp"))
        if raw is None:
            continue
        try:
            milli = int(raw)
        except ValueError:
            continue
        kind = _read(os.path.join(zone, "type")) or os.path.basename(zone)
        temps[kind] = round(milli / 1000.0, 1)
    return temps


def _module_version(name: str) -> str | None:
    try:
        module = importlib.import_module(name)
    except Exception:  # any import failure means "not usable here"
        return None
    version = getattr(module, "__version__", None) or getattr(module, "VERSION_TEXT", None)
    return str(version) if version is not None else "unknown"


def _distribution_version(name: str) -> str | None:
    try:
        from importlib import metadata

        return metadata.version(name)
    except Exception:  # not installed, or broken metadata
        return None


def collect_facts() -> dict[str, Any]:
    """Best-effort facts about this device; absent sources leave their key out."""
    facts: dict[str, Any] = {}
    try:
        facts["hostname"] = socket.gethostname()
    except OSError:
        pass
    facts["machine"] = platform.machine()
    facts["system"] = platform.system()
    facts["kernel"] = platform.release()
    cpuinfo = _read("/proc/cpuinfo")
    if cpuinfo:
        model = cpu_model(cpuinfo)
        if model:
            facts["cpu_model"] = model
    if os.cpu_count():
        facts["cpu_count"] = os.cpu_count()
    if hasattr(os, "sched_getaffinity"):
        try:
            facts["cpu_affinity_count"] = len(os.sched_getaffinity(0))
        except OSError:
            pass
    board = _read("/proc/device-tree/model") or _read("/sys/firmware/devicetree/base/model")
    if board:
        facts["board_model"] = board.rstrip("\x00")
    governor = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    if governor:
        facts["governor"] = governor
    cur = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    if cur and cur.isascii() and cur.isdigit():
        facts["cpu0_freq_mhz"] = int(cur) // 1000
    temps = _temperatures()
    if temps:
        facts["temperature_c"] = temps
    throttled_text = _run(["vcgencmd", "get_throttled"])
    if throttled_text:
        throttled = parse_throttled(throttled_text)
        if throttled:
            facts["throttled"] = throttled
    tegra = _read("/etc/nv_tegra_release")
    if tegra:  # a Jetson: L4T release, JetPack and power mode (the probes cost time elsewhere)
        release = parse_nv_tegra_release(tegra)
        facts["l4t_release"] = release or tegra.splitlines()[0]
        l4t_pkg = _run(["dpkg-query", "-W", "-f=${Version}", "nvidia-l4t-core"])
        if l4t_pkg:
            facts["l4t_core_package"] = l4t_pkg
        jetpack = _run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"])
        if jetpack:
            facts["jetpack"] = jetpack
        power_mode = _run(["nvpmodel", "-q"])
        if power_mode:
            facts["nvpmodel"] = " ".join(power_mode.split())
    facts["python"] = platform.python_version()
    facts["python_executable"] = sys.executable
    versions = {}
    for name in _RUNTIME_MODULES:
        version = _module_version(name)
        if version is not None:
            versions[name] = version
    for name in _RUNTIME_DISTRIBUTIONS:
        version = _distribution_version(name)
        if version is not None:
            versions[name] = version
    facts["packages"] = versions
    return facts


if __name__ == "__main__":
    import json

    print(json.dumps(collect_facts(), indent=2, sort_keys=True))
