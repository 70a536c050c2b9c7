"""The channel block this machine's CPU convolution kernels work in: what a profile's
``channel_multiple = "auto"`` resolves to.

ONNX Runtime's CPU kernels (MLAS) compute convolutions in NCHWc blocks of 16 channels when the CPU
has AVX-512F and of 8 otherwise on x86-64 (``MLAS_PLATFORM::NchwcBlockSize``); oneDNN, behind
PyTorch's CPU convolutions, blocks the same way (nChw16c / nChw8c). Measured on the shipped
VGG-19 w0.25 (BENCHMARKS.md): on an AVX-512 EPYC, widths off a multiple of 16 ran no faster than
the next multiple; on an AVX2-only EPYC, a 24-channel stage ran faster than 32 (latency only: the
shipped profiles stay at 16 for accuracy, host-cpu.toml says why). ARM NEON kernels work on 4-lane
fp32 vectors.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

AUTO = "auto"
_X86 = ("x86_64", "amd64", "i386", "i686", "x86")
_ARM = ("aarch64", "arm64", "armv7l", "armv8l", "arm")


@dataclass(frozen=True)
class ChannelBlock:
    """A channel multiple and the one-line reason for it (shown by `compress` and `profiles show`)."""

    multiple: int
    basis: str


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first processor in /proc/cpuinfo text (x86 ``flags``, ARM ``Features``)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def channel_block(machine: str, flags: frozenset[str] | None) -> ChannelBlock:
    """The block for a CPU architecture (``platform.machine()``) and its flags (None: unreadable)."""
    arch = machine.lower()
    if arch in _X86:
        if flags is None:
            return ChannelBlock(8, f"auto: {machine} CPU whose flags could not be read; 8, the NCHWc block without AVX-512")
        if "avx512f" in flags:
            return ChannelBlock(16, f"auto: {machine} CPU with AVX-512F; ONNX Runtime's and oneDNN's conv block is 16")
        return ChannelBlock(8, f"auto: {machine} CPU without AVX-512F; ONNX Runtime's and oneDNN's conv block is 8")
    if arch in _ARM or arch.startswith("armv"):
        return ChannelBlock(4, f"auto: {machine} CPU; NEON kernels work on 4 fp32 lanes")
    return ChannelBlock(8, f"auto: {machine or 'unknown'} CPU with no known channel block; 8")


def host_channel_block(cpuinfo: Path = Path("/proc/cpuinfo")) -> ChannelBlock:
    """The block of the CPU this process runs on."""
    try:
        flags: frozenset[str] | None = cpu_flags(cpuinfo.read_text(errors="replace"))
    except OSError:
        flags = None
    return channel_block(platform.machine(), flags or None)
