"""`compress` as a library call: validate → measure the dense model → latency model → reachability →
search → distil → export → measure → report.

    from rlprune_edge.pipeline import CompressConfig, compress
    result = compress(CompressConfig(model="vgg19", width=0.25, profile="host-cpu", target_latency="0.5x",
                                     out="runs/vgg"))
    result.report["measured_ratio"]

Bad input raises :class:`rlprune_edge.errors.UserError` before anything is written; options are
named as Python fields (``kd_lr``) unless the caller is the command line (``cli_names=True``:
``--kd-lr``). Progress goes to stderr (``quiet`` turns the bars off). The run directory rules
(:mod:`rlprune_edge.rundir`) keep what ``out`` held until the new run ends normally.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rlprune_edge.config import DistillConfig, EnvConfig, PlanSearchConfig, ProxyConfig, SearchConfig
from rlprune_edge.errors import TargetUnreachable, UserError
from rlprune_edge.limits import MAX_COUNT, MAX_THREADS, MAX_VARIANTS

DEFAULT_OUT = "runs/compress"
DEFAULT_TARGET = "0.5x"
# a floor model measuring above this fraction of dense is "not measurably faster" (interleaved-ratio noise is ±2-3%)
FLAT_FLOOR_RATIO = 0.95
SEARCHES = ("plan", "uniform", "paper")
REWARDS = ("latency", "accuracy", "flops", "params")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class NestedOption:
    """A command-line option that lives in one stage's config: ``--kd-images`` → ``kd.limit``."""

    dest: str  # the flag's name as a Python identifier (kd_images)
    path: str  # "section.field" in CompressConfig (kd.limit)
    lo: float | None = None  # smallest valid value (None: not a number)
    hi: float | None = None
    to_config: Callable[[Any], Any] = staticmethod(lambda v: v)  # flag value -> config value
    to_flag: Callable[[Any], Any] = staticmethod(lambda v: v)  # config value -> flag value (its default)


def _ramps_to_config(text: Any) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        return (math.nan,)  # refused by check() with the flag's sentence


# every per-stage flag of `compress`: where it lives and its valid range (the defaults are the configs')
NESTED_OPTIONS: tuple[NestedOption, ...] = (
    NestedOption("kd_epochs", "kd.epochs", 0, 10_000),
    NestedOption("kd_images", "kd.limit", 0, MAX_COUNT, lambda v: v or None, lambda v: v or 0),
    NestedOption("kd_lr", "kd.lr", 0.0, 10.0),
    NestedOption("per_round", "plan.per_round", 1, 1_000),
    NestedOption("screen_batches", "plan.screen_batches", 0, MAX_COUNT),
    NestedOption("probe_top", "plan.probe_top", 0, 1_000),
    NestedOption("probe_batches", "plan.probe_batches", 0, MAX_COUNT),
    NestedOption("final_batches", "plan.final_batches", 0, MAX_COUNT),
    NestedOption("depth_plans", "plan.depth_plans", 0, 1_000),
    NestedOption("ramps", "plan.ramps", None, None, _ramps_to_config, lambda v: ",".join(f"{x:g}" for x in v)),
    NestedOption("select_size", "proxy.select_size", 10, MAX_COUNT),
    NestedOption("confirm_size", "proxy.confirm_size", 10, MAX_COUNT),
    NestedOption("steps", "paper.max_steps", 1, MAX_COUNT),
    NestedOption("step_ratio", "paper.step_ratio", None, None),
    NestedOption("rounds", "paper.rounds", 1, 1_000),
    NestedOption("val_size", "env.val_size", 10, MAX_COUNT),
    NestedOption("step_kd_batches", "env.step_kd_batches", 0, MAX_COUNT),
)
SHARED_CANDIDATES = "candidates"
_SECTIONS = ("kd", "plan", "proxy", "paper", "env")  # --candidates: plan.candidates (plan/uniform search) or paper.candidates


