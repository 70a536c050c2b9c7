"""A `compress --out` directory: ours or refused, locked while a run uses it, replaced only on success.

Follows the output rule of :mod:`rlprune_edge.outputs`:

* ``OUT`` missing or empty: the run works in it (a marker file says it is a run directory of ours).
* ``OUT`` is a run of ours only when its marker ``.rlprune-edge-run`` is a regular, single-link file
  whose content names ``rlprune-edge compress`` (what files it holds proves nothing: a folder with a
  ``report.json`` and a ``search/`` of the user's is not ours).
* ``OUT`` holds files and is not a run of ours, or its ``.lock``/marker is a link, special file or
  hard link: refused (exit 2), nothing touched.
* ``OUT`` is a run of ours and ``--resume``: the run continues in it.
* ``OUT`` is a run of ours without ``--resume``: the new run works in a temporary sibling
  (``.OUT.tmp-<pid>-<random>``) and replaces ``OUT`` only when it ends normally (finished, or stopped
  as asked with ``--stop-after``); a failed or interrupted run leaves ``OUT`` as it was. It is
  replaced only when everything in it is a file a run writes (anything else is named and the run
  refused), and the new directory keeps ``OUT``'s permissions.
* An advisory lock (``fcntl.flock`` on ``OUT/.lock``, opened without following links) makes a second
  run on the same ``OUT`` stop at once with exit 2 instead of wiping the first one's live state.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rlprune_edge.errors import UserError
from rlprune_edge.fsutil import make_temp_dir, remove_stale_temps
from rlprune_edge.outputs import check_plain_entry, kind_of, open_lock, read_marker, write_marker

MARKER = ".rlprune-edge-run"
LOCK = ".lock"
MARKER_TOOL = "rlprune-edge compress"
# everything a run writes at the top of OUT (temp siblings of these are ``.NAME.tmp-...``)
RUN_ENTRIES = frozenset({"model.pt", "model.onnx", "report.json", "pareto.png", "search", "bundle", LOCK, MARKER})


def is_run_dir(path: Path) -> bool:
    """True when `path` is a compress run directory of ours: its marker is a plain file of ours."""
    marker = read_marker(path, MARKER)
    return marker is not None and marker.get("tool") == MARKER_TOOL


def _entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name not in (LOCK, MARKER))


def _foreign_entries(path: Path) -> list[str]:
    """Entries of a run directory that no run writes (a user's files: replacing OUT would lose them)."""
    def ours(name: str) -> bool:
        return name in RUN_ENTRIES or any(name.startswith(f".{known}.") for known in RUN_ENTRIES)
    return sorted(n for n in os.listdir(path) if not ours(n))


def _inside(path: Path, directory: Path) -> bool:
    try:
        return path.exists() and path.resolve().is_relative_to(directory.resolve())
    except OSError:
        return False


def _check_replaceable(out: Path, name: str, inputs: Iterable[str | os.PathLike]) -> None:
    """A fresh run replaces `out` at its end: refuse when that would delete an input or the user's files."""
    held = [str(src) for src in inputs if _inside(Path(src), out)]
    if held:
        raise UserError(f"{name} {out} holds the input {held[0]}, and a new run replaces the whole directory at its "
                        "end: copy the input elsewhere, choose another directory, or add --resume to continue that "
                        "run.")
    foreign = _foreign_entries(out)
    if foreign:
        raise UserError(f"{name} {out} is an earlier compress run but also holds files no run writes "
                        f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); a new run would replace "
                        "the whole directory: move them out, or choose another directory.")


