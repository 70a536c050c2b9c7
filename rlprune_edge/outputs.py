"""The one output rule every command follows: nothing the user had is lost.

* A file output is written to a temp file in the target's directory, checked, then renamed into
  place: never written through, so a symbolic link, a FIFO or a device at the target is never
  opened for writing.
* The target must be missing or a regular file. A symbolic link, directory, FIFO, device or
  socket is refused (:func:`check_file_output`), as is the command's own input file.
* An existing regular file is replaced only when it is one of ours, recognised by its content (a
  `recognise` predicate the caller passes: a checkpoint's format key, a JSON document's ``tool``
  key), or when the user adds ``--force``.
* A missing target is installed with a hard link (fails if something appeared meanwhile), so a
  file created by someone else between the check and the install is not replaced either.
* A directory is ours only when its marker file says so and the marker is a regular file with one
  link (:func:`read_marker`); the directory rules themselves live with the directory kinds
  (:mod:`rlprune_edge.rundir` for ``compress --out``, :mod:`rlprune_edge.bundle` for ``export``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rlprune_edge.errors import UserError
from rlprune_edge.fsutil import (
    atomic_write_json,
    default_file_mode,
    probe_writable,
    remove_stale_temps,
    temp_prefix,
)

MAX_MARKER_BYTES = 64 << 10  # a marker or small JSON document of ours is far below this
MAX_JSON_BYTES = 64 << 20  # the largest JSON output of ours read back to recognise it

Recognise = Callable[[Path], bool]


def kind_of(path: str | os.PathLike) -> str | None:
    """What is at `path` without following a final symbolic link ('a directory', ...); None when nothing."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None  # a parent is not a directory: check_file_output names it
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"a symbolic link (to {target})"
    return mode_kind(mode)


def mode_kind(mode: int) -> str:
    """'a regular file', 'a directory', 'a named pipe (FIFO)', ... for an ``st_mode``."""
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "a special file"


def quote(path: str | os.PathLike) -> str:
    """A path as a shell word the user can paste (quoted only when needed)."""
    return shlex.quote(str(path))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_file_output(path: str | os.PathLike, *, flag: str, what: str, recognise: Recognise,
                      force: bool = False, inputs: Iterable[str | os.PathLike] = (),
                      example: str = "out.pt") -> Path:
    """Refuse (UserError) a file output that the rule forbids; create missing parent directories.

    `what` names our kind of file ('rlprune-edge checkpoint'); `inputs` are the files the command
    reads (the output may never be one of them, not even with --force).
    """
    path = Path(path)
    shown = f"{flag} {path}"
    kind = kind_of(path)
    if kind == "a directory":
        raise UserError(f"{shown} is a directory; give a file name such as {path / example}.")
    if kind is not None and kind != "a regular file":
        raise UserError(f"{shown} is {kind}; rlprune-edge writes only regular files and never through links "
                        "or onto special files: give a new file name.")
    for src in inputs:
        if kind is not None and _same_file(path, Path(src)):
            raise UserError(f"{shown} is the input file {src}; writing there would replace what is being read: "
                            "give a new file name.")
    if kind == "a regular file" and not force and not recognise(path):
        raise UserError(f"{shown} exists and is not an {what}; choose a new file name, or add --force to "
                        "replace it.")
    for ancestor in path.parents:
        if os.path.lexists(ancestor):
            if not ancestor.is_dir():
                raise UserError(f"cannot write {shown}: {ancestor} is {kind_of(ancestor)}, not a directory; choose "
                                "an output path inside a directory.")
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe_writable(path)
    except OSError as exc:
        raise UserError(f"cannot write {shown}: {exc.strerror or exc}; choose a writable output path.") from None
    return path


