"""Knowledge distillation from the original (teacher) model into the pruned (student) model.

loss = α·T²·KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − α)·CE(student, y), T = 2, α = 0.75
(RL-Pruner's choice). SGD with momentum and a cosine schedule. When launched under ``torchrun``
(RANK / WORLD_SIZE in the environment) it runs data-parallel with torch.distributed (gloo on CPU,
nccl on GPU) and DistributedDataParallel; every rank draws the same shuffled global batch and
trains on its own slice of it (DistributedSampler-like sharding), so the effective batch is
``batch_size × world_size`` and all ranks end with identical weights.

Also runnable as ``torchrun --nproc_per_node N -m rlprune_edge.distill STUDENT.pt TEACHER.pt OUT.pt``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import os
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rlprune_edge.config import DistillConfig  # noqa: F401 - re-exported, defined with every default in one place


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.75,
) -> torch.Tensor:
    """α·T²·KL(teacher ‖ student at temperature T) + (1 − α)·CE(student, targets)."""
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * t * t * kl + (1.0 - alpha) * F.cross_entropy(student_logits, targets)


def dist_env() -> tuple[int, int]:
    """(rank, world_size) from the torchrun environment; (0, 1) when not distributed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return (rank, world) if world > 1 else (0, 1)


def ensure_process_group(device: torch.device | None = None) -> bool:
    """Initialise torch.distributed from the environment if needed (NCCL when this rank computes on its
    own GPU, gloo otherwise); True if this call created it."""
    import torch.distributed as dist

    from rlprune_edge.compute import process_group_backend

    _, world = dist_env()
    if world <= 1 or dist.is_initialized():
        return False
    dist.init_process_group(backend=process_group_backend(device or torch.device("cpu")))
    return True


def _num_batches(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def _place(student: nn.Module, teacher: nn.Module, device: torch.device, world: int) -> tuple[nn.Module, nn.Module]:
    """Student moved to `device` (wrapped in DDP under torchrun); the teacher copied there if needed."""
    from rlprune_edge.compute import module_device

    if module_device(teacher) != device:
        teacher = copy.deepcopy(teacher).to(device)
    teacher.eval()
    student.to(device)
    if world <= 1:
        return teacher, student
    from torch.nn.parallel import DistributedDataParallel

    return teacher, DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)


def _kd_epoch(module: nn.Module, teacher: nn.Module, batches: Iterable, opt: Any, sched: Any, config: DistillConfig,
              device: torch.device, rank_world: tuple[int, int], bar: Any,
              fmt: torch.memory_format = torch.contiguous_format) -> tuple[float, int]:
    """One pass of KD over `batches` (under DDP each rank takes its slice of the global batch);
    returns (summed loss, samples). A batch may carry the teacher's logits as a third element (then
    the teacher is not run on it). Image batches are passed in memory format `fmt`."""
    rank, world = rank_world
    total, n = 0.0, 0
    for batch in batches:
        x, y = batch[0], batch[1]
        if world > 1:  # this rank's slice of the shared global batch
            x, y = x[rank::world], y[rank::world]
            if len(x) == 0:
                continue
        x, y = x.to(device), y.to(device)
        if x.dim() == 4:
            x = x.contiguous(memory_format=fmt)
        if len(batch) > 2:
            t_logits = batch[2].to(device)
        else:
            with torch.no_grad():
                t_logits = teacher(x)
        loss = kd_loss(module(x), t_logits, y, config.temperature, config.alpha)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += float(loss.detach()) * len(x)
        n += len(x)
        if bar is not None:
            bar.set_postfix(loss=f"{total / max(1, n):.3f}")
    return total, n


