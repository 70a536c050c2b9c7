"""Torch backend: eager PyTorch on CPU, or on CUDA timed with CUDA events and synchronisation.

Takes an ``nn.Module`` (or a checkpoint path / model name resolved by the caller); an ONNX file
cannot run in eager PyTorch and is refused with a clear error.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from rlprune_edge.board import protocol
from rlprune_edge.errors import DeviceError, UserError
from rlprune_edge.latency.backend import LayerTime, Measurement
from rlprune_edge.profiles import Profile


class TorchBackend:
    """Latency of an nn.Module in eager PyTorch on the profile's device."""

    name = "torch"

    def __init__(self, profile: Profile) -> None:
        import torch

        self.profile = profile
        self.device = profile.runtime.device
        if self.device == "cuda" and not torch.cuda.is_available():
            raise DeviceError(f"profile {profile.name} needs a CUDA GPU, but torch sees none on this machine; "
                              "use a CPU profile such as host-cpu.")

    def _module(self, model: Any):
        import torch

        if isinstance(model, (str, Path)):
            raise UserError(f"profile {self.profile.name} runs eager PyTorch and cannot run the file {model}; "
                            "give a checkpoint or model name, or use an ONNX Runtime profile.")
        m = copy.deepcopy(model).eval().to(self.device)
        if self.profile.runtime.precision == "fp16":
            m = m.half()
        shape = tuple(self.profile.input.shape) or tuple(getattr(model, "input_shape", (3, 32, 32)))
        dtype = torch.float16 if self.profile.runtime.precision == "fp16" else torch.float32
        x = torch.randn(self.profile.input.batch, *shape, device=self.device, dtype=dtype)
        return m, x

    def _runner(self, m, x):
        import torch

        def run_once() -> None:
            with torch.inference_mode():
                m(x)

        return run_once

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
                torch.cuda.synchronize()
                out.append(float(start.elapsed_time(end)))
            return out

        return cuda_time

    def _runtime(self) -> dict[str, Any]:
        import torch

        threads = torch.get_num_threads() if self.device == "cpu" else 0
        return {"name": "torch", "version": torch.__version__, "provider": self.device, "threads": threads,
                "device": self.device}

    def _device_facts(self) -> dict[str, Any]:
        import torch

        from rlprune_edge.board.runner import collect_facts

        facts = collect_facts()
        if self.device == "cuda":
            facts["gpu"] = torch.cuda.get_device_name(0)
        return facts

    def measure(self, model: Any, *, warmup: int | None = None, runs: int | None = None,
                per_layer: bool = False) -> Measurement:
        """Time `runs` forward passes after `warmup`; per-layer from forward hooks on leaf modules."""
        import torch

        warmup = self.profile.measure.warmup if warmup is None else warmup
        runs = self.profile.measure.runs if runs is None else runs
        if self.profile.runtime.threads and self.device == "cpu":
            torch.set_num_threads(self.profile.runtime.threads)
        m, x = self._module(model)
        run_once = self._runner(m, x)
        for _ in range(warmup):
            run_once()
        if self.device == "cuda":
            torch.cuda.synchronize()
        stats = protocol.summarize(self._timer()(run_once, runs))
        layers = self._per_layer(m, run_once, runs) if per_layer else []
        return Measurement(per_layer=layers, device=self._device_facts(), runtime=self._runtime(), **stats)

    def _per_layer(self, m, run_once, runs: int) -> list[LayerTime]:
        import numpy as np
        import torch

        times: dict[str, list[float]] = {}
        starts: dict[str, float] = {}
        handles = []
        sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)
        for name, mod in m.named_modules():
            if list(mod.children()):
                continue

            def pre(_mod, _inp, name=name):
                sync()
                starts[name] = time.perf_counter()

            def post(_mod, _inp, _out, name=name):
                sync()
                times.setdefault(name, []).append((time.perf_counter() - starts[name]) * 1e3)

            handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
        try:
            for _ in range(max(1, runs)):
                run_once()
        finally:
            for h in handles:
                h.remove()
        mods = dict(m.named_modules())
        return [LayerTime(name=n, op=type(mods[n]).__name__, median_ms=float(np.median(t)), onnx_nodes=[])
                for n, t in times.items()]

    def compare(self, models: list[Any], *, blocks: int | None = None, warmup: int | None = None,
                runs: int | None = None) -> list[Measurement]:
        """Interleaved blocks in one window; ``ratio`` vs the first."""
        prepared = [self._module(mod) for mod in models]
        runners = [self._runner(m, x) for m, x in prepared]
        samples, ratios, _ = protocol.interleaved(
            runners, blocks=self.profile.measure.blocks if blocks is None else blocks,
            runs=self.profile.measure.runs if runs is None else runs,
            warmup=self.profile.measure.warmup if warmup is None else warmup, timer=self._timer())
        facts, rt = self._device_facts(), self._runtime()
        return [Measurement(device=facts, runtime=rt, ratio=r, **protocol.summarize(s)) for s, r in zip(samples, ratios, strict=True)]

    def self_test(self) -> dict[str, Any]:
        """Torch version and a smoke measurement of a tiny conv net."""
        from torch import nn

        tiny = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        tiny.input_shape = (3, 16, 16)
        m = self.measure(tiny, warmup=3, runs=10)
        return {"ok": True, "runtime": m.runtime, "device": m.device, "smoke_median_ms": m.median_ms}
