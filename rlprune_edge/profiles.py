"""Device profiles: one TOML file per named target, validated on load.

A profile names the runtime and its options, the input shape, the channel multiple, the
measurement protocol, how the device is reached (local or ssh) and optional reward weights. The
``[runtime]`` keys other than ``name`` are the runtime's own: the runtime plug-in
(:mod:`rlprune_edge.runtimes`) lists them, their types, defaults and bounds, and its precisions.
``load_profile("host-cpu")`` finds a shipped profile by name; a path to a ``.toml`` file works too.
Extra profile directories can be listed in ``RLPRUNE_EDGE_PROFILES_DIR`` (os.pathsep-separated).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlprune_edge.errors import UserError
from rlprune_edge.limits import MAX_BLOCKS, MAX_PROFILE_BYTES, MAX_RUNS, MAX_TIMEOUT_S, path_problem
from rlprune_edge.runtimes import get_runtime, runtime_names
from rlprune_edge.runtimes.base import Option

CONNECTION_KINDS = ("local", "ssh")
DEFAULT_LATENCY_COEFF = 1.0  # c_L when a profile gives none


@dataclass(frozen=True)
class RuntimeSpec:
    """Which runtime runs the model, at which precision, with which of its own options.

    ``settings`` holds every option of the runtime (defaults filled in), in its declared order; read
    them as attributes (``profile.runtime.threads``) or as the dict ``options``.
    """

    name: str
    precision: str = "fp32"
    settings: tuple[tuple[str, Any], ...] = ()

    @property
    def options(self) -> dict[str, Any]:
        """The runtime's options: its defaults, overridden by ``settings``."""
        return {**_runtime_defaults(self.name), **dict(self.settings)}

    def __getattr__(self, key: str) -> Any:  # an option as an attribute: profile.runtime.threads
        if key.startswith("__") or key in ("name", "precision", "settings"):
            raise AttributeError(key)
        options = {**_runtime_defaults(self.__dict__.get("name", "")), **dict(self.__dict__.get("settings", ()))}
        if key not in options:
            raise AttributeError(f"runtime {self.__dict__.get('name')!r} has no option {key!r}")
        return options[key]

    def to_dict(self) -> dict[str, Any]:
        """``{name, precision, **options}``: the [runtime] table."""
        return {"name": self.name, "precision": self.precision, **self.options}


def _runtime_defaults(name: str) -> dict[str, Any]:
    """The options of runtime `name` at their defaults ({} for a runtime no longer registered)."""
    try:
        return get_runtime(name).defaults()
    except UserError:
        return {}


@dataclass(frozen=True)
class InputSpec:
    """Batch size and optional per-sample input shape (C, H, W); empty = the model's own."""

    batch: int = 1
    shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class PruningSpec:
    """Channel counts are rounded to this multiple; ``basis`` says where it came from when it was not
    written as a number (``channel_multiple = "auto"``, a command-line flag); never read from a file."""

    channel_multiple: int = 8
    basis: str = field(default="", metadata={"profile_key": False})


@dataclass(frozen=True)
class MeasureSpec:
    """Measurement protocol: warm-up runs, timed runs, interleaved blocks for comparisons.

    ``rounds``: windows a latency-model fit or check spreads each model's runs over (drift averages
    out). ``decision_*``: a measurement that decides (a plan's fit, a final's ratio) takes at least
    ``decision_runs`` runs over ``decision_windows`` windows, in ``decision_sessions`` sessions
    ``decision_pause_s`` apart (:func:`rlprune_edge.latency.campaign.robust_ratios`).
    """

    warmup: int = 20
    runs: int = 100
    blocks: int = 5
    rounds: int = 1
    decision_runs: int = 1200
    decision_windows: int = 5
    decision_sessions: int = 3
    decision_pause_s: float = 0.25


@dataclass(frozen=True)
class ConnectionSpec:
    """How the device is reached: locally, or over the system OpenSSH client."""

    kind: str = "local"
    destination: str = ""
    port: int = 0
    identity_file: str = ""
    ssh_options: tuple[str, ...] = ()
    work_dir: str = "~/.cache/rlprune-edge"
    python: str = "python3"
    connect_timeout_s: float = 10.0
    command_timeout_s: float = 600.0