def _end_epoch(bar: Any, summary: str) -> None:
    """Close an epoch's progress: in a log its summary line is the epoch's one line; a terminal bar erases
    itself, so the epoch's result is printed after it."""
    from rlprune_edge.progress import is_terminal

    bar.close()
    if is_terminal():
        print(f"{summary} ({bar.format_dict.get('elapsed', 0.0):.0f}s)", file=sys.stderr)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Any,
    config: DistillConfig | None = None,
    progress: bool = True,
    split: str = "train",
    distributed: bool = True,
    device: str | torch.device | None = None,
    teacher_logits: Sequence[torch.Tensor] | None = None,
) -> nn.Module:
    """Fine-tune `student` in place from `teacher` on `data.loader(split, batch_size, shuffle=...,
    augment=..., limit=..., seed=...)` batches of (x, y); returns `student`.

    Under torchrun the process group is created if missing (and destroyed again); ``distributed=False``
    trains in this process alone. `device` is where this process computes (default: where `student`
    is); under torchrun a rank takes its own GPU only when every local rank has one (NCCL), else the
    CPU (gloo), see :mod:`rlprune_edge.compute`. The teacher is copied there if it lives elsewhere;
    the student is trained there and returned on the device it came from. `teacher_logits` (one
    epoch, one process): the teacher's logits of each batch (:func:`teacher_logits_of`), reused."""
    import torch.distributed as dist

    from rlprune_edge.compute import module_device, rank_device

    config = config or DistillConfig()
    if config.epochs <= 0:
        return student
    rank, world = dist_env() if distributed else (0, 1)
    if teacher_logits is not None and (world > 1 or config.epochs != 1):
        raise ValueError("cached teacher logits are for one epoch in one process")
    home = module_device(student)
    device = rank_device(device) if world > 1 else (torch.device(device) if device is not None else home)
    created = ensure_process_group(device) if world > 1 else False
    teacher, module = _place(student, teacher, device, world)
    opt = torch.optim.SGD(student.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    global_bs = config.batch_size * world
    first = data.loader(split, batch_size=global_bs, shuffle=True, augment=config.augment, limit=config.limit, seed=config.seed)
    per_epoch = _num_batches(first) or 1
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, config.epochs * per_epoch))
    show = progress and rank == 0
    formats, fmt = _layout(student, teacher, device, world)
    try:
        for epoch in range(config.epochs):
            loader = first if epoch == 0 else data.loader(
                split, batch_size=global_bs, shuffle=True, augment=config.augment,
                limit=config.limit, seed=config.seed + epoch,
            )
            module.train()
            batches: Iterable = loader
            bar = None
            if show:
                from rlprune_edge.progress import progress_bar

                bar = progress_bar(loader, total=_num_batches(loader), desc=f"distill {epoch + 1}/{config.epochs}",
                                   unit="batch")
                batches = bar
            if teacher_logits is not None:
                batches = _with_logits(batches, teacher_logits)
            total, n = _kd_epoch(module, teacher, batches, opt, sched, config, device, (rank, world), bar, fmt)
            if bar is not None:
                _end_epoch(bar, f"distill epoch {epoch + 1}/{config.epochs}: loss {total / max(1, n):.4f}")
        if world > 1:  # running BN stats were updated locally by the last forward: take rank 0's
            with torch.no_grad():
                for buf in student.buffers():
                    dist.broadcast(buf, src=0)
    finally:
        formats.close()  # back to the contiguous layout
        if world > 1:
            # the DDP wrapper's reducer holds the process group: release it before the group goes, or
            # its C++ threads may be torn down after the group ("terminate called without an active
            # exception", SIGABRT, seen in about one full test run in three)
            teacher = module = None
            gc.collect()
        if created:
            dist.destroy_process_group()
    student.to(home)
    student.eval()
    return student