@dataclass
class CompressConfig:
    """Every option of a compress run: the run's own fields, and each stage's config nested.

    The `compress` command's flags are generated from this class (:meth:`flag_defaults`,
    :meth:`from_namespace`; ``NESTED_OPTIONS`` says which flag sets which stage field), so the
    command and the Python API run the same search. Python callers set a stage option either
    through its config (``CompressConfig(kd=DistillConfig(epochs=2))``) or by its flag name
    (``CompressConfig.from_options(kd_epochs=2)``).
    """

    model: Any = None  # checkpoint path, model name or spec, or an nn.Module object; None: the shipped VGG-19 w0.25
    width: float = 1.0
    model_args: str | None = None  # k=v,... for your own model class (model "FILE.py:FACTORY")
    arch: str | None = None  # the spec of your own model class, to reload a checkpoint of it
    data: str | None = None
    profile: str = "host-cpu"
    target_latency: str | None = None  # "0.5x" or "3ms"; default 0.5x unless sparsity is given
    sparsity: float | None = None
    reward: str = "latency"
    out: str = DEFAULT_OUT
    resume: bool = False
    seed: int = 0  # every stage's seed (the nested configs' own seeds are replaced by it)
    search: str = "plan"
    min_keep: float = 0.1  # every group keeps at least this fraction of its channels
    latency_variants: int = 16
    pareto_test_size: int = 2000
    test_images: int = 0
    stop_after: int | None = None
    channel_multiple: int | None = None
    device: str = "auto"
    threads: int | None = None
    no_bundle: bool = False
    quiet: bool = False
    time_budget: float = 30.0  # minutes: KD budgets are scaled down when the estimate exceeds it (0: never)
    # the stages' configs (rlprune_edge.config); compress's own budgets where they differ from a stage's standalone default
    kd: DistillConfig = field(default_factory=lambda: DistillConfig(epochs=4))  # the final distillation
    plan: PlanSearchConfig = field(default_factory=PlanSearchConfig)  # plan and uniform search
    proxy: ProxyConfig = field(default_factory=ProxyConfig)  # the plan search's data subsets
    paper: SearchConfig = field(default_factory=SearchConfig)  # the paper's step-wise loop
    env: EnvConfig = field(default_factory=lambda: EnvConfig(step_kd_batches=100))  # the paper loop's environment
    cli_names: bool = field(default=False, repr=False)  # name options as --flags in messages

    # --- the flags, generated from the fields -----------------------------------------------------
    @classmethod
    def top_level_options(cls) -> list[str]:
        """The run's own fields that are flags (everything but the nested configs)."""
        return [f.name for f in fields(cls) if f.name not in _SECTIONS and f.name != "cli_names"]

    def get(self, path: str) -> Any:
        """A nested value by its path ('kd.limit')."""
        section, name = path.split(".")
        return getattr(getattr(self, section), name)

    @classmethod
    def flag_defaults(cls) -> dict[str, Any]:
        """Every flag's default, as the command shows and parses it (dest -> value)."""
        base = cls()
        out = {name: getattr(base, name) for name in cls.top_level_options()}
        out.update({o.dest: o.to_flag(base.get(o.path)) for o in NESTED_OPTIONS})
        out[SHARED_CANDIDATES] = None  # each search's own default
        return out

    @classmethod
    def from_options(cls, cli_names: bool = False, **options: Any) -> CompressConfig:
        """From flag-named options (``kd_epochs=2``, ``candidates=5``); unknown names are a TypeError."""
        top = {k: v for k, v in options.items() if k in cls.top_level_options()}
        config = cls(**top, cli_names=cli_names)
        by_dest = {o.dest: o for o in NESTED_OPTIONS}
        for dest, value in options.items():
            if dest in top or value is None:
                continue
            if dest == SHARED_CANDIDATES:
                section = "paper" if config.search == "paper" else "plan"
                config.set(f"{section}.candidates", value)
            elif dest in by_dest:
                option = by_dest[dest]
                config.set(option.path, option.to_config(value))
            else:
                raise TypeError(f"unknown compress option {dest!r}")
        return config

    @classmethod
    def from_namespace(cls, ns: Any) -> CompressConfig:
        """From the command's parsed flags (attributes that are not options, e.g. ``func``, ignored)."""
        known = set(cls.flag_defaults())
        return cls.from_options(cli_names=True, **{k: v for k, v in vars(ns).items() if k in known})

    def set(self, path: str, value: Any) -> None:
        """Replace one nested value ('plan.per_round')."""
        section, name = path.split(".")
        setattr(self, section, replace(getattr(self, section), **{name: value}))

    def name(self, option: str) -> str:
        """How messages name an option: ``--kd-lr`` for the command line, ``kd_lr`` (or ``kd.lr``) for Python callers."""
        if self.cli_names:
            return f"--{option.replace('_', '-')}"
        nested = {o.dest: o.path for o in NESTED_OPTIONS}
        return nested.get(option, option)

    def target(self) -> Any:
        """The target (sparsity, latency ratio or ms), validated."""
        from rlprune_edge.search.loop import Target

        if self.sparsity is not None and self.target_latency is not None:
            raise UserError(f"give {self.name('sparsity')} or {self.name('target_latency')}, not both.")
        if self.sparsity is not None:
            if not (math.isfinite(self.sparsity) and 0.0 < self.sparsity < 1.0):
                raise UserError(f"{self.name('sparsity')} {self.sparsity} is outside (0, 1); give the fraction of "
                                "prunable channels to remove, e.g. 0.6.")
            return Target.sparsity(self.sparsity)
        if self.target_latency is not None and not str(self.target_latency).strip():
            raise UserError(f"{self.name('target_latency')} is empty; give a fraction of the dense latency such as "
                            f"0.5x or a time such as 3ms (leave it out for {DEFAULT_TARGET}).")
        return Target.parse_latency(self.target_latency or DEFAULT_TARGET, name=self.name("target_latency"))

    def check(self) -> None:  # noqa: C901 - one check per option, read top to bottom
        """Refuse every out-of-range value before anything is loaded or written."""
        n = self.name
        if self.search not in SEARCHES:
            raise UserError(f"{n('search')} {self.search!r} is not one of {', '.join(SEARCHES)}.")
        if self.reward not in REWARDS:
            raise UserError(f"{n('reward')} {self.reward!r} is not one of {', '.join(REWARDS)}.")
        few, many = 1_000, MAX_COUNT  # choices per round or step; images, batches, steps
        counts = [(opt, getattr(self, opt), lo, hi) for opt, lo, hi in (
            ("latency_variants", 2, MAX_VARIANTS), ("pareto_test_size", 0, many), ("test_images", 0, many),
            ("stop_after", 1, many), ("threads", 1, MAX_THREADS))]
        counts += [(o.dest, o.to_flag(self.get(o.path)), o.lo, o.hi) for o in NESTED_OPTIONS
                   if o.lo is not None and isinstance(o.lo, int)]
        counts += [(SHARED_CANDIDATES, self.plan.candidates, 1, few), (SHARED_CANDIDATES, self.paper.candidates, 1, few)]
        for opt, value, lo, hi in counts:
            if value is not None and value < lo:
                raise UserError(f"{n(opt)} {value} is too small; give at least {lo}.")
            if value is not None and value > hi:
                raise UserError(f"{n(opt)} {value} is too large; give at most {hi:,}.")
        for opt, value, lo, hi, example in (("kd_lr", self.kd.lr, 0.0, 10.0, "0.01"), ("width", self.width, 0.0, 64.0, "0.5")):
            if value is not None and not (math.isfinite(value) and lo < value <= hi):
                raise UserError(f"{n(opt)} {value} is not a number in ({lo:g}, {hi:g}]; e.g. {n(opt)} {example}.")
        if not 0 <= self.seed < 2**31:
            raise UserError(f"{n('seed')} {self.seed} is outside [0, 2**31); give a non-negative integer, e.g. 0.")
        if not (math.isfinite(self.min_keep) and 0.0 <= self.min_keep < 1.0):
            raise UserError(f"{n('min_keep')} {self.min_keep} is outside [0, 1); give the smallest fraction of a "
                            "group's channels to keep, e.g. 0.1.")
        if not (math.isfinite(self.paper.step_ratio) and 0.0 < self.paper.step_ratio < 0.5):
            raise UserError(f"{n('step_ratio')} {self.paper.step_ratio} is outside (0, 0.5); e.g. 0.05 removes 5% of "
                            "channels per step.")
        if not all(math.isfinite(v) and -6.0 <= v <= 6.0 for v in self.plan.ramps):
            raise UserError(f"{n('ramps')} is not a comma-separated list of slopes in [-6, 6]; e.g. "
                            f"{n('ramps')}=-0.75,-1.5 (or an empty string for none).")
        if not (math.isfinite(self.time_budget) and 0 <= self.time_budget <= 100_000):
            raise UserError(f"{n('time_budget')} {self.time_budget} is not a number of minutes in [0, 100000]; "
                            f"e.g. {n('time_budget')} 30 (0 runs the full budgets however long they take).")
        if self.channel_multiple is not None and not 1 <= self.channel_multiple <= 256:
            raise UserError(f"{n('channel_multiple')} must be between 1 and 256, got {self.channel_multiple}; "
                            "e.g. 8 for ONNX Runtime on x86, 1 for no rounding.")



