"""Where training-side work runs (Taylor importance, KD probes and fine-tuning, candidate scoring).

Latency is measured on the profile's own device by its backend; this module only decides where
torch *computes* (never at the same time as a measurement). ``auto`` uses the GPU when torch sees
one, else the CPU. Under torchrun each rank takes the GPU of its
local rank when there is one GPU per rank (NCCL); with fewer GPUs than ranks, or ``cpu``, all ranks
run on the CPU with gloo.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from rlprune_edge.errors import UserError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(requested: str | None, name: str = "device") -> torch.device:
    """The device of this process's compute for `requested` (auto | cpu | cuda); `name` labels errors."""
    req = (requested or "auto").lower()
    if req not in DEVICE_CHOICES:
        raise UserError(f"{name} {requested!r} is not one of {', '.join(DEVICE_CHOICES)}; e.g. {name} cpu.")
    if req == "cpu":
        return torch.device("cpu")
    if req == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{name} cuda was given, but torch sees no CUDA GPU on this machine; "
                            f"use {name} cpu (or auto).")
        return torch.device("cuda", 0)
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def local_world() -> tuple[int, int]:
    """(local rank, processes on this node) from the torchrun environment; (0, 1) alone."""
    return int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


def rank_device(requested: str | torch.device | None) -> torch.device:
    """This rank's device under torchrun: its own GPU when every local rank has one, else the CPU."""
    wanted = torch.device(requested) if isinstance(requested, torch.device) else None
    if wanted is not None and wanted.type == "cpu":
        return wanted
    if isinstance(requested, str) and requested.lower() == "cpu":
        return torch.device("cpu")
    local_rank, ranks = local_world()
    if torch.cuda.is_available() and torch.cuda.device_count() >= ranks:
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def process_group_backend(device: torch.device) -> str:
    """NCCL when each rank has its own GPU, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def module_device(model: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module without any)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


@contextmanager
def channels_last(model: torch.nn.Module, enabled: bool = True) -> Iterator[torch.nn.Module]:
    """`model` in the channels-last memory format for the block (convolutions on the CPU run 1.7-3x
    faster with channels-last inputs), back to the contiguous format afterwards."""
    if not enabled:
        yield model
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)


@torch.no_grad()
def logits_of(model: torch.nn.Module, x: torch.Tensor, batch: int = 500,
              device: str | torch.device | None = None) -> torch.Tensor:
    """Eval-mode logits (on the CPU) of `model` on `x`, in chunks of `batch` on `device` (default: the
    model's), channels-last (≈1.7× faster on CPU)."""
    dev = torch.device(device) if device is not None else module_device(model)
    was = model.training
    model.eval()
    try:
        with channels_last(model):
            outs = [model(x[i : i + batch].to(dev).contiguous(memory_format=torch.channels_last)).float().cpu()
                    for i in range(0, len(x), batch)]
    finally:
        model.train(was)
    return torch.cat(outs) if outs else torch.zeros(0)