def write_file(path: str | os.PathLike, write: Callable[[Path], None], *, flag: str, what: str,
               recognise: Recognise, force: bool = False, inputs: Iterable[str | os.PathLike] = (),
               check: Callable[[Path], None] | None = None, suffix: str = ".tmp") -> Path:
    """Write `path` under the rule: `write(tmp)`, then `check(tmp)`, then install it.

    The target is checked before and again just before it is replaced; a failed write or check
    leaves what was there untouched and no temp file behind. OSError becomes a UserError naming
    the path.
    """
    path = Path(path)
    inputs = list(inputs)
    check_file_output(path, flag=flag, what=what, recognise=recognise, force=force, inputs=inputs)
    remove_stale_temps(path.parent, path.name)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=suffix, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise UserError(f"cannot write {flag} {path}: {exc.strerror or exc}; choose a writable output path.") from None
    tmp = Path(tmp_name)
    try:
        write(tmp)
        if check is not None:
            check(tmp)
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600
        _install(tmp, path, flag=flag, what=what, recognise=recognise, force=force, inputs=inputs)
    except OSError as exc:
        raise UserError(f"cannot write {flag} {path}: {exc.strerror or exc}; choose a writable output path "
                        "(what was there is unchanged).") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def _install(tmp: Path, path: Path, **rule: Any) -> None:
    """Rename `tmp` to `path`: a link when nothing is there (never replaces a newcomer), else a re-checked replace."""
    if kind_of(path) is None:
        try:
            os.link(tmp, path)
            return
        except FileExistsError:
            pass  # something appeared meanwhile: fall through to the full check
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            if kind_of(path) is None:  # a file system without hard links
                os.replace(tmp, path)
                return
    check_file_output(path, **rule)
    os.replace(tmp, path)


# --- recognising our own files by content ---------------------------------------------------------

def _regular_lstat(path: Path) -> os.stat_result | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def read_json_document(path: str | os.PathLike, limit: int = MAX_JSON_BYTES) -> Any:
    """The JSON in a regular file of at most `limit` bytes (no links, no special files); None otherwise."""
    path = Path(path)
    st = _regular_lstat(path)
    if st is None or st.st_size > limit:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            return json.loads(fh.read(limit + 1).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def json_tool_is(tool: str, *legacy_keys: str) -> Recognise:
    """A recogniser: a JSON object whose ``tool`` is `tool` (or, written before the key existed, one
    holding every one of `legacy_keys`)."""
    def recognise(path: Path) -> bool:
        doc = read_json_document(path)
        if not isinstance(doc, dict):
            return False
        return doc.get("tool") == tool or (bool(legacy_keys) and all(k in doc for k in legacy_keys))
    return recognise


# --- directory markers ----------------------------------------------------------------------------

def read_marker(directory: str | os.PathLike, name: str) -> dict | None:
    """A marker file's JSON object when it is a regular file with one link (never a link we could be
    tricked through); None when absent or not a marker of ours."""
    path = Path(directory) / name
    st = _regular_lstat(path)
    if st is None or st.st_nlink != 1:
        return None
    doc = read_json_document(path, MAX_MARKER_BYTES)
    return doc if isinstance(doc, dict) else None


def check_plain_entry(directory: str | os.PathLike, name: str, flag: str) -> None:
    """Refuse a control file of ours (a lock, a marker) that is a link, special file or hard link."""
    path = Path(directory) / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{flag} {directory} holds {name}, which is {kind_of(path)}, not a file rlprune-edge "
                        "wrote; remove it or choose another directory.")
    if st.st_nlink != 1:
        raise UserError(f"{flag} {directory} holds {name}, a file with {st.st_nlink} hard links (another file's "
                        "content); remove it or choose another directory.")


def write_marker(directory: str | os.PathLike, name: str, content: dict) -> None:
    """Write a marker atomically (temp + rename: a link at the name is replaced, never followed)."""
    atomic_write_json(Path(directory) / name, content, indent=None)


def open_lock(path: str | os.PathLike) -> int:
    """Open (creating) a lock file without following links; refuse anything but a single-link file."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags, 0o644)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise UserError(f"{path} is not a plain lock file of ours ({mode_kind(st.st_mode)}, {st.st_nlink} links); "
                        "remove it or choose another directory.")
    return fd


def add_force_flag(parser: Any, what: str) -> None:
    """The one ``--force`` flag: replace an existing file at the output path that is not one of ours."""
    parser.add_argument("--force", action="store_true",
                        help=f"replace an existing file at the output path even when it is not {what} "
                             "(links, special files and the input file are never replaced)")
