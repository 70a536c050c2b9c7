"""A `compress --out` directory: ours or refused, locked while a run uses it, replaced only on success.

* ``OUT`` missing or empty: the run works in it (a marker file says it is a run directory of ours).
* ``OUT`` holds files that are not a run of ours: refused (exit 2), nothing touched.
* ``OUT`` is a run of ours and ``--resume``: the run continues in it.
* ``OUT`` is a run of ours without ``--resume``: the new run works in a temporary sibling
  (``.OUT.tmp-<pid>-<random>``) and replaces ``OUT`` only when it ends normally (finished, or stopped
  as asked with ``--stop-after``); a failed or interrupted run leaves ``OUT`` as it was.
* An advisory lock (``fcntl.flock`` on ``OUT/.lock``) makes a second run on the same ``OUT`` stop at
  once with exit 2 instead of wiping the first one's live state.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rlprune_edge.errors import UserError
from rlprune_edge.fsutil import make_temp_dir, remove_stale_temps

MARKER = ".rlprune-edge-run"
LOCK = ".lock"
# what a run directory written before the marker existed holds
_LEGACY_SIGNS = ("report.json", "search/state.json", "search/plan_state.json", "search/searched.pt")


def is_run_dir(path: Path) -> bool:
    """True when `path` is a compress run directory of ours (marker, or the files an older run left)."""
    return (path / MARKER).is_file() or ((path / "search").is_dir() and any((path / s).exists() for s in _LEGACY_SIGNS))


def _entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name not in (LOCK, MARKER))


@dataclass
class RunDir:
    """Where a compress run writes (``work``) and the directory the user named (``out``)."""

    out: Path
    work: Path
    replaces: bool  # work is a temporary sibling that replaces out on success
    created: bool  # out did not exist before this run
    _lock: IO[Any] | None = field(default=None, repr=False)

    @classmethod
    def open(cls, out: str | os.PathLike, *, resume: bool, name: str = "output directory") -> RunDir:
        """Validate `out` for a run (resume or not) and lock it; raise UserError when it cannot be used.

        `name` is how messages call `out` (the command passes ``--out``)."""
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise UserError(f"{name} {out} exists and is not a directory; choose a directory path.")
        created = not out.exists()
        if not created:
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
        run = cls(out=out, work=out, replaces=False, created=created)
        run._acquire()
        remove_stale_temps(out.parent, out.name)  # what a killed earlier run left beside OUT
        if not resume and is_run_dir(out) and _entries(out):
            run.work = make_temp_dir(out.parent, out.name)
            run.replaces = True
        run._mark(run.work)
        return run

    def _acquire(self) -> None:
        import fcntl

        fh = open(self.out / LOCK, "a+")  # noqa: SIM115 - held for the run's lifetime
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
        (path / MARKER).write_text(json.dumps({"tool": "rlprune-edge compress", "pid": os.getpid(),
                                               "started": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")

    def commit(self) -> None:
        """The run ended normally: a temporary work directory replaces `out` (old contents removed)."""
        if self.replaces:
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
