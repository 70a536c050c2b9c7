"""Content-addressed copies on the board: the runner folder and each model, sent only when absent.

The self-contained runner folder (``rlprune_edge/board``) and each model live under the profile's
work dir as::

    <work_dir>/runner-<hash of the runner files>/runner.py ...
    <work_dir>/blobs/<sha256>.onnx

What is missing travels as one tar stream on ssh's stdin, unpacked and checked on the board by
``rlprune_edge/board/receive.py`` (sent as the command's text: the runner may not be there yet).
"""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rlprune_edge.fsutil import sha256_file
from rlprune_edge.limits import require_regular_file

BOARD_BLOB_BYTES = 2 << 30  # bytes of models kept on the board (least recently sent or used go first)


@dataclass(frozen=True)
class Blob:
    """A local file and where its content-addressed copy lives on the board."""

    kind: str  # "model" or "file"
    local: Path
    sha256: str
    remote_rel: str  # relative to the work dir, e.g. "blobs/<sha>.onnx"


def board_dir() -> Path:
    """The runner folder copied to boards (``rlprune_edge/board``)."""
    return Path(__file__).resolve().parent.parent / "board"


def runner_files(folder: Path | None = None) -> list[Path]:
    """The files that make up the runner (every ``*.py`` in the board folder), sorted."""
    folder = folder or board_dir()
    return sorted(p for p in folder.glob("*.py") if p.is_file())


def runner_hash(folder: Path | None = None) -> str:
    """Short content hash of the runner files (names and bytes)."""
    h = hashlib.sha256()
    for p in runner_files(folder):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def receive_source() -> str:
    """The text of the board-side receive script (``board/receive.py``), run with ``python -c``."""
    return (board_dir() / "receive.py").read_text()


def blob(path: str | os.PathLike, kind: str = "model") -> Blob:
    """Describe a local file for content-addressed copying (``blobs/<sha256><suffix>``)."""
    p = require_regular_file(path, "file", "give the path of an existing regular file.")
    sha = sha256_file(p)
    suffix = p.suffix if p.suffix and p.suffix[1:].isalnum() else ".bin"
    return Blob(kind, p, sha, f"blobs/{sha}{suffix}")


def payload(
    missing: Sequence[str], blobs: Sequence[Blob], runner_rel: str, runner_id: str
) -> tuple[bytes, list[str], list[tuple[str, str]]]:
    """A tar stream of the missing runner and blobs, the receive items, and (kind, id) per copy.

    `missing` holds ``"runner"`` and/or indices into `blobs` (as strings), as the board reported them.
    """
    buf = io.BytesIO()
    items: list[str] = []
    sent: list[tuple[str, str]] = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tf.addfile(info, io.BytesIO(data))

        if "runner" in missing:
            for f in runner_files():
                add(f"{runner_rel}/{f.name}", f.read_bytes())
            items.append(f"dir:{runner_rel}")
            sent.append(("runner", runner_id))
        for i in sorted({int(x) for x in missing if x.isascii() and x.isdigit()}):
            b = blobs[i]
            add(b.remote_rel, b.local.read_bytes())
            items.append(f"file:{b.remote_rel}:{b.sha256}")
            sent.append(("model", b.sha256))
    return buf.getvalue(), items, sent


def receive_command(python: str, work_dir: str, items: Sequence[str]) -> str:
    """The shell command that receives a payload on the board; `python` and `work_dir` are quoted expressions."""
    words = [python, "-c", shlex.quote(receive_source()), work_dir, str(BOARD_BLOB_BYTES)]
    return " ".join([*words, *(shlex.quote(x) for x in items)])
