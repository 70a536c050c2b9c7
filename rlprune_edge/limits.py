"""Bounds on every size and count read from input, and the checks that go with them.

Bad input is refused with one sentence before anything is allocated: counts from flags and
profiles are bounded here (one place for each bound), data files are opened only when they are
regular files (a FIFO or a device named like a data file would block or never end), and a model
is built only when its weights fit in this machine's memory. The ONNX-input bound lives with the
board code (:data:`rlprune_edge.board.protocol.MAX_INPUT_ELEMENTS`), which runs without this package.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Any

from rlprune_edge.errors import UserError
from rlprune_edge.outputs import mode_kind

MAX_RUNS = 100_000  # timed or warm-up runs of one measurement (bench, latency-check, profile [measure])
MAX_BLOCKS = 1_000  # interleaved blocks or rounds of one comparison (profile [measure])
MAX_VARIANTS = 10_000  # pruned variants measured by latency-check or a latency-model fit
MAX_THREADS = 1_024  # runtime or torch threads
MAX_TIMEOUT_S = 86_400  # seconds, one day: any timeout in a profile
MAX_COUNT = 10_000_000  # images, batches, steps, epochs... of one compress run
MAX_PROFILE_BYTES = 1 << 20  # a profile TOML file (the shipped ones are about 1 KiB)
MAX_IMAGE_PIXELS = 1 << 26  # one image of an image folder (67 megapixels, 8192x8192), checked on its header
WEIGHTS_MEMORY_SHARE = 0.5  # a model's float32 weights may take at most this share of the available memory


def path_problem(path: str | os.PathLike) -> str | None:
    """None when `path` is a regular file (links followed); else what it is, as a predicate.

    'does not exist', 'is a directory', 'is a named pipe (FIFO), not a regular file', ...
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist" if not os.path.islink(path) else "is a symbolic link to a missing file"
    except NotADirectoryError:
        return "does not exist (a folder on its path is a file)"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    kind = mode_kind(mode)
    return f"is {kind}" if kind == "a directory" else f"is {kind}, not a regular file"


def require_regular_file(path: str | os.PathLike, what: str, hint: str) -> Path:
    """`path` when it is a regular file, else UserError '`what` PATH is a directory; `hint`'."""
    problem = path_problem(path)
    if problem is not None:
        raise UserError(f"{what} {path} {problem}; {hint}")
    return Path(path)


def require_directory(path: str | os.PathLike, what: str, hint: str) -> Path:
    """`path` when it is a directory (links followed), else UserError naming what it is instead."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        raise UserError(f"{what} {path} does not exist; {hint}") from None
    if not stat.S_ISDIR(mode):
        raise UserError(f"{what} {path} is {mode_kind(mode)}, not a directory; {hint}")
    return Path(path)


def check_count(value: int | None, name: str, lo: int, hi: int, hint: str = "") -> None:
    """UserError unless `value` (None: not given) is an integer in lo..hi."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise UserError(f"{name} must be an integer in {lo}..{hi:,}, got {value}{'; ' + hint if hint else ''}.")


def check_tensor_kinds(state: dict[str, Any], source: str | os.PathLike) -> dict[str, Any]:
    """`state` when every tensor is a plain (strided, not quantized) real tensor of a dtype a model is built
    with; else UserError naming the first other one (sparse, quantized, complex, float8...) and what to do.

    Imported weights and checkpoints alike: such a tensor would fail deep inside torch, or be cast
    silently (complex to real).
    """
    import torch

    plain = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32)
    for key, value in state.items():
        if value.layout != torch.strided:
            kind = f"a {str(value.layout).removeprefix('torch.').replace('_', ' ')} tensor"
            fix = "re-save it with dense tensors (tensor.to_dense())"
        elif value.is_quantized:
            kind = f"a quantized tensor ({str(value.dtype).removeprefix('torch.')})"
            fix = "re-save the float model's state_dict from before quantization (or dequantize its tensors)"
        elif value.dtype not in plain:
            kind = f"a {str(value.dtype).removeprefix('torch.')} tensor"
            fix = "re-save it with float32 tensors (tensor.float())"
        elif value.device.type == "meta":
            kind, fix = "a tensor on the 'meta' device (a shape without values)", "re-save the trained weights"
        else:
            continue
        raise UserError(f"the weights in {source} hold {kind} at {key!r}; rlprune-edge takes dense real-valued "
                        f"weights only: {fix}.")
    return state


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (MemAvailable, else free pages); None when unknown."""
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo", "rb") as fh:
        for line in fh.read(1 << 16).splitlines():
            if line.startswith(b"MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def gib(n: float) -> str:
    """Bytes as '1.5 GiB' (or MiB below one GiB)."""
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"