@dataclass(frozen=True)
class RewardWeights:
    """Coefficients c_L, c_F, c_P of the reward terms (a profile's [reward] section; `--reward latency`)."""

    latency: float = DEFAULT_LATENCY_COEFF
    flops: float = 0.0
    params: float = 0.0


@dataclass(frozen=True)
class Profile:
    """A validated device profile."""

    name: str
    description: str
    runtime: RuntimeSpec
    input: InputSpec = field(default_factory=InputSpec)
    pruning: PruningSpec = field(default_factory=PruningSpec)
    measure: MeasureSpec = field(default_factory=MeasureSpec)
    connection: ConnectionSpec = field(default_factory=ConnectionSpec)
    reward: RewardWeights = field(default_factory=RewardWeights)
    path: Path | None = None

    @property
    def is_remote(self) -> bool:
        """True when the device is reached over ssh."""
        return self.connection.kind == "ssh"

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (for reports and `profiles show`)."""
        d = dataclasses.asdict(self)
        d["runtime"] = self.runtime.to_dict()
        d["path"] = str(self.path) if self.path else ""
        d["input"]["shape"] = list(self.input.shape)
        d["connection"]["ssh_options"] = list(self.connection.ssh_options)
        return d


_SECTIONS: dict[str, type] = {
    "input": InputSpec,
    "pruning": PruningSpec,
    "measure": MeasureSpec,
    "connection": ConnectionSpec,
    "reward": RewardWeights,
}

# the checks of the sections every profile has ([runtime] keys: the runtime plug-in's Options)
_ENUMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("connection", "kind"): CONNECTION_KINDS,
}

_NON_NEGATIVE = {
    ("measure", "warmup"),
    ("measure", "decision_pause_s"),
    ("connection", "port"),
}
_POSITIVE = {
    ("input", "batch"),
    ("pruning", "channel_multiple"),
    ("measure", "runs"),
    ("measure", "blocks"),
    ("measure", "rounds"),
    ("measure", "decision_runs"),
    ("measure", "decision_windows"),
    ("measure", "decision_sessions"),
    ("connection", "connect_timeout_s"),
    ("connection", "command_timeout_s"),
}
# upper bounds: a count or timeout above these is a typo or an attack, and would hang or exhaust memory
_AT_MOST: dict[tuple[str, str], int] = {
    ("input", "batch"): 65_536,
    ("pruning", "channel_multiple"): 256,
    ("measure", "warmup"): MAX_RUNS,
    ("measure", "runs"): MAX_RUNS,
    ("measure", "blocks"): MAX_BLOCKS,
    ("measure", "rounds"): MAX_BLOCKS,
    ("measure", "decision_runs"): MAX_RUNS,
    ("measure", "decision_windows"): MAX_BLOCKS,
    ("measure", "decision_sessions"): MAX_BLOCKS,
    ("measure", "decision_pause_s"): MAX_TIMEOUT_S,
    ("connection", "port"): 65_535,
    ("connection", "connect_timeout_s"): MAX_TIMEOUT_S,
    ("connection", "command_timeout_s"): MAX_TIMEOUT_S,
}


def shipped_profiles_dir() -> Path:
    """The directory of the shipped profiles: package data, ``rlprune_edge/profiles_data/``.

    The repository's top-level ``profiles/*.toml`` are symbolic links to these files.
    """
    return Path(__file__).resolve().parent / "profiles_data"


def profile_dirs() -> list[Path]:
    """Directories searched for profiles by name: RLPRUNE_EDGE_PROFILES_DIR entries first, then shipped."""
    dirs = [Path(p).expanduser() for p in os.environ.get("RLPRUNE_EDGE_PROFILES_DIR", "").split(os.pathsep) if p]
    dirs.append(shipped_profiles_dir())
    return dirs


def _profile_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in profile_dirs():
        if d.is_dir():
            for f in sorted(d.glob("*.toml")):
                found.setdefault(f.stem, f)
    return found


def _where(file: str, section: str | None, key: str) -> str:
    return f"{file}: [{section}] {key}" if section else f"{file}: {key}"


def _type_name(value: Any) -> str:
    return repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"


def _option(section: str, f: dataclasses.Field) -> Option:
    """The check of one key of a fixed section, from its field's default and the tables above."""
    if f.default is not dataclasses.MISSING:
        default = f.default
    else:
        default = f.default_factory()  # type: ignore[misc]
    key = (section, f.name)
    return Option(f.name, default, choices=_ENUMS.get(key, ()), non_negative=key in _NON_NEGATIVE,
                  positive=key in _POSITIVE, at_most=_AT_MOST.get(key), item=int if f.name == "shape" else str)


