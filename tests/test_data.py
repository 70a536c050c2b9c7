"""Data specs, splits, loaders, augmentation and bad inputs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from rlprune_edge.data import augment_batch, load_data
from rlprune_edge.errors import UserError


def test_fashion_mnist_limited(tiny_data):
    d = tiny_data
    assert d.num_classes == 10 and len(d.class_names) == 10
    assert len(d.train) + len(d.val) == 256 and len(d.val) == 26 and len(d.test) == 256
    assert d.train.images.dtype == torch.uint8
    x, y = next(iter(d.loader("train", 32, shuffle=True, augment=True)))
    assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    # normalised: roughly zero mean / unit std over a batch
    assert abs(float(x.mean())) < 0.5 and 0.5 < float(x.std()) < 1.5
    # single item access (Dataset protocol) matches the batch path
    xi, yi = d.test[3]
    xb, yb = next(iter(d.loader("test", 8)))
    torch.testing.assert_close(xi, xb[3])
    assert int(yi) == int(yb[3])


def test_val_split_is_seeded_and_disjoint(tiny_data):
    again = load_data("fashion-mnist", limit=256)
    assert torch.equal(again.val.labels, tiny_data.val.labels)
    other = load_data("fashion-mnist", limit=256, seed=1)
    assert not torch.equal(other.val.images, tiny_data.val.images)
    # val images are not in train
    train_set = {bytes(img.numpy()) for img in tiny_data.train.images}
    assert not any(bytes(img.numpy()) in train_set for img in tiny_data.val.images)


def test_loader_limit_shuffle_and_subset(tiny_data):
    loader = tiny_data.loader("train", 50, limit=120)
    assert len(loader) == 3 and sum(int(y.numel()) for _, y in loader) == 120
    a = torch.cat([y for _, y in tiny_data.loader("train", 64, shuffle=True, seed=3)])
    b = torch.cat([y for _, y in tiny_data.loader("train", 64, shuffle=True, seed=3)])
    assert torch.equal(a, b)
    sub = tiny_data.subset("val", 10, seed=0)
    assert len(sub) == 10
    with pytest.raises(UserError, match="split"):
        tiny_data.loader("holdout", 8)


def test_augment_crop_and_flip():
    gen = torch.Generator().manual_seed(0)
    img = torch.zeros(64, 1, 32, 32, dtype=torch.uint8)
    img[:, :, 10:20, 10:20] = 255
    out = augment_batch(img, gen)
    assert out.shape == img.shape and out.dtype == torch.uint8
    assert (out.sum(dim=(1, 2, 3)) == 255 * 100).all()  # the 10x10 square always stays inside the crop
    assert not all(torch.equal(o, img[0]) for o in out)


@pytest.mark.parametrize("spec, match", [
    ("mnist", "unknown data spec"),
    ("cifar10", "needs a directory"),
    ("fashion-mnist:", "empty directory"),
])
def test_bad_specs(spec, match):
    with pytest.raises(UserError, match=match):
        load_data(spec)


@pytest.mark.parametrize("kind", ["fashion-mnist", "cifar10", "cifar100", "imagefolder"])
def test_missing_dir_names_the_path(kind, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match="nowhere"):
        load_data(f"{kind}:{missing}")


def test_empty_dir_says_what_is_expected(tmp_path):
    with pytest.raises(UserError, match="lacks"):
        load_data(f"fashion-mnist:{tmp_path}")
    with pytest.raises(UserError, match="data_batch_1"):
        load_data(f"cifar10:{tmp_path}")
    with pytest.raises(UserError, match="train/"):
        load_data(f"imagefolder:{tmp_path}")


def _write_cifar_batch(path, n, labels_key, num_classes, rng):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    with open(path, "wb") as fh:
        pickle.dump({b"data": data, labels_key: list(rng.integers(0, num_classes, n).tolist())}, fh)


def test_cifar10_and_cifar100_pickles(tmp_path):
    rng = np.random.default_rng(0)
    c10 = tmp_path / "c10" / "cifar-10-batches-py"
    c10.mkdir(parents=True)
    for i in range(1, 6):
        _write_cifar_batch(c10 / f"data_batch_{i}", 8, b"labels", 10, rng)
    _write_cifar_batch(c10 / "test_batch", 6, b"labels", 10, rng)
    with open(c10 / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, fh)
    d = load_data(f"cifar10:{tmp_path / 'c10'}")
    assert d.num_classes == 10 and d.class_names[3] == "c3"
    assert len(d.train) + len(d.val) == 40 and len(d.test) == 6
    x, _ = next(iter(d.loader("train", 4)))
    assert x.shape == (4, 3, 32, 32)

    c100 = tmp_path / "c100"
    c100.mkdir()
    _write_cifar_batch(c100 / "train", 20, b"fine_labels", 100, rng)
    _write_cifar_batch(c100 / "test", 5, b"fine_labels", 100, rng)
    d = load_data(f"cifar100:{c100}")
    assert d.num_classes == 100 and len(d.test) == 5


def test_cifar_pickle_with_code_is_refused(tmp_path):
    d = tmp_path / "c10"
    d.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(d / name, "wb") as fh:
            pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": print}, fh)  # a global to refuse
    with pytest.raises(UserError, match="cannot read CIFAR batch"):
        load_data(f"cifar10:{d}")


def test_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    d = load_data(f"imagefolder:{tmp_path}", val_fraction=0.25)
    assert d.class_names == ["cat", "dog"] and d.num_classes == 2
    assert len(d.train) == 9 and len(d.val) == 3 and len(d.test) == 4
    assert d.train.images.shape[1:] == (3, 32, 32)
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="broken.png"):
        load_data(f"imagefolder:{tmp_path}")


def test_unreadable_imagefolder_is_user_error(tmp_path, monkeypatch):
    # Tests run as root, where chmod cannot deny reading; simulate the OS refusing the listing instead.
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "val" / "cat").mkdir(parents=True)
    real_iterdir = type(tmp_path).iterdir

    def denied(self):
        if self.name == "train":
            raise PermissionError(13, "Permission denied")
        return real_iterdir(self)

    monkeypatch.setattr(type(tmp_path), "iterdir", denied)
    with pytest.raises(UserError, match="cannot read image folder .*train.*Permission denied"):
        load_data(f"imagefolder:{tmp_path}")
