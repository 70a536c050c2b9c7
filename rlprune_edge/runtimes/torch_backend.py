"""PyTorch: its profile options and its backend, an ``nn.Module`` timed on the CPU or as CUDA graph replay.

It measures modules, not files (``Torch.artifact = MODULE``; ``latency.artifacts.materialize`` hands
it a copy of the model), on this machine only (the board runner has no torch). On CUDA the default is what a GPU deployment runs: the forward pass captured once as a
CUDA graph and replayed (``[runtime] cuda_graphs = true``); eager launches are launch-bound for
small CNNs at batch 1 (measured on an H100: 1.05 ms at any width) and hide what pruning does.
``cuda_graphs = false`` times eager launches.

Per-layer times come from forward hooks on every leaf module, named by the module's qualified name
(the names ``artifacts.module_node_dims`` gives the latency model). Each layer has its own time
(``median_ms``: from entering the module to leaving it) and a wall time (``wall_ms``: from the end of
the previous leaf, so functional ops between modules such as residual adds are charged to the
next leaf and the walls add up to the run). On CUDA the stamps are CUDA events, and each profiled
run is queued behind a GPU sleep kernel long enough for the CPU to enqueue the whole forward pass:
the GPU then runs the layers back to back, as in graph replay, and the events time the kernels,
not the launches.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np

from rlprune_edge.board import protocol
from rlprune_edge.errors import DeviceError, UserError
from rlprune_edge.limits import MAX_THREADS
from rlprune_edge.runtimes.backend import LayerTime, Measurement
from rlprune_edge.runtimes.base import FP32_GRAPH, MODULE, Option, Runtime

DEFAULT_INPUT_SHAPE = (3, 32, 32)
PER_LAYER_CUDA_RUNS = 50


class TorchBackend:
    """Latency of an nn.Module in PyTorch on the profile's device (CPU, or CUDA graph replay)."""

    name = "torch"

    def __init__(self, profile: Any) -> None:
        import torch

        self.profile = profile
        self.device = profile.runtime.device
        self.graphs = bool(profile.runtime.cuda_graphs) and self.device == "cuda"
        self._cycles_per_ms: float | None = None  # torch.cuda._sleep calibration
        self._event_cost: float | None = None  # GPU ms one timing event costs (per-layer correction)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise DeviceError(f"profile {profile.name} needs a CUDA GPU, but torch sees none on this machine; "
                              "use a CPU profile such as host-cpu or cpu-torch.")

    # -- preparing a model ---------------------------------------------------------------------------
    def _module(self, model: Any) -> tuple[Any, Any]:
        import torch

        if isinstance(model, (str, Path)):
            raise UserError(f"profile {self.profile.name} runs PyTorch and measures modules, so it cannot run the "
                            f"file {model}; give a checkpoint or model name, or use an ONNX Runtime profile.")
        fp16 = self.profile.runtime.precision == "fp16"
        m = copy.deepcopy(model).eval().to(self.device)
        if fp16:
            m = m.half()
        shape = tuple(self.profile.input.shape) or tuple(getattr(model, "input_shape", DEFAULT_INPUT_SHAPE))
        x = torch.randn(int(self.profile.input.batch), *shape, device=self.device,
                        dtype=torch.float16 if fp16 else torch.float32)
        return m, x

    def _runner(self, m: Any, x: Any):
        """A no-argument callable running one inference: eager, or replay of a captured CUDA graph."""
        import torch

        if not self.graphs:
            def run_once() -> None:
                with torch.inference_mode():
                    m(x)

            return run_once
        return _GraphReplay(m, x)

    def _timer(self):
        import torch

        if self.device != "cuda":
            return protocol.time_runs

        def cuda_time(run_once, runs: int) -> list[float]:
            out = []
            for _ in range(runs):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                run_once()
                end.record()
                end.synchronize()
                out.append(float(start.elapsed_time(end)))
            return out

        return cuda_time

    def _set_threads(self) -> None:
        import torch

        if self.device == "cpu" and self.profile.runtime.threads:
            torch.set_num_threads(int(self.profile.runtime.threads))

    # -- facts ------------------------------------------------------------------------------------------
    def _runtime(self) -> dict[str, Any]:
        import torch

        threads = torch.get_num_threads() if self.device == "cpu" else 0
        rt = {"name": "torch", "version": torch.__version__, "provider": self.device, "threads": threads,
              "device": self.device, "precision": self.profile.runtime.precision,
              "batch": int(self.profile.input.batch)}
        if self.device == "cuda":
            rt["cuda_graphs"] = self.graphs
            rt["cuda"] = torch.version.cuda
        return rt

    def _device_facts(self) -> dict[str, Any]:
        import torch

        from rlprune_edge.board.runner import collect_facts

        facts = collect_facts()
        if self.device == "cuda":
            facts["gpu"] = torch.cuda.get_device_name(0)
        return facts

    # -- the interface ----------------------------------------------------------------------------------
    def measure(self, model: Any, *, warmup: int | None = None, runs: int | None = None,
                per_layer: bool = False) -> Measurement:
        """Time `runs` inferences after `warmup`; per-layer times from hooks on leaf modules."""
        warmup = self.profile.measure.warmup if warmup is None else warmup
        runs = self.profile.measure.runs if runs is None else runs
        self._set_threads()
        m, x = self._module(model)
        run_once = self._runner(m, x)
        for _ in range(warmup):
            run_once()
        self._sync()
        stats = protocol.summarize(self._timer()(run_once, runs))
        layers: list[LayerTime] = []
        e2e = None
        rt = self._runtime()
        if per_layer:
            # GPU kernel times are steady: 50 profiled runs suffice and keep a latency-model fit short
            n = min(runs, PER_LAYER_CUDA_RUNS) if self.device == "cuda" else runs
            layers, e2e = self.per_layer(m, x, runs=n, warmup=min(warmup, 10))
            if self.device == "cuda":
                rt["per_layer_event_cost_ms"] = self._event_cost
        return Measurement(per_layer=layers, device=self._device_facts(), runtime=rt,
                           per_layer_e2e_median_ms=e2e, **stats)

    def compare(self, models: list[Any], *, blocks: int | None = None, warmup: int | None = None,
                runs: int | None = None) -> list[Measurement]:
        """Interleaved blocks in one window; ``ratio`` vs the first."""
        self._set_threads()
        runners = [self._runner(*self._module(mod)) for mod in models]
        samples, ratios, _ = protocol.interleaved(
            runners, blocks=self.profile.measure.blocks if blocks is None else blocks,
            runs=self.profile.measure.runs if runs is None else runs,
            warmup=self.profile.measure.warmup if warmup is None else warmup, timer=self._timer())
        facts, rt = self._device_facts(), self._runtime()
        return [Measurement(device=facts, runtime=rt, ratio=r, **protocol.summarize(s))
                for s, r in zip(samples, ratios, strict=True)]

    def self_test(self) -> dict[str, Any]:
        """Torch version and a smoke measurement of a tiny conv net."""
        from torch import nn

        tiny = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        tiny.input_shape = (3, 16, 16)
        m = self.measure(tiny, warmup=3, runs=10)
        return {"ok": True, "runtime": m.runtime, "device": m.device, "smoke_median_ms": m.median_ms}

    # -- per-layer ----------------------------------------------------------------------------------------
    def _sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def per_layer(self, m: Any, x: Any, *, runs: int, warmup: int = 3) -> tuple[list[LayerTime], float]:
        """Per leaf module: median own time and wall time over `runs` hooked runs, and the median
        end-to-end time (ms): of the same hooked runs on the CPU; on CUDA of unhooked runs interleaved
        with them, and each event's own GPU cost (measured) is taken off the layer times."""
        import torch

        from rlprune_edge.layers import leaf_modules

        cuda = self.device == "cuda"
        stamps: list[tuple[str, str, Any]] = []
        hooked = [True]
        stamp = self._stamp_fn()

        def pre(_m, _i, n):
            if hooked[0]:
                stamps.append(("pre", n, stamp()))

        def post(_m, _i, _o, n):
            if hooked[0]:
                stamps.append(("post", n, stamp()))

        handles = []
        for name, mod in leaf_modules(m):
            handles.append(mod.register_forward_pre_hook(lambda a, b, n=name: pre(a, b, n)))
            handles.append(mod.register_forward_hook(lambda a, b, c, n=name: post(a, b, c, n)))
        own: dict[str, list[float]] = {}
        wall: dict[str, list[float]] = {}
        e2e: list[float] = []
        try:
            queue_ms = self._queue_ms(m, x, stamps) if cuda else 0.0
            cost = self._stamp_cost_ms() if cuda else 0.0
            with torch.inference_mode():
                for i in range(warmup + max(1, runs)):
                    for with_hooks in ((True, False) if cuda else (True,)):
                        hooked[0] = with_hooks
                        stamps.clear()
                        if queue_ms > 0:
                            self._gpu_sleep(queue_ms)
                        t0 = stamp()
                        m(x)
                        t1 = stamp()
                        self._sync()
                        if i < warmup:
                            continue
                        if with_hooks:
                            run_own, run_wall, calls = _run_times(stamps, t0, self._elapsed)
                            for n, v in run_own.items():
                                own.setdefault(n, []).append(max(0.0, v - cost * calls[n]))
                                wall.setdefault(n, []).append(max(0.0, run_wall[n] - 2 * cost * calls[n]))
                        if with_hooks == (not cuda):
                            e2e.append(max(0.0, self._elapsed(t0, t1) - cost))
        finally:
            hooked[0] = True
            for h in handles:
                h.remove()
        mods = dict(m.named_modules())
        layers = [LayerTime(name=n, op=type(mods[n]).__name__, median_ms=float(np.median(v)), onnx_nodes=[n],
                            wall_ms=float(np.median(wall[n]))) for n, v in own.items()]
        return layers, float(np.median(e2e))

    def _stamp_fn(self):
        if self.device != "cuda":
            return time.perf_counter
        import torch

        def record():
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev

        return record

    def _elapsed(self, a: Any, b: Any) -> float:
        if self.device != "cuda":
            return (b - a) * 1e3
        return float(a.elapsed_time(b))

    def _queue_ms(self, m: Any, x: Any, stamps: list) -> float:
        """GPU sleep (ms) ahead of each profiled run: twice the CPU time to enqueue a hooked forward, + 1 ms."""
        import torch

        launch = []
        with torch.inference_mode():
            for _ in range(3):
                stamps.clear()
                t = time.perf_counter()
                m(x)
                launch.append((time.perf_counter() - t) * 1e3)
                torch.cuda.synchronize()
        stamps.clear()
        return 2.0 * float(np.median(launch)) + 1.0

    def _stamp_cost_ms(self) -> float:
        """The GPU time one timing event takes in a busy stream: 64 events back to back, median of 5."""
        import torch

        if self._event_cost is None:
            costs = []
            for _ in range(5):
                self._gpu_sleep(1.0)
                evs = []
                for _ in range(65):
                    ev = torch.cuda.Event(enable_timing=True)
                    ev.record()
                    evs.append(ev)
                torch.cuda.synchronize()
                costs.append(evs[0].elapsed_time(evs[-1]) / 64.0)
            self._event_cost = float(np.median(costs))
        return self._event_cost

    def _gpu_sleep(self, ms: float) -> None:
        """Keep the GPU busy for about `ms` (``torch.cuda._sleep`` spins for a number of clock cycles)."""
        import torch

        sleep = getattr(torch.cuda, "_sleep", None)
        if sleep is None:
            return
        if self._cycles_per_ms is None:
            sleep(100_000)  # the first launch loads the kernel: not part of the calibration
            torch.cuda.synchronize()
            rates = []
            for _ in range(3):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                sleep(2_000_000)
                end.record()
                end.synchronize()
                rates.append(2_000_000 / max(float(start.elapsed_time(end)), 1e-3))
            self._cycles_per_ms = float(np.median(rates))
        sleep(int(ms * self._cycles_per_ms))


