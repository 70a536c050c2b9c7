"""results.json: every finished cell, saved as soon as it finishes (a rerun continues)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rlprune_edge.errors import UserError
from tools.benchmark.plan import FINISHED, RESULTS_VERSION, Settings


# --- results file ---------------------------------------------------------------------------------------
class Results:
    """benchmarks/results.json: settings, run log and one record per finished cell (saved atomically)."""

    def __init__(self, path: Path, settings: Settings, fresh: bool) -> None:
        self.path = path
        self.doc: dict[str, Any] = {"version": RESULTS_VERSION, "settings": asdict(settings), "runs": [], "cells": {}}
        if path.exists() and not fresh:
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise UserError(f"{path} is not readable JSON ({exc}); move it away or pass --fresh.") from None
            if not isinstance(old, dict) or old.get("version") != RESULTS_VERSION:
                raise UserError(f"{path} is not a version-{RESULTS_VERSION} benchmark results file; move it away "
                                "or pass --fresh.")
            diff = {k: (v, old.get("settings", {}).get(k)) for k, v in asdict(settings).items()
                    if old.get("settings", {}).get(k) != v}
            if diff:
                shown = ", ".join(f"{k}={new!r} (file has {was!r})" for k, (new, was) in sorted(diff.items()))
                raise UserError(f"{path} holds results from other settings ({shown}); rerun with the same settings "
                                "to resume, or pass --fresh to start over.")
            self.doc = old

    @property
    def cells(self) -> dict[str, Any]:
        return self.doc["cells"]

    def done(self, cell_id: str) -> bool:
        return self.cells.get(cell_id, {}).get("status") in FINISHED

    def put(self, cell_id: str, record: dict[str, Any]) -> None:
        self.cells[cell_id] = record
        self.save()

    def save(self) -> None:
        _write_text(self.path, json.dumps(self.doc, indent=1) + "\n")


def _write_text(path: Path, text: str) -> None:
    """Write atomically: temp file in the destination directory, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
