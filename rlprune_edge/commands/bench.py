"""`rlprune-edge bench MODEL.onnx --profile NAME`: end-to-end and per-layer latency on a profile's runtime."""

from __future__ import annotations

import argparse
import json
import sys

from rlprune_edge.commands import add_own_model_flags
from rlprune_edge.errors import UserError
from rlprune_edge.limits import MAX_RUNS, check_count


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="measure a model's latency on a device profile",
                              description="Measure end-to-end (and per-layer) latency of an ONNX model on the "
                                          "runtime a profile names (runtimes that measure modules, such as torch, "
                                          "take a checkpoint or model name).")
    p.add_argument("model", help="an .onnx file (module runtimes such as torch: a checkpoint path or model name)")
    p.add_argument("--profile", default="host-cpu", help="profile name or path to a .toml file (default host-cpu)")
    p.add_argument("--runs", type=int, default=None, help="timed runs (default: the profile's)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up runs (default: the profile's)")
    p.add_argument("--per-layer", action="store_true", help="also per-layer times from the runtime's profiler")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    add_own_model_flags(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from rlprune_edge.latency.artifacts import takes_modules
    from rlprune_edge.latency.registry import get_backend
    from rlprune_edge.profiles import load_profile
    from rlprune_edge.runtimes import get_runtime

    check_count(args.runs, "--runs", 1, MAX_RUNS, "leave it out for the profile's")
    check_count(args.warmup, "--warmup", 0, MAX_RUNS, "leave it out for the profile's")
    profile = load_profile(args.profile)
    backend = get_backend(profile)
    runs = profile.measure.runs if args.runs is None else args.runs
    warmup = profile.measure.warmup if args.warmup is None else args.warmup
    target: object = args.model
    if not takes_modules(backend) and (args.model_args is not None or args.arch is not None):
        raise UserError(f"--model-args and --arch apply to module runtimes (torch profiles); profile {profile.name} "
                        "measures the ONNX file as it is, so leave them out.")
    if takes_modules(backend):
        if args.model.endswith(".onnx"):
            raise UserError(f"profile {profile.name} runs {get_runtime(profile.runtime.name).title} and measures "
                            f"modules, not ONNX files; give the checkpoint or model name {args.model} came from, "
                            "or use an ONNX Runtime profile.")
        from rlprune_edge.checkpoint import resolve_model

        module, info = resolve_model(args.model, model_args=args.model_args, arch=args.arch)
        module.input_shape = tuple(info.input_shape)
        target = module
    m = backend.measure(target, warmup=warmup, runs=runs, per_layer=args.per_layer)
    if args.json:
        doc = m.to_dict()
        doc["profile"] = profile.name
        if args.per_layer:
            doc["per_layer_sum_ms"] = m.per_layer_sum_ms
            doc["per_layer_wall_sum_ms"] = m.per_layer_wall_sum_ms
        sys.stdout.write(json.dumps(doc) + "\n")
        return 0
    print(format_table(m, profile.name, args.model))
    return 0


def format_table(m, profile_name: str, model: str) -> str:
    """Readable summary and per-layer table."""
    rt = m.runtime
    dev = m.device
    lines = [
        f"{model} on {profile_name}: {rt.get('name', '?')} {rt.get('version', '')} "
        f"{rt.get('provider', '') or rt.get('device', '')} threads={rt.get('threads', '')}".rstrip(),
        f"device: {dev.get('cpu_model', dev.get('gpu', '?'))}, {dev.get('cpu_count', '?')} cores"
        + (f", {dev['hostname']}" if dev.get("hostname") else ""),
        f"latency: median {m.median_ms:.3f} ms   p90 {m.p90_ms:.3f} ms   p99 {m.p99_ms:.3f} ms   "
        f"({len(m.samples_ms)} runs)",
    ]
    if m.per_layer:
        total = m.per_layer_sum_ms
        lines.append("")
        lines.append(f"{'layer':<42} {'op':<18} {'ms':>9} {'wall ms':>9} {'%':>6}  onnx nodes")
        wall_total = m.per_layer_wall_sum_ms
        for layer in m.per_layer:
            # the share of the run: wall time (kernel + the gap before it) adds up to the run, kernel time alone does not
            if wall_total:
                share = 100.0 * (layer.wall_ms or 0.0) / wall_total
            else:
                share = 100.0 * layer.median_ms / total if total > 0 else 0.0
            nodes = ", ".join(layer.onnx_nodes) if layer.onnx_nodes else "(inserted by the runtime)"
            wall = f"{layer.wall_ms:9.4f}" if layer.wall_ms is not None else f"{'':9}"
            lines.append(f"{layer.name[:42]:<42} {layer.op[:18]:<18} {layer.median_ms:9.4f} {wall} {share:5.1f}%  {nodes}")
        ref = m.per_layer_e2e_median_ms or m.median_ms
        wall_sum = m.per_layer_wall_sum_ms
        lines.append(f"{'sum of layers':<61} {total:9.4f} " + (f"{wall_sum:9.4f}" if wall_sum is not None else f"{'':9}")
                     + f"        (kernel sum {100.0 * total / ref:.0f}%"
                     + (f", wall sum {100.0 * wall_sum / ref:.0f}%" if wall_sum is not None else "")
                     + f" of the end-to-end median of the profiled runs, {ref:.3f} ms)")
    return "\n".join(lines)