def _unknown_key(file: str, section: str, key: str, known: list[str], note: str = "") -> UserError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UserError(f"{_where(file, section, key)} is not a known key{hint}; known keys{note}: {', '.join(known)}.")


def _build_section(file: str, section: str, raw: Any, cls: type) -> Any:
    if not isinstance(raw, dict):
        raise UserError(f"{file}: [{section}] must be a table, got {_type_name(raw)}; fix the profile.")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("profile_key", True)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            raise _unknown_key(file, section, key, list(fields))
        kwargs[key] = _option(section, fields[key]).check(value, _where(file, section, key))
    return cls(**kwargs)


def _build_runtime(file: str, raw: Any) -> RuntimeSpec:
    """The [runtime] table: a registered runtime's name, a precision it runs, its own options."""
    if not isinstance(raw, dict):
        raise UserError(f"{file}: [runtime] must be a table, got {_type_name(raw)}; fix the profile.")
    names = runtime_names()
    name = Option("name", "", choices=tuple(names)).check(raw["name"], _where(file, "runtime", "name"))
    rt = get_runtime(name)
    precision = Option("precision", "", choices=rt.precisions).check(
        raw.get("precision", "fp32" if "fp32" in rt.precisions else rt.precisions[0]),
        f"{_where(file, 'runtime', 'precision')} (runtime {name})")
    settings = rt.defaults()
    for key, value in raw.items():
        opt = rt.option(key)
        if opt is not None:
            settings[key] = opt.check(value, _where(file, "runtime", key))
        elif key not in ("name", "precision"):
            elsewhere = [n for n in names if n != name and get_runtime(n).option(key) is not None]
            note = f" for runtime {name} ({key} is an option of {', '.join(elsewhere)})" if elsewhere else f" for runtime {name}"
            raise _unknown_key(file, "runtime", key, ["name", "precision", *(o.name for o in rt.options)], note)
    return RuntimeSpec(name=name, precision=precision, settings=tuple(settings.items()))


def parse_profile(data: dict[str, Any], file: str, path: Path | None = None) -> Profile:
    """Validate a parsed TOML document and build a :class:`Profile`; `file` names it in errors."""
    allowed = {"name", "description", "runtime", *_SECTIONS}
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"{file}: {key} is not a known key{hint}; known keys: {', '.join(sorted(allowed))}.")
    name = data.get("name")
    if name is None:
        raise UserError(f"{file}: name is missing; add `name = \"...\"` at the top of the profile.")
    if not isinstance(name, str) or not name:
        raise UserError(f"{file}: name must be a non-empty string, got {_type_name(name)}; fix the profile.")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise UserError(f"{file}: description must be a string, got {_type_name(description)}; fix the profile.")
    runtime_raw = data.get("runtime")
    if runtime_raw is None or (isinstance(runtime_raw, dict) and "name" not in runtime_raw):
        raise UserError(
            f"{file}: [runtime] name is missing; add a [runtime] table with name = one of {', '.join(runtime_names())}."
        )
    data, auto_multiple = _take_auto_multiple(file, data)
    built = {sec: _build_section(file, sec, data[sec], cls) for sec, cls in _SECTIONS.items() if sec in data}
    profile = Profile(name=name, description=description, path=path, runtime=_build_runtime(file, runtime_raw),
                      **built)
    if auto_multiple:
        profile = _with_host_multiple(file, profile)
    _check_numbers(file, profile)
    _check_remote_python(file, profile)
    _check_consistency(file, profile)
    return profile


