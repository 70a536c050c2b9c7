"""`rlprune-edge profiles list | show NAME | check NAME`."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("profiles", help="list, show or check device profiles",
                              description="Device profiles: list the known ones, show one, or check that its "
                                          "device and runtime work (a smoke measurement of a tiny model).")
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    sub.add_parser("list", help="known profiles")
    s = sub.add_parser("show", help="a profile's settings")
    s.add_argument("name", help="profile name or path to a .toml file")
    s.add_argument("--json", action="store_true")
    c = sub.add_parser("check", help="reach the device, report runtime versions, smoke-measure a tiny model")
    c.add_argument("name", help="profile name or path to a .toml file")
    c.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from rlprune_edge.profiles import list_profiles, load_profile, profile_dirs
    from rlprune_edge.runtimes import runtime_names

    if args.action == "list":
        profiles = list_profiles()
        width = max((len(p.name) for p in profiles), default=4)
        for p in profiles:
            where = p.connection.destination if p.is_remote else "local"
            print(f"{p.name:<{width}}  {p.runtime.name:<11} {where:<28} {p.description}")
        print(f"(searched: {', '.join(str(d) for d in profile_dirs())}; runtimes: {', '.join(runtime_names())})")
        return 0
    profile = load_profile(args.name)
    if args.action == "show":
        if args.json:
            print(json.dumps(profile.to_dict(), indent=1))
        else:
            for section, values in profile.to_dict().items():
                if isinstance(values, dict):
                    print(f"[{section}]")
                    for k, v in values.items():
                        if k != "basis":
                            print(f"  {k} = {v!r}")
                        elif v:  # where the channel multiple came from: a comment, not a profile key
                            print(f"  # {v}")
                else:
                    print(f"{section} = {values!r}")
        return 0
    result = check_profile(profile)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        rt = result.get("runtime", {})
        print(f"{profile.name}: ok - {rt.get('name', '?')} {rt.get('version', '')} "
              f"{rt.get('provider', '') or rt.get('device', '')}; tiny model median "
              f"{result.get('smoke_median_ms', float('nan')):.4f} ms")
        dev = result.get("device", {})
        if dev:
            print("device: " + ", ".join(f"{k}={v}" for k, v in dev.items() if not isinstance(v, (dict, list))))
    return 0


def check_profile(profile) -> dict:
    """The backend's self-test: the runtime's own backend locally; over ssh the board's facts, runtime
    versions and a tiny model timed there (`rlprune_edge.latency.remote.check_remote`)."""
    from rlprune_edge.latency.registry import get_backend

    return dict(get_backend(profile).self_test())