class _GraphReplay:
    """One inference as the replay of a CUDA graph captured from `m(x)`; holds the module and the input
    (the graph reads their memory: they must outlive it)."""

    def __init__(self, m: Any, x: Any) -> None:
        import torch

        self.m, self.x = m, x
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(3):  # warm up (cuDNN autotuning, lazy init) outside the capture
                m(x)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.out = m(x)
        torch.cuda.synchronize()

    def __call__(self) -> None:
        self.graph.replay()


def _run_times(stamps: list[tuple[str, str, Any]], t0: Any, elapsed
               ) -> tuple[dict[str, float], dict[str, float], dict[str, int]]:
    """One hooked run's stamps -> per-module own time, wall time (ms; repeated calls add up) and calls."""
    own: dict[str, float] = {}
    wall: dict[str, float] = {}
    calls: dict[str, int] = {}
    open_at: dict[str, Any] = {}
    last_end = t0
    for kind, name, t in stamps:
        if kind == "pre":
            open_at[name] = t
            continue
        start = open_at.pop(name, None)
        if start is None:
            continue
        own[name] = own.get(name, 0.0) + elapsed(start, t)
        wall[name] = wall.get(name, 0.0) + elapsed(last_end, t)
        calls[name] = calls.get(name, 0) + 1
        last_end = t
    return own, wall, calls


class Torch(Runtime):
    """PyTorch on this machine: eager on the CPU, CUDA graph replay (or eager launches) on a GPU."""

    name = "torch"
    label = "PyTorch"
    options = (
        Option("device", "cpu", choices=("cpu", "cuda")),
        Option("threads", 0, non_negative=True, at_most=MAX_THREADS, help="intra-op threads on the CPU, 0 = torch's"),
        Option("cuda_graphs", True, help="on cuda: time CUDA graph replay (false: eager launches)"),
    )
    precisions = ("fp32", "fp16")
    artifact = MODULE
    bundles = {"fp32": FP32_GRAPH}
    cpu_hint = "torch on cpu"

    def on_host_cpu(self, runtime: Any) -> bool:
        return runtime.device == "cpu"

    def backend(self, profile: Any) -> TorchBackend:
        return TorchBackend(profile)


RUNTIME = Torch()