@dataclass
class CompressResult:
    """What a run produced: the report (None when it stopped early as asked) and where it is."""

    out: Path
    report: dict | None
    stopped: bool


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def compress(config: CompressConfig, announce: Callable[[dict | None], None] | None = None) -> CompressResult:
    """Run compress: everything is validated first (UserError, nothing written), then the run directory
    is locked and written; it replaces an earlier run in ``config.out`` only when this run ends normally.

    `announce` (torchrun) is called once with the distillation job for the other ranks.
    """
    from rlprune_edge.rundir import RunDir

    t_start = time.perf_counter()
    config.check()
    target = config.target()
    run_dir = RunDir.open(config.out, resume=config.resume, name=config.name("out"),
                          inputs=[config.model] if isinstance(config.model, str) and config.model else [])
    try:
        report = _run(config, target, run_dir, t_start, announce or (lambda _payload: None))
    except BaseException:
        run_dir.abandon()
        raise
    run_dir.commit()
    return CompressResult(out=Path(config.out), report=report, stopped=report is None)


def _load(c: CompressConfig) -> tuple[Any, ...]:
    """Profile, data, dense model (eval) and its info, model and data specs."""
    import torch

    from rlprune_edge.checkpoint import live_model, load_checkpoint, resolve_model
    from rlprune_edge.data import load_data
    from rlprune_edge.models.onnx_in import is_onnx_spec
    from rlprune_edge.profiles import load_profile
    from rlprune_edge.train import ensure_default_model

    profile = load_profile(c.profile)
    if c.channel_multiple is not None:
        profile = replace(profile, pruning=replace(profile.pruning, channel_multiple=c.channel_multiple,
                                                   basis=f"{c.name('channel_multiple')} {c.channel_multiple}"))
    if c.model is not None and not isinstance(c.model, str):
        data_spec = c.data or "fashion-mnist"
        data = load_data(data_spec, seed=c.seed)
        dense, info = live_model(c.model, data, c.name("model"), {c.name("model_args"): c.model_args,
                                                                   c.name("arch"): c.arch})
        return profile, data, dense.eval(), info, info.model, data_spec
    model_spec = c.model or str(ensure_default_model(progress=not c.quiet))
    info_data = None
    if Path(model_spec).is_file() and not is_onnx_spec(model_spec):
        _, probe = load_checkpoint(model_spec, arch=c.arch)
        info_data = (probe.meta or {}).get("data")
    data_spec = c.data or info_data or "fashion-mnist"
    data = load_data(data_spec, seed=c.seed)
    torch.manual_seed(c.seed)  # a model *name* is built with random init: make it the same on resume
    dense, info = resolve_model(model_spec, width=c.width, num_classes=data.num_classes, data=data,
                                name=c.name("model"), model_args=c.model_args, arch=c.arch)
    if tuple(info.input_shape) != tuple(data.input_shape):
        raise UserError(f"model {model_spec} takes inputs {tuple(info.input_shape)} but data {data_spec} gives "
                        f"{tuple(data.input_shape)}; use a model trained on this dataset.")
    return profile, data, dense.eval(), info, model_spec, data_spec


