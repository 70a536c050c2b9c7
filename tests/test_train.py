"""train_model / evaluate on a tiny Fashion-MNIST subset."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from rlprune_edge.errors import UserError
from rlprune_edge.models import build_model
from rlprune_edge.train import evaluate, train_model


def _small(data, n=96):
    """`data` with only `n` training images (keeps these tests a few seconds each)."""
    return dataclasses.replace(data, train=data.subset("train", n, seed=0))


def test_one_epoch_train_keeps_best_weights(tiny_data, single_thread):
    torch.manual_seed(0)
    model = build_model("resnet20", width=0.25)
    seen = []
    result = train_model(model, _small(tiny_data), epochs=1, batch_size=64, progress=False,
                         on_epoch_end=lambda e, s: seen.append((e, s)))
    assert result["epochs"] == 1 and result["best_epoch"] == 1 and len(result["history"]) == 1
    assert seen[0][0] == 1 and seen[0][1]["is_best"]
    h = result["history"][0]
    assert math.isfinite(h["train_loss"]) and 0.0 <= h["val_acc"] <= 1.0
    assert not model.training
    # the returned model holds the weights that scored best_val_acc
    assert evaluate(model, tiny_data.loader("val", 64)) == pytest.approx(result["best_val_acc"])


def test_training_reduces_loss(tiny_data, single_thread):
    torch.manual_seed(0)
    model = build_model("vgg11", width=0.125)
    result = train_model(model, _small(tiny_data), epochs=3, batch_size=32, lr=0.05, progress=False)
    losses = [h["train_loss"] for h in result["history"]]
    assert losses[-1] < losses[0]
    lrs = [h["lr"] for h in result["history"]]
    assert lrs[0] > lrs[1] > lrs[2] >= 0.0  # cosine decay


def test_evaluate_counts_correctly():
    class Constant(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 3)
            out[:, 2] = 1.0
            return out

    batches = [(torch.zeros(4, 1), torch.tensor([2, 2, 0, 1])), (torch.zeros(2, 1), torch.tensor([2, 0]))]
    assert evaluate(Constant(), batches) == pytest.approx(3 / 6)


def test_bad_arguments(tiny_data):
    model = build_model("resnet20", width=0.25)
    with pytest.raises(UserError, match="epochs"):
        train_model(model, tiny_data, epochs=0)
    with pytest.raises(UserError, match="learning rate"):
        train_model(model, tiny_data, epochs=1, lr=-1.0)
