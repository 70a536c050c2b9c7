"""Knowledge distillation: the loss, that it trains, and DDP on 2 gloo CPU processes."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rlprune_edge.distill import DistillConfig, distill, kd_loss, teacher_logits_of


class FakeData:
    """Separable 2-class blobs as 3×8×8 images; loader(...) like DataBundle.loader."""

    def __init__(self, n: int = 256):
        g = torch.Generator().manual_seed(0)
        self.y = torch.randint(0, 2, (n,), generator=g)
        self.x = torch.randn(n, 3, 8, 8, generator=g) * 0.5 + (self.y.float() * 2 - 1).view(-1, 1, 1, 1)

    def loader(self, split, batch_size, shuffle=False, augment=False, limit=None, seed=0):
        n = len(self.y) if limit is None else min(limit, len(self.y))
        order = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(seed))[:n] if shuffle \
            else torch.arange(n)
        return [(self.x[order[i:i + batch_size]], self.y[order[i:i + batch_size]]) for i in range(0, n, batch_size)]


def tiny(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 2))


def test_kd_loss_matches_definition():
    torch.manual_seed(0)
    s, t, y = torch.randn(5, 3), torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    kl = (F.softmax(t / 2, 1) * (F.log_softmax(t / 2, 1) - F.log_softmax(s / 2, 1))).sum(1).mean()
    expect = 0.75 * 4 * kl + 0.25 * F.cross_entropy(s, y)
    assert kd_loss(s, t, y) == pytest.approx(float(expect), rel=1e-5)
    assert kd_loss(s, s, y) == pytest.approx(0.25 * float(F.cross_entropy(s, y)), rel=1e-5)
    assert kd_loss(s, t, y, alpha=0.0) == pytest.approx(float(F.cross_entropy(s, y)), rel=1e-5)


def test_distill_moves_student_toward_teacher():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add contention on a shared machine
    try:
        _distill_moves_student_toward_teacher()
    finally:
        torch.set_num_threads(threads)


def _distill_moves_student_toward_teacher():
    data = FakeData(128)
    teacher = tiny(0)
    opt = torch.optim.SGD(teacher.parameters(), lr=0.1)
    for x, y in data.loader("train", 64, shuffle=True) * 5:
        opt.zero_grad()
        F.cross_entropy(teacher(x), y).backward()
        opt.step()
    teacher.eval()
    student = tiny(1)
    x, y = data.x, data.y
    with torch.no_grad():
        before = float(kd_loss(student.eval()(x), teacher(x), y))
    distill(student, teacher, data, DistillConfig(epochs=2, lr=0.05, batch_size=32), progress=False)
    with torch.no_grad():
        after = float(kd_loss(student(x), teacher(x), y))
    assert after < before
    assert not student.training


def test_cpu_distillation_trains_channels_last_and_hands_models_back_contiguous():
    """On the CPU the KD steps run channels-last (faster convolutions); the same steps in the default
    layout give the same weights up to rounding, and both models come back in the default layout."""
    from rlprune_edge.compute import channels_last

    data, cfg = FakeData(), DistillConfig(epochs=1, batch_size=32, lr=0.05, seed=3)
    teacher, student, reference = tiny(1), tiny(2), tiny(2)
    distill(student, teacher, data, cfg, progress=False, distributed=False)
    assert all(p.is_contiguous() for m in (student, teacher) for p in m.parameters() if p.dim() == 4)
    with channels_last(reference, enabled=False):  # the reference: the default layout throughout
        ref_opt = torch.optim.SGD(reference.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        batches = data.loader("train", cfg.batch_size, shuffle=True, limit=cfg.limit, seed=cfg.seed)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=len(batches))
        reference.train()
        teacher.eval()
        for x, y in batches:
            with torch.no_grad():
                t = teacher(x)
            loss = kd_loss(reference(x), t, y, cfg.temperature, cfg.alpha)
            ref_opt.zero_grad()
            loss.backward()
            ref_opt.step()
            sched.step()
    for a, b in zip(student.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_cached_teacher_logits_train_exactly_like_the_teacher():
    """The plan search's screens reuse the teacher's logits of the shared batches: the student ends
    with the same weights as with the teacher run on every batch; logits of another loader are refused."""
    data, teacher = FakeData(96), tiny(0).eval()
    cfg = DistillConfig(epochs=1, lr=0.05, batch_size=32, limit=64, seed=3)
    plain, cached = tiny(1), tiny(1)
    distill(plain, teacher, data, cfg, progress=False, distributed=False)
    logits = teacher_logits_of(teacher, data, cfg)
    assert [t.shape for t in logits] == [(32, 2), (32, 2)]
    for a, b in zip(logits, teacher_logits_of(teacher, data, cfg, chunk=40), strict=True):  # chunks across batches
        torch.testing.assert_close(a, b)
    distill(cached, teacher, data, cfg, progress=False, distributed=False, teacher_logits=logits)
    for a, b in zip(plain.state_dict().values(), cached.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="do not match batch 2"):
        distill(tiny(1), teacher, data, DistillConfig(epochs=1, batch_size=32, limit=96, seed=3), progress=False,
                distributed=False, teacher_logits=logits)
    with pytest.raises(ValueError, match="one epoch"):
        distill(tiny(1), teacher, data, DistillConfig(epochs=2, batch_size=32, limit=64, seed=3), progress=False,
                distributed=False, teacher_logits=logits)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    teacher = tiny(0).eval()
    student = tiny(1 + rank)  # different on purpose: DDP must broadcast rank 0's weights
    distill(student, teacher, FakeData(), DistillConfig(epochs=1, lr=0.05, batch_size=16), progress=False)
    torch.save(student.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))


def test_ddp_two_gloo_processes_end_identical(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    init = tiny(1).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(not torch.equal(a[k], init[k]) for k in a if a[k].is_floating_point())


def test_channels_last_kd_is_kept_to_models_with_wide_convolutions():
    """Channels-last KD deadlocked in backward on one CPU for a model pruned to 2-4 channels per
    group: such models train in the default layout."""
    from rlprune_edge.distill import _wide_enough

    narrow = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 16, 3))
    wide = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 16, 3))
    assert not _wide_enough(narrow) and _wide_enough(wide)