def _run(c: CompressConfig, target: Any, run_dir: Any, t_start: float,
         announce: Callable[[dict | None], None]) -> dict | None:
    """Load, measure, check reachability, then the stages (into run_dir.work)."""
    import torch

    from rlprune_edge.compute import resolve_device
    from rlprune_edge.estimate import fit_time
    from rlprune_edge.graph import format_groups_table, prunable_groups
    from rlprune_edge.latency.artifacts import materialize
    from rlprune_edge.latency.cache import get_or_fit
    from rlprune_edge.latency.campaign import low_ms
    from rlprune_edge.latency.registry import get_backend
    from rlprune_edge.latency.steady import SteadyGate
    from rlprune_edge.search.plan import PlanSpace, follower_groups
    from rlprune_edge.search.reward import weights_for
    from rlprune_edge.stages import CompressJob, search_distil_report

    if c.threads is not None:
        torch.set_num_threads(c.threads)
    device = resolve_device(c.device, name=c.name("device"))
    profile, data, dense, info, model_spec, data_spec = _load(c)
    torch.manual_seed(c.seed)
    example_inputs = torch.zeros(1, *info.input_shape)
    backend = get_backend(profile)
    weights = weights_for(c.reward, profile)
    groups = prunable_groups(dense, example_inputs)
    _say(f"compress: model {model_spec} ({info.model}, width {info.width}), data {data_spec}, "
         f"profile {profile.name} (channel multiple {profile.pruning.channel_multiple}"
         f"{'; ' + profile.pruning.basis if profile.pruning.basis else ''}), target {target.describe()}, reward {c.reward}")
    _say("groups:\n" + format_groups_table(groups))
    if not any(g.prunable for g in groups):
        raise UserError(f"model {model_spec} has no prunable channel group; nothing to compress.")
    space = PlanSpace.build([g.name for g in groups], [int(g.channels) for g in groups], [g.prunable for g in groups],
                            max(1, int(profile.pruning.channel_multiple)), min_fraction=c.min_keep,
                            followers=follower_groups(dense, example_inputs, groups))
    bounds = _Bounds.of(c, space, profile.name)
    full = space.as_dict(space.full_keep())
    total0 = sum(full.values())
    if target.kind == "sparsity" and target.value > bounds.max_sparsity + 1e-9:
        raise UserError(f"{c.name('sparsity')} {target.value} is not reachable: with {bounds.text} (profile "
                        f"{profile.name}) at most {bounds.max_sparsity:.2f} can be removed; lower "
                        f"{c.name('sparsity')} or {bounds.flag}.")

    scratch = Path(tempfile.mkdtemp(prefix="rlprune-compress-"))
    try:
        # what the profile's backend measures: an ONNX file, or the module itself (torch profiles)
        shape, batch = tuple(info.input_shape), int(profile.input.batch)
        dense_artifact = materialize(backend, dense, scratch / "dense.onnx", shape, batch)
        dense_m = backend.measure(dense_artifact, warmup=profile.measure.warmup, runs=profile.measure.runs)
        dense_ms = low_ms(dense_m)
        gate = SteadyGate.for_artifact(profile, dense_artifact)  # decisions read at the steady speed
        _say(f"dense latency on {profile.name}: {dense_ms:.3f} ms (20th percentile; median "
             f"{dense_m.median_ms:.3f} ms, p90 {dense_m.p90_ms:.3f} ms)")
        t_fit = time.perf_counter()
        latency_model = get_or_fit(dense, example_inputs, groups, backend, profile, n_variants=c.latency_variants,
                                   seed=c.seed)
        _say(f"latency model ready ({time.perf_counter() - t_fit:.0f}s)")
        goal_ms = target.latency_goal_ms(dense_ms)
        if goal_ms is not None:
            _check_reachable(c, target, goal_ms, dense_ms, latency_model, bounds, full,
                             lambda: materialize(backend, _floor_model(dense, example_inputs, bounds.floor, groups),
                                                 scratch / "tiny.onnx", shape, batch),
                             backend, profile, dense_artifact, model_spec, gate)
        else:
            probe_keep, _ = space.size_to_channels(space.uniform_prefs(), int(round((1 - target.value) * total0)))
            _say(f"sparsity {target.value} predicted latency "
                 f"{float(latency_model.predict(space.as_dict(probe_keep))):.3f} ms (uniform plan)")

        # --- validated: from here on we write into the run directory ----------------------------------
        state_dir = _state_dir(run_dir)
        c = fit_time(c, dense, info, data, profile, dense_ms, device, state_dir / "budget.json", t_start)
        return search_distil_report(CompressJob(
            args=c, target=target, data=data, data_spec=data_spec, dense=dense, info=info, model_spec=model_spec,
            profile=profile, backend=backend, latency_model=latency_model, weights=weights,
            dense_artifact=dense_artifact, dense_ms=dense_ms, scratch=scratch, out=run_dir.work, state_dir=state_dir,
            t_start=t_start, groups=groups, space=space, device=device, gate=gate), announce)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _state_dir(run_dir: Any) -> Path:
    """The run's search state directory, created (the first write into the run directory)."""
    if run_dir.replaces:
        _say(f"note: {run_dir.out} holds an earlier run; this run works beside it and replaces it only when "
             "it ends normally")
    state_dir = run_dir.work / "search"
    state_dir.mkdir(parents=True, exist_ok=True)
    return state_dir


