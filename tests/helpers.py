"""Small helpers shared by test modules (not fixtures)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def load_tool(name: str) -> ModuleType:
    """The script tools/NAME.py as a module (tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"rlprune_tool_{name}", TOOLS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def randomize_bn(model, seed: int):
    """Non-trivial BatchNorm statistics/affine so that a wrongly sliced BN shows in the outputs (in place)."""
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return model


def tiny_profile(name: str, runtime: str = 'name = "onnxruntime"\nprovider = "CPUExecutionProvider"') -> str:
    """A test profile's TOML: `runtime` lines, one thread, channel multiple 2, a few short runs."""
    return (f'name = "{name}"\ndescription = "test profile: few runs"\n[runtime]\n{runtime}\nthreads = 1\n'
            "[pruning]\nchannel_multiple = 2\n[measure]\nwarmup = 2\nruns = 8\nblocks = 2\n")