def _layout(student: nn.Module, teacher: nn.Module, device: torch.device,
            world: int) -> tuple[contextlib.ExitStack, torch.memory_format]:
    """Both models channels-last on the CPU (closing the stack restores them) and the batches' format.

    Channels-last convolutions on the CPU: KD steps measured here 1.2x (VGG-19 w0.25), 1.3x (ResNet-20)
    and 1.7x (MobileNetV3-Large w0.5) faster; one process only (DDP buckets assume the default layout)."""
    from rlprune_edge.compute import channels_last

    formats = contextlib.ExitStack()
    if world > 1 or device.type != "cpu" or not _wide_enough(student):
        return formats, torch.contiguous_format
    for m in {id(student): student, id(teacher): teacher}.values():
        formats.enter_context(channels_last(m))
    return formats, torch.channels_last


def _wide_enough(model: nn.Module, min_channels: int = 8) -> bool:
    """Whether every convolution of `model` has at least `min_channels` outputs: channels-last KD
    is kept to such models. On an AMD EPYC with AVX2 only (2026-12-06, torch 2.14.1) the backward
    pass of a channels-last ResNet-20 at width 0.25 pruned to 2–4 channels per group never
    returned (the test suite's tiny depth-plan run; contiguous it took 32 s), while the benchmark
    models (≥ 16 channels) trained channels-last there without trouble."""
    return all(m.out_channels >= min_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def _with_logits(batches: Iterable, logits: Sequence[torch.Tensor]) -> Iterable:
    """(x, y, teacher logits) for each (x, y) of `batches`; the counts and batch sizes must match."""
    i = -1
    for i, (x, y) in enumerate(batches):
        if i >= len(logits) or len(logits[i]) != len(x):
            raise ValueError(f"cached teacher logits do not match batch {i} of the loader")
        yield x, y, logits[i]
    if i + 1 != len(logits):
        raise ValueError(f"cached teacher logits for {len(logits)} batches, the loader gave {i + 1}")


def teacher_logits_of(teacher: nn.Module, data: Any, config: DistillConfig, split: str = "train",
                      device: str | torch.device | None = None, chunk: int = 512) -> list[torch.Tensor]:
    """The teacher's eval-mode logits (CPU) of every batch that `distill` with `config` draws in its
    first epoch (same loader, same seed), for `distill(..., teacher_logits=...)`.

    The batches are drawn as `distill` draws them, then run through the teacher in chunks of
    `chunk` images, channels-last (:func:`rlprune_edge.compute.logits_of`; on the CPU the shipped
    VGG-19's pass took 3.9 s instead of 4.9 s for 100 batches of 64), and split back per batch."""
    from rlprune_edge.compute import logits_of

    images = [x for x, _ in data.loader(split, batch_size=config.batch_size, shuffle=True, augment=config.augment,
                                        limit=config.limit, seed=config.seed)]
    if not images:
        return []
    return list(logits_of(teacher, torch.cat(images), chunk, device=device).split([len(b) for b in images]))


def _main(argv: list[str] | None = None) -> int:
    """`torchrun -m rlprune_edge.distill STUDENT TEACHER OUT [--data SPEC] [--epochs N]`."""
    from rlprune_edge.checkpoint import load_checkpoint, save_checkpoint
    from rlprune_edge.data import load_data

    p = argparse.ArgumentParser(prog="python -m rlprune_edge.distill")
    p.add_argument("student")
    p.add_argument("teacher")
    p.add_argument("out")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=DistillConfig.lr)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", default=None, help="the spec of your own model class or ONNX file both checkpoints "
                   "were saved from (a checkpoint never imports code by itself)")
    args = p.parse_args(argv)
    student, info = load_checkpoint(args.student, arch=args.arch)
    teacher, _ = load_checkpoint(args.teacher, arch=args.arch)
    data = load_data(args.data, seed=args.seed)
    start = time.perf_counter()
    distill(student, teacher, data, DistillConfig(epochs=args.epochs, lr=args.lr, limit=args.limit, seed=args.seed))
    rank, _ = dist_env()
    if rank == 0:
        save_checkpoint(args.out, copy.deepcopy(student), info)
        print(f"distilled in {time.perf_counter() - start:.0f}s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
