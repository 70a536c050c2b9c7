"""Write an image folder (train/ and test/ of class folders, PNG) from Debian's Fashion-MNIST.

An exercise set for the bring-your-own journey at camera resolution: the 28x28 items are saved as
they are and ``imagefolder@224:DIR`` upscales them on load, so a model sees 224x224 inputs. The
images hold no more detail than Fashion-MNIST's; this tests the pipeline, not a harder task.

    python -m tools.make_imagefolder /tmp/fmnist-folder --train-per-class 1200 --test-per-class 200
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from rlprune_edge.data import FASHION_MNIST_CLASSES, _find, _read_idx, fashion_mnist_dir


def _split(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images = _read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"))
    return images, labels


def write_folder(out: Path, train_per_class: int, test_per_class: int, seed: int = 0) -> dict[str, int]:
    """The first `*_per_class` items of each class (in a seeded order) as PNG files; returns counts."""
    rng = np.random.default_rng(seed)
    counts = {}
    for split, prefix, per_class in (("train", "train", train_per_class), ("test", "t10k", test_per_class)):
        images, labels = _split(fashion_mnist_dir(), prefix)
        order = rng.permutation(len(labels))
        for cls, name in enumerate(FASHION_MNIST_CLASSES):
            folder = out / split / name.replace("/", "-").replace(" ", "_")
            folder.mkdir(parents=True, exist_ok=True)
            picked = [i for i in order if labels[i] == cls][:per_class]
            for i in picked:
                Image.fromarray(images[i]).save(folder / f"{i:05d}.png")
            counts[f"{split}/{name}"] = len(picked)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train-per-class", type=int, default=1200)
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    counts = write_folder(a.out, a.train_per_class, a.test_per_class, a.seed)
    print(f"wrote {sum(counts.values())} images to {a.out}")


if __name__ == "__main__":
    main()
