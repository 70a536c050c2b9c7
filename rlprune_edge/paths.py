"""Where rlprune-edge keeps files between runs: one cache root that every cache location derives from."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "RLPRUNE_EDGE_CACHE"


def cache_root() -> Path:
    """The user cache directory of rlprune-edge.

    Environment variables, first set (and non-empty) wins:

    * ``RLPRUNE_EDGE_CACHE``: the directory itself (``~`` is expanded);
    * ``XDG_CACHE_HOME``: the user's cache base, used as ``$XDG_CACHE_HOME/rlprune-edge``;
    * neither: ``~/.cache/rlprune-edge``.

    Below it: ``latency-models/`` (fitted latency models, :mod:`rlprune_edge.latency.cache`),
    ``remote/`` (measurements from boards, :mod:`rlprune_edge.latency.remote_cache`) and the
    default checkpoint when the install does not ship it (:mod:`rlprune_edge.checkpoint`).
    ``RLPRUNE_EDGE_NO_REMOTE_CACHE=1`` makes remote measurements ignore (but still write) ``remote/``.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "rlprune-edge"