def _take_auto_multiple(file: str, data: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """`data` without ``[pruning] channel_multiple = "auto"`` and whether it was there (any other string is refused)."""
    from rlprune_edge.cpu_block import AUTO

    pruning = data.get("pruning")
    if not isinstance(pruning, dict) or not isinstance(pruning.get("channel_multiple"), str):
        return data, False
    if pruning["channel_multiple"] != AUTO:
        raise UserError(f"{_where(file, 'pruning', 'channel_multiple')} must be an integer or \"{AUTO}\", "
                        f"got {pruning['channel_multiple']!r}; fix the profile.")
    return {**data, "pruning": {k: v for k, v in pruning.items() if k != "channel_multiple"}}, True


def _with_host_multiple(file: str, p: Profile) -> Profile:
    """`p` with its channel multiple set to this CPU's block: "auto" reads the CPU this process runs
    on, so only a local CPU runtime may use it."""
    from rlprune_edge.cpu_block import AUTO, host_channel_block

    if p.is_remote or not get_runtime(p.runtime.name).on_host_cpu(p.runtime):
        cpu = ", or ".join(h for n in runtime_names() if (h := get_runtime(n).cpu_hint))
        raise UserError(f"{_where(file, 'pruning', 'channel_multiple')} = \"{AUTO}\" reads this machine's CPU, so "
                        f"it needs a local CPU runtime ({cpu}); set "
                        "a number for this device (4 for ARM NEON, 8 for GPU fp16 tensor cores).")
    block = host_channel_block()
    return dataclasses.replace(p, pruning=dataclasses.replace(p.pruning, channel_multiple=block.multiple,
                                                                 basis=block.basis))


def _check_consistency(file: str, p: Profile) -> None:
    from rlprune_edge.board.protocol import MAX_INPUT_ELEMENTS

    if any(d <= 0 for d in p.input.shape):
        raise UserError(f"{file}: [input] shape must hold positive integers, got {list(p.input.shape)}.")
    if p.input.batch * math.prod(p.input.shape) > MAX_INPUT_ELEMENTS:
        raise UserError(f"{file}: [input] batch {p.input.batch} x shape {list(p.input.shape)} is over "
                        f"{MAX_INPUT_ELEMENTS:,} input values; give the shape the model takes, e.g. [3, 224, 224].")
    c = p.connection
    if c.kind == "ssh" and not c.destination:
        raise UserError(
            f"{file}: [connection] destination is required when kind = \"ssh\"; "
            "set it to an alias from ~/.ssh/config or user@host."
        )
    _check_ssh_connection(file, c)
    rt = get_runtime(p.runtime.name)
    if c.kind == "ssh" and not rt.on_board:
        board = ", ".join(n for n in runtime_names() if get_runtime(n).on_board)
        raise UserError(f'{file}: [runtime] name = "{rt.name}" runs on this machine only, so it cannot measure over '
                        f'[connection] kind = "ssh"; use kind = "local", or a runtime the board runner has ({board}).')
    rt.check(p, file)


# [reward] weights are coefficients of reward terms: a negative one would reward the slower model
_AT_LEAST_ZERO_FLOATS = {("reward", "latency"), ("reward", "flops"), ("reward", "params")}
# characters that make a shell do something other than run a program with arguments
_SHELL_METACHARACTERS = set(";&|<>`$()")


def _check_numbers(file: str, p: Profile) -> None:
    """Every float key is finite (nan/inf would poison every reward or timeout); reward weights >= 0."""
    values = [(sec, f.name, getattr(getattr(p, sec), f.name)) for sec, cls in _SECTIONS.items()
              for f in dataclasses.fields(cls)]
    for section, key, value in [*values, *(("runtime", k, v) for k, v in p.runtime.settings)]:
        if not isinstance(value, float):
            continue
        where = _where(file, section, key)
        if not math.isfinite(value):
            raise UserError(f"{where} must be a finite number, got {value!r}; fix the profile.")
        if (section, key) in _AT_LEAST_ZERO_FLOATS and value < 0:
            raise UserError(f"{where} must be >= 0, got {value!r}; fix the profile.")


def _check_remote_python(file: str, p: Profile) -> None:
    """[connection] python: plain words (a program and its arguments), never shell code."""
    where = _where(file, "connection", "python")
    text = p.connection.python
    bad = sorted({ch for ch in text if ch in _SHELL_METACHARACTERS or ord(ch) < 32 or ord(ch) == 127})
    if bad:
        raise UserError(
            f"{where} = {text!r} contains the shell character(s) {' '.join(repr(c) for c in bad)}; "
            'give only the program and its arguments, e.g. "python3" or "~/venv/bin/python -I".'
        )
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise UserError(
            f"{where} = {text!r} cannot be split into words ({exc}); balance its quotes or remove them, "
            'e.g. "python3" or "~/venv/bin/python -I".'
        ) from None
    if not words:
        raise UserError(f'{where} is empty; set it to the board\'s python (e.g. "python3").')


def _check_ssh_connection(file: str, c: ConnectionSpec) -> None:
    """[connection] destination and ssh_options: only what cannot run code or weaken host-key checks.

    The allow-list and the refusals live in :mod:`rlprune_edge.sshopts` (the ssh transport checks
    a Profile built in code the same way).
    """
    from rlprune_edge.sshopts import check_ssh_destination, check_ssh_options

    where = f"{file}: [connection]"
    if c.destination:
        check_ssh_destination(c.destination, where)
    check_ssh_options(c.ssh_options, where)


def _load_file(path: Path) -> Profile:
    """Parse and validate one profile file: only a regular file (a FIFO would block) of bounded size."""
    shown = _display(path)
    problem = path_problem(path)
    if problem is not None:
        raise UserError(f"profile file {shown} {problem}; remove it, or replace it with a regular .toml file.")
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_PROFILE_BYTES + 1)
        if len(raw) > MAX_PROFILE_BYTES:
            raise UserError(f"{shown}: over {MAX_PROFILE_BYTES // 1024} KiB, far more than a profile; give a device "
                            "profile .toml file.")
        data = tomllib.loads(raw.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{shown}: not valid TOML ({exc}); fix the syntax.") from None
    except RecursionError:
        raise UserError(f"{shown}: arrays or tables nested too deeply to be a profile; fix the file.") from None
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{shown}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            "a profile must be UTF-8 TOML, so re-save it as UTF-8."
        ) from None
    except OSError as exc:
        raise UserError(f"{shown}: cannot read the profile ({exc.strerror}).") from None
    return parse_profile(data, shown, path.resolve())