@dataclass
class _Bounds:
    """The smallest model the search may build, and how messages describe its limit."""

    floor: dict[str, int]  # prunable group -> its minimum keep
    max_sparsity: float
    text: str  # "every group cut to ..."
    flag: str  # what to change to go lower

    @classmethod
    def of(cls, c: CompressConfig, space: Any, profile_name: str) -> _Bounds:
        from rlprune_edge.search.loop import max_prune_keep

        m, prunable = space.multiple, list(space.prunable)
        if c.search == "paper":
            keep = max_prune_keep(list(space.channels), prunable, m)
            text, flag = f"every group cut to {m} channels", f"pass a smaller {c.name('channel_multiple')}"
        else:
            keep = space.floor_keep()
            text = f"every group cut to max({m} channels, {c.min_keep:g} of its width)"
            flag = f"lower {c.name('min_keep')} (or pass a smaller {c.name('channel_multiple')})"
            if space.followers:
                _say("followers (keep their producer's fraction): " + ", ".join(
                    f"{space.names[f]} <- {space.names[p]}" for f, p in space.followers.items()))
        floor = space.as_dict(keep)
        full = space.as_dict(space.full_keep())
        return cls(floor, 1.0 - sum(floor.values()) / sum(full.values()), text, flag)


def _floor_model(dense: Any, example_inputs: Any, floor: dict[str, int], groups: list) -> Any:
    from rlprune_edge.pruning import prune

    return prune(dense, example_inputs, keep=floor, importance="l1", channel_multiple=1, groups=groups)


