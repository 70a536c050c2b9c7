#!/usr/bin/env python3
"""On-board runner: measure an ONNX model (or TensorRT engine) and print ONE JSON document.

Needs only python3, numpy and the runtime (onnxruntime, or tensorrt + pycuda/cuda-python).

    python3 runner.py measure --model M.onnx --runtime onnxruntime [--provider P] [--threads N]
        [--inter-op-threads N] [--graph-optimization all] [--precision fp16] [--warmup N] [--runs N]
        [--per-layer] [--batch B] [--shape C,H,W] [--compare OTHER.onnx ... --blocks B]
    python3 runner.py facts
    python3 runner.py build-engine --onnx M.onnx --out E.engine --precision fp16|int8
        [--calib calib.npy] [--timing-cache F] [--workspace-mb N]

Exit codes: 0 ok; 2 bad input ({"error": ...}); 3 missing runtime ({"error": "missing_runtime",
"package": ...}); 1 unexpected failure ({"error": "internal", ...}).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

try:
    from . import protocol
except ImportError:  # run as a plain script in a copied folder
    import protocol  # type: ignore[no-redef]


def collect_facts() -> dict[str, Any]:
    """Device facts from facts.py next to this file; {} if it is not there."""
    try:
        try:
            from . import facts as _facts
        except ImportError:
            import facts as _facts  # type: ignore[no-redef]
    except ImportError:
        return {}
    try:
        return dict(_facts.collect_facts())
    except Exception as exc:  # facts are best-effort; never fail a measurement over them
        return {"error": f"{type(exc).__name__}: {exc}"}


def _shape(text: str) -> list[int]:
    try:
        dims = [int(x) for x in text.replace("x", ",").split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape must be integers like 3,32,32, got {text!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"--shape must be positive integers like 3,32,32, got {text!r}")
    return dims


# --runtime NAME -> (the board module that measures it, the flags that become its options dict). The host
# side builds these flags from the runtime plug-in (rlprune_edge.runtimes: Runtime.runner_args); a
# runtime the runner does not list here runs on the host only.
MEASURERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "onnxruntime": ("ort_measure", ("provider", "threads", "inter_op_threads", "graph_optimization")),
    "tensorrt": ("trt_measure", ("precision", "workspace_mb", "timing_cache")),
}


def _measurer(runtime: str) -> Any:
    """The board module measuring `runtime` (beside this file when run as a plain script in a copied folder)."""
    name = MEASURERS[runtime][0]
    return importlib.import_module(f"{__package__}.{name}" if __package__ else name)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise protocol.BoardError("bad_arguments", message)


def build_parser() -> argparse.ArgumentParser:
    """The runner's command line."""
    p = _Parser(prog="runner.py", description="rlprune-edge on-board runner")
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser)
    m = sub.add_parser("measure")
    m.add_argument("--model", required=True)
    m.add_argument("--runtime", default="onnxruntime", choices=list(MEASURERS))
    m.add_argument("--provider", default="CPUExecutionProvider")
    m.add_argument("--threads", type=int, default=0)
    m.add_argument("--inter-op-threads", type=int, default=1)
    m.add_argument("--graph-optimization", default="all", choices=["disable", "basic", "extended", "all"])
    m.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    m.add_argument("--workspace-mb", type=int, default=1024)
    m.add_argument("--timing-cache", default="")
    m.add_argument("--warmup", type=int, default=20)
    m.add_argument("--runs", type=int, default=100)
    m.add_argument("--per-layer", action="store_true")
    m.add_argument("--batch", type=int, default=None)
    m.add_argument("--shape", type=_shape, default=None)
    m.add_argument("--compare", nargs="+", default=None, metavar="OTHER")
    m.add_argument("--blocks", type=int, default=5)
    sub.add_parser("facts")
    b = sub.add_parser("build-engine")
    b.add_argument("--onnx", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--precision", default="fp16", choices=["fp32", "fp16", "int8"])
    b.add_argument("--calib", default=None)
    b.add_argument("--timing-cache", default="")
    b.add_argument("--workspace-mb", type=int, default=1024)
    b.add_argument("--batch", type=int, default=None)
    b.add_argument("--shape", type=_shape, default=None)
    return p


def measure_args(args: argparse.Namespace) -> Any:
    """Run `measure` for parsed arguments; returns the JSON-able result."""
    if args.runs < 1 or args.warmup < 0 or args.blocks < 1:
        raise protocol.BoardError("bad_arguments", "--runs and --blocks must be >= 1 and --warmup >= 0")
    backend = _measurer(args.runtime)
    opts = {key: getattr(args, key) for key in MEASURERS[args.runtime][1]}
    facts = collect_facts()
    if args.compare:
        out = backend.compare([args.model, *args.compare], opts, blocks=args.blocks, warmup=args.warmup,
                              runs=args.runs, batch=args.batch, shape=args.shape)
        for r in out["results"]:
            r["device"] = facts
        return out
    result = backend.measure(args.model, opts, warmup=args.warmup, runs=args.runs, per_layer=args.per_layer,
                             batch=args.batch, shape=args.shape)
    result["device"] = facts
    return result


def run(argv: list[str]) -> tuple[int, Any]:
    """Execute the runner; returns (exit code, JSON document)."""
    try:
        args = build_parser().parse_args(argv)
        if args.cmd == "measure":
            return 0, measure_args(args)
        if args.cmd == "facts":
            return 0, collect_facts()
        if args.cmd == "build-engine":
            try:
                from . import trt_measure
            except ImportError:
                import trt_measure  # type: ignore[no-redef]
            return 0, trt_measure.build_engine_file(
                args.onnx, args.out, precision=args.precision, calib=args.calib, timing_cache=args.timing_cache,
                workspace_mb=args.workspace_mb, batch=args.batch, shape=args.shape)
        raise protocol.BoardError("bad_arguments", "give a command: measure, facts or build-engine")
    except protocol.BoardError as exc:
        return exc.exit_code, exc.to_json()
    except Exception as exc:
        return 1, {"error": "internal", "message": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str] | None = None) -> int:
    """Entry point: print one JSON document on stdout."""
    code, doc = run(sys.argv[1:] if argv is None else argv)
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
