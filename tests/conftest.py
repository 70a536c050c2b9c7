"""Shared fixtures: small and generic (tiny data, tiny models, checkpoints in tmp dirs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from rlprune_edge.data import fashion_mnist_dir

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: one thread each, no oversubscription
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # for the subprocesses tests start
    torch.set_num_threads(1)

needs_fashion_mnist = pytest.mark.skipif(
    not (fashion_mnist_dir() / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed (make test installs it when root)",
)


@pytest.fixture(scope="session")
def tiny_data():
    """Fashion-MNIST limited to 256 train-pool images (230 train / 26 val) and 256 test images."""
    if not (fashion_mnist_dir() / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    from rlprune_edge.data import load_data

    return load_data("fashion-mnist", limit=256)


@pytest.fixture
def tiny_vgg():
    """A randomly initialised VGG-11 at width 0.125 (8..64 channels) and its ModelInfo."""
    from rlprune_edge.checkpoint import resolve_model

    torch.manual_seed(0)
    return resolve_model("vgg11", width=0.125)


@pytest.fixture
def tiny_checkpoint(tmp_path: Path, tiny_vgg) -> Path:
    """Path of a saved checkpoint of `tiny_vgg`."""
    from rlprune_edge.checkpoint import save_checkpoint

    model, info = tiny_vgg
    return save_checkpoint(tmp_path / "tiny_vgg11.pt", model, info)


@pytest.fixture
def single_thread():
    """Run torch on one thread for the test (≈4x faster for tiny models when the 2 cores are oversubscribed)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