def _check_reachable(c: CompressConfig, target: Any, goal_ms: float, dense_ms: float, latency_model: Any,
                     bounds: _Bounds, full: dict[str, int], floor_artifact: Callable[[], Any], backend: Any,
                     profile: Any, dense_artifact: Any, model_spec: str, gate: Any = None) -> None:
    """Refuse a target the dense model already meets, or one the smallest allowed model cannot reach
    (predicted first; a predicted miss is measured for real before refusing)."""
    if goal_ms >= dense_ms:
        raise UserError(f"target {target.describe()} is not below the dense model's {dense_ms:.3f} ms on "
                        f"{profile.name}: there is nothing to prune for it; give a smaller "
                        f"{c.name('target_latency')} (e.g. 0.5x).")
    # on this run's scale: the cached model may have been fitted in another machine state
    scale = dense_ms / float(latency_model.predict(full))
    floor_ms = scale * float(latency_model.predict(bounds.floor))
    verdict = "reachable" if floor_ms <= goal_ms else "NOT reachable by prediction"
    _say(f"target {goal_ms:.3f} ms; smallest allowed model ({bounds.text}) "
         f"predicted {floor_ms:.3f} ms ({floor_ms / dense_ms:.2f}x) -> {verdict}")
    if floor_ms <= goal_ms:
        return
    from rlprune_edge.latency.campaign import robust_ratios

    (tiny_ratio,), window_dense_ms, _ = robust_ratios(backend, profile, dense_artifact, [floor_artifact()],
                                                             gate=gate)
    tiny_ms = tiny_ratio * window_dense_ms
    reach = tiny_ratio <= target.value if target.kind == "ratio" else tiny_ms <= goal_ms
    _say(f"smallest allowed model measured {tiny_ms:.3f} ms ({tiny_ratio:.2f}x dense)")
    if not reach and tiny_ratio > FLAT_FLOOR_RATIO:
        raise TargetUnreachable(
            f"pruning cannot make {model_spec} faster on {profile.name}: the dense model measures "
            f"{window_dense_ms:.3f} ms and the smallest allowed model ({bounds.text}) {tiny_ms:.3f} ms "
            f"({tiny_ratio:.2f}x) in the same windows, so the time is in launch/runtime overhead, not in "
            f"the layers; raise [input] batch, time CUDA graph replay (cuda_graphs = true on torch "
            f"profiles) or use another runtime (TensorRT, ONNX Runtime).", floor_ratio=float(tiny_ratio))
    if not reach:
        raise TargetUnreachable(
            f"target {target.describe()} is not reachable for {model_spec} on {profile.name}: even with "
            f"{bounds.text} it measures {tiny_ms:.3f} ms against the dense model's {window_dense_ms:.3f} ms "
            f"in the same windows ({tiny_ratio:.2f}x); choose a looser {c.name('target_latency')} or {bounds.flag}.",
            floor_ratio=float(tiny_ratio))