@dataclass
class RunDir:
    """Where a compress run writes (``work``) and the directory the user named (``out``)."""

    out: Path
    work: Path
    replaces: bool  # work is a temporary sibling that replaces out on success
    created: bool  # out did not exist before this run
    _lock: IO[Any] | None = field(default=None, repr=False)

    @classmethod
    def open(cls, out: str | os.PathLike, *, resume: bool, name: str = "output directory",
             inputs: Iterable[str | os.PathLike] = ()) -> RunDir:
        """Validate `out` for a run (resume or not) and lock it; raise UserError when it cannot be used.

        `name` is how messages call `out` (the command passes ``--out``); `inputs` are files the run
        reads (a fresh run refuses to replace a directory holding one of them)."""
        out = Path(out)
        if out.is_symlink():
            raise UserError(f"{name} {out} is a symbolic link (to {os.readlink(out)}); rlprune-edge never writes "
                            "through links: give the real directory path.")
        if out.exists() and not out.is_dir():
            raise UserError(f"{name} {out} is {kind_of(out)}, not a directory; choose a directory path.")
        created = not out.exists()
        if not created:
            for control in (LOCK, MARKER):
                check_plain_entry(out, control, name)
            if not os.access(out, os.W_OK | os.X_OK):
                raise UserError(f"{name} {out} is not writable; choose a directory you can write to.")
            foreign = _entries(out)
            if foreign and not is_run_dir(out):
                raise UserError(f"{name} {out} is not empty and is not a compress run directory (it holds "
                                f"{', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); give a new or empty "
                                "directory, or resume a run directory of ours.")
        else:
            parent = out.absolute().parent
            while not parent.exists():
                parent = parent.parent
            if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"cannot create {name} {out}: {parent} is not a writable directory; choose another path.")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create {name} {out} ({exc.strerror}); choose another path.") from None
        if not created and not resume and is_run_dir(out) and _entries(out):
            _check_replaceable(out, name, inputs)
        run = cls(out=out, work=out, replaces=False, created=created)
        run._acquire()
        remove_stale_temps(out.parent, out.name)  # what a killed earlier run left beside OUT
        if not resume and is_run_dir(out) and _entries(out):
            try:
                _check_replaceable(out, name, inputs)  # again: the directory is ours now, nothing can change it
            except UserError:
                run.release()
                raise
            run.work = make_temp_dir(out.parent, out.name)
            run.replaces = True
        run._mark(run.work)
        return run

    def _acquire(self) -> None:
        import fcntl

        try:
            fd = open_lock(self.out / LOCK)
        except OSError as exc:  # ELOOP: a link appeared at the lock's name
            raise UserError(f"cannot lock {self.out / LOCK}: {exc.strerror or exc}; remove it or choose another "
                            "directory.") from None
        fh = os.fdopen(fd, "r+")  # held for the run's lifetime
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            raise UserError(f"{self.out} is in use by another compress run{f' ({holder})' if holder else ''}; "
                            "wait for it to finish or choose another output directory.") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        self._lock = fh

    @staticmethod
    def _mark(path: Path) -> None:
        write_marker(path, MARKER, {"tool": MARKER_TOOL, "pid": os.getpid(),
                                    "started": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def commit(self) -> None:
        """The run ended normally: a temporary work directory replaces `out` (old contents removed)."""
        if self.replaces:
            os.chmod(self.work, stat.S_IMODE(os.stat(self.out).st_mode))  # mkdtemp made it 0700
            old = make_temp_dir(self.out.parent, self.out.name, "old")
            old.rmdir()  # only its unique name is needed: OUT moves there
            os.replace(self.out, old)
            os.replace(self.work, self.out)
            self.work = self.out
            self.replaces = False
            shutil.rmtree(old, ignore_errors=True)
        self.release()

    def abandon(self) -> None:
        """The run failed or was interrupted: drop its temporary work, keep what `out` held."""
        if self.replaces:
            shutil.rmtree(self.work, ignore_errors=True)
        elif self.created and not _entries(self.out):
            shutil.rmtree(self.out, ignore_errors=True)  # we made it and wrote nothing that matters
        self.release()

    def release(self) -> None:
        """Give the lock back (idempotent)."""
        if self._lock is not None:
            import fcntl

            try:
                fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            finally:
                self._lock.close()
                self._lock = None
