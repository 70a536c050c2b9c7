"""Atomic file writes: a temp file beside the destination, renamed over it only on success.

A failed or interrupted write leaves the previous file untouched and no temp file behind.
Temp siblings are named ``.NAME.tmp-<pid>-<random>[suffix]`` (``.NAME.old-<pid>-<random>`` for a
directory being replaced), so one left by a process killed with SIGKILL is recognisable:
:func:`remove_stale_temps` removes those whose process is gone at the start of the next write of
the same NAME, and never touches a live process's temp or anything else. :func:`sha256_file` is
the one file hash (bundle manifests).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def default_file_mode() -> int:
    """0o666 minus the process umask: the mode a plain open() would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temp_prefix(name: str, kind: str = "tmp") -> str:
    """``.NAME.<kind>-<pid>-``: the start of this process's temp siblings of NAME (kind: tmp or old)."""
    return f".{name}.{kind}-{os.getpid()}-"


def make_temp_dir(parent: str | os.PathLike, name: str, kind: str = "tmp") -> Path:
    """A new private directory ``.NAME.<kind>-<pid>-<random>`` in `parent`."""
    return Path(tempfile.mkdtemp(prefix=temp_prefix(name, kind), dir=parent))


def probe_writable(path: str | os.PathLike) -> None:
    """Create and remove a hidden probe file beside `path` (raises OSError when it cannot be written there)."""
    path = Path(path)
    fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
    os.close(fd)
    os.unlink(probe)


def pid_alive(pid: int) -> bool:
    """False only when no process `pid` exists (``os.kill(pid, 0)`` raises ProcessLookupError)."""
    if pid <= 0 or os.name == "nt":  # os.kill on Windows would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or not a pid at all: not ours to judge
    return True


def _temp_pattern(name: str) -> re.Pattern[str]:
    # mkstemp/mkdtemp add 8 characters of [a-z0-9_]; the optional suffix is e.g. ".tmp" or ".onnx"
    return re.compile(rf"\.{re.escape(name)}\.(tmp|old)-(\d+)-[a-z0-9_]{{8}}(\.[A-Za-z0-9]+)?")


def remove_stale_temps(parent: str | os.PathLike, name: str) -> list[Path]:
    """Clean up temp siblings of `name` in `parent` left by processes that no longer exist.

    Only entries named ``.NAME.tmp-<pid>-<random>[suffix]`` or ``.NAME.old-<pid>-<random>`` whose
    pid is not alive are handled: a temp is removed; an ``old`` directory (the previous version,
    moved aside by a run killed between its two renames) is put back as NAME when NAME is missing,
    else removed. Live processes' temps and everything else are left alone; errors (another process
    cleaning at the same time, no permission) skip the entry. Returns the entries handled.
    """
    parent = Path(parent)
    pattern = _temp_pattern(name)
    handled: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return handled
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is None or pid_alive(int(m.group(2))):
            continue
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
            if m.group(1) == "old" and is_dir and not os.path.lexists(parent / name):
                os.replace(path, parent / name)
            elif is_dir:
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except OSError:
            continue
        handled.append(path)
    return handled


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path in `path`'s directory; on clean exit it replaces `path`, else it is removed.

    Stale temps of `path` left by killed processes are removed first (:func:`remove_stale_temps`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write `obj` as JSON to `path` atomically."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=indent) + "\n").encode())


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