def _display(path: Path) -> str:
    """How messages name a profile file: shipped ones as ``profiles/NAME.toml``, others relative to cwd."""
    resolved = path.resolve()
    try:
        return str(Path("profiles") / resolved.relative_to(shipped_profiles_dir()))
    except ValueError:
        pass
    try:
        return str(resolved.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def load_profile(name_or_path: str | os.PathLike) -> Profile:
    """Load a profile by name (shipped or in RLPRUNE_EDGE_PROFILES_DIR) or by path to a .toml file."""
    if isinstance(name_or_path, Profile):
        return name_or_path
    text = str(name_or_path)
    p = Path(text).expanduser()
    looks_like_path = text.endswith(".toml") or os.sep in text or (os.altsep and os.altsep in text)
    if looks_like_path:
        problem = path_problem(p)
        if problem is not None:
            raise UserError(f"profile file {text} {problem}; give a profile name or a path to a .toml file.")
        return _load_file(p)
    files = _profile_files()
    if text in files:
        return _load_file(files[text])
    known = sorted(files)
    close = difflib.get_close_matches(text, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UserError(
        f"unknown profile {text!r}.{hint} Known profiles: {', '.join(known) or '(none)'}; "
        "or pass a path to your own .toml file."
    )


def list_profiles() -> list[Profile]:
    """All profiles found by name, sorted by name (invalid files raise UserError naming the file)."""
    return [_load_file(path) for _, path in sorted(_profile_files().items())]
