"""The `rlprune-edge` command: parses arguments, calls the API, prints results.

Each subcommand lives in `rlprune_edge/commands/<name>.py` and exposes
``register(subparsers) -> argparse.ArgumentParser`` whose parser sets ``func=run``.
Bad input raises :class:`rlprune_edge.errors.UserError`; it is printed as one sentence
on stderr with exit code 2. Anything else is a bug: exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from rlprune_edge.errors import UserError

# subcommand name -> module under rlprune_edge.commands
COMMAND_MODULES: dict[str, str] = {
    "train": "train",
    "inspect": "inspect",
    "import": "import_weights",
    "compress": "compress",
    "bench": "bench",
    "latency-check": "latency_check",
    "export": "export",
    "profiles": "profiles",
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one sentence with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rlprune-edge", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module_name in COMMAND_MODULES.values():
        importlib.import_module(f"rlprune_edge.commands.{module_name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"rlprune-edge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `rlprune-edge inspect | head`: the reader left, nothing is wrong
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"rlprune-edge {args.command}: interrupted; outputs written so far are intact.", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input -- except a file the run could not read or write
        if args.debug or os.environ.get("RLPRUNE_EDGE_DEBUG"):
            raise
        if isinstance(exc, OSError) and exc.filename is not None:  # disk full, read-only, permissions
            print(f"rlprune-edge {args.command}: error: cannot use {exc.filename}: {exc.strerror or exc}; free "
                  "space or choose a path you can write to (outputs are written to a temporary path first, so "
                  "what you had there is intact).", file=sys.stderr)
            return 2
        print(
            f"rlprune-edge {args.command}: unexpected failure: {type(exc).__name__}: {exc} "
            "(rerun with --debug for the traceback and report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
