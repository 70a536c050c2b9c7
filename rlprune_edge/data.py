"""Dataset specs → whole datasets as uint8 tensors in memory, a seeded val split, fast batch loaders.

Specs: ``fashion-mnist`` (Debian's IDX .gz files in /usr/share/datasets/fashion-mnist, or $RLPRUNE_EDGE_FASHION_MNIST),
``fashion-mnist:DIR``, ``cifar10:DIR``, ``cifar100:DIR`` (the python-pickle batches),
``imagefolder:DIR`` (DIR/train/<class>/* and DIR/val/<class>/* or DIR/test/<class>/*), resized to 32x32,
or ``imagefolder@SIZE:DIR`` resized to SIZE x SIZE (e.g. ``imagefolder@128:DIR`` for a 128-pixel model).
Images become 3xHxW float tensors (32x32 but for ``@SIZE``) normalised with per-dataset mean/std;
normalisation and augmentation (random crop with zero padding of 1/8 of the side, 4 at 32, + horizontal
flip) run on whole batches in torch. Nothing is ever downloaded.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from rlprune_edge.errors import UserError
from rlprune_edge.limits import MAX_IMAGE_PIXELS, require_directory, require_regular_file

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "RLPRUNE_EDGE_FASHION_MNIST"  # another directory with the IDX files (no Debian package)


def fashion_mnist_dir() -> Path:
    """Where `fashion-mnist` (without :DIR) is read: $RLPRUNE_EDGE_FASHION_MNIST, else Debian's directory."""
    env = os.environ.get(FASHION_MNIST_ENV)
    return Path(env).expanduser() if env else FASHION_MNIST_DIR
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
# Statistics of the 32x32 zero-padded training images (computed once from the 60 000 train images).
FASHION_MNIST_MEAN = (0.2190, 0.2190, 0.2190)
FASHION_MNIST_STD = (0.3318, 0.3318, 0.3318)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
DEFAULT_IMAGE_SIZE = 32
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 1024  # imagefolder@SIZE
MEMORY_SHARE = 0.5  # a dataset may take at most this share of the machine's memory (uint8 images)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLITS = ("train", "val", "test")
MAX_IDX_VALUES = 1 << 28  # an IDX file's declared values (Fashion-MNIST's train images: 47M)
MAX_PICKLE_BYTES = 1 << 30  # a CIFAR batch file (cifar-100's train: 155 MB)


class TensorSplit(Dataset):
    """One split: uint8 images [N, C, H, W] (C = 1 or 3) and int64 labels, normalised on access."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("images must be a uint8 tensor [N, C, H, W]")
        self.images = images
        self.labels = labels.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.normalize(self.images[index : index + 1])[0], self.labels[index]

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 [B, C, H, W] → normalised float [B, 3, H, W] (grey replicated to 3 channels)."""
        x = batch.float().div_(255.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def take(self, index: torch.Tensor) -> TensorSplit:
        """A new split holding the samples at `index`."""
        return TensorSplit(self.images[index], self.labels[index], tuple(self.mean.flatten().tolist()),
                           tuple(self.std.flatten().tolist()))


def augment_batch(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding `pad`) and horizontal flip of a uint8 batch [B, C, H, W]."""
    b, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
    out = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(b, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


class BatchLoader:
    """Re-iterable batches (x float, y long) over a split; reshuffles each pass from (seed, pass)."""

    def __init__(self, split: TensorSplit, batch_size: int, shuffle: bool = False, augment: bool = False,
                 limit: int | None = None, seed: int = 0) -> None:
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}.")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.n = len(split) if limit is None else min(len(split), max(0, int(limit)))
        self.seed = seed
        self.passes = 0

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.passes)
        self.passes += 1
        total = len(self.split)
        if self.shuffle:
            order = torch.randperm(total, generator=gen)[: self.n]
        else:
            order = torch.arange(self.n)
        for start in range(0, self.n, self.batch_size):
            idx = order[start : start + self.batch_size]
            images = self.split.images[idx]
            if self.augment:
                images = augment_batch(images, gen, pad=max(1, images.shape[-1] // 8))
            yield self.split.normalize(images), self.split.labels[idx]


@dataclass
class DataBundle:
    """A dataset in memory: train/val/test splits plus what a model needs to know about it."""

    train: TensorSplit
    val: TensorSplit
    test: TensorSplit
    num_classes: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_shape: tuple[int, int, int] = (3, 32, 32)
    spec: str = "fashion-mnist"
    meta: dict = field(default_factory=dict)

    def split(self, name: str) -> TensorSplit:
        """The split called `name` (train, val or test)."""
        if name not in SPLITS:
            raise UserError(f"unknown data split {name!r}; use one of {', '.join(SPLITS)}.")
        return getattr(self, name)

    def loader(self, split: str, batch_size: int, shuffle: bool = False, augment: bool = False,
               limit: int | None = None, seed: int = 0) -> BatchLoader:
        """Batches of (normalised float x [B,3,32,32], long y) from `split`."""
        return BatchLoader(self.split(split), batch_size, shuffle, augment, limit, seed)

    def subset(self, split: str, n: int, seed: int = 0) -> TensorSplit:
        """`n` samples of `split` drawn without replacement with `seed` (all if n >= len)."""
        s = self.split(split)
        gen = torch.Generator().manual_seed(seed)
        return s.take(torch.randperm(len(s), generator=gen)[: max(0, min(n, len(s)))])


# --- readers ----------------------------------------------------------------------------------------

def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array; reads no more than its header declares (bounded)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            zero, dtype_code, ndim = struct.unpack(">HBB", fh.read(4))
            if zero != 0 or dtype_code != 0x08:
                raise ValueError("not an unsigned-byte IDX file")
            dims = struct.unpack(f">{ndim}I", fh.read(4 * ndim))
            count = int(np.prod(dims, dtype=object)) if dims else 0
            if count > MAX_IDX_VALUES:
                raise ValueError(f"its header declares {count:,} values, over the limit of {MAX_IDX_VALUES:,}")
            raw = fh.read(count + 1)
        if len(raw) != count:
            raise ValueError(f"its header declares {count:,} values but it holds {len(raw):,}")
        return np.frombuffer(raw, dtype=np.uint8).reshape(dims)
    except (OSError, ValueError, struct.error, EOFError) as exc:
        raise UserError(f"cannot read IDX file {path} ({exc}); expected the Fashion-MNIST *-idx?-ubyte[.gz] files.") from None


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if os.path.lexists(directory / name):
            return require_regular_file(directory / name, "Fashion-MNIST file", "it must be an IDX file.")
    return None


def _load_fashion_mnist(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    hint = " (install it with `sudo apt-get install dataset-fashion-mnist`)" if directory == FASHION_MNIST_DIR else ""
    require_directory(directory, "Fashion-MNIST directory", f"it must hold {', '.join(s + '.gz' for s in stems)}{hint}.")
    paths = [_find(directory, s) for s in stems]
    missing = [s for s, p in zip(stems, paths, strict=True) if p is None]
    if missing:
        raise UserError(f"Fashion-MNIST directory {directory} lacks {', '.join(m + '[.gz]' for m in missing)}.")
    xtr, ytr, xte, yte = (_read_idx(p) for p in paths)  # type: ignore[arg-type]

    def to32(x: np.ndarray) -> np.ndarray:
        if x.ndim != 3:
            raise UserError(f"Fashion-MNIST images in {directory} have shape {x.shape}; expected [N, 28, 28].")
        ph, pw = 32 - x.shape[1], 32 - x.shape[2]
        if ph < 0 or pw < 0:
            raise UserError(f"Fashion-MNIST images in {directory} are larger than 32x32.")
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
        return x[:, None]

    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise UserError(f"Fashion-MNIST files in {directory} have mismatched image and label counts.")
    return to32(xtr), ytr, to32(xte), yte


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only allows what the CIFAR batches contain (dicts, lists, numpy arrays)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def __init__(self, raw: bytes) -> None:
        super().__init__(io.BytesIO(raw), encoding="bytes")
        self.max_bytes = len(raw)  # an array's values are in the file: none may be larger than it

    def find_class(self, module: str, name: str):  # noqa: D102
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        found = super().find_class(module, name)
        if name != "_reconstruct":
            return found

        def bounded(subtype, shape, dtype):  # allocates shape x dtype at once: bound it first
            size = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
            if size > self.max_bytes:
                raise pickle.UnpicklingError(f"an array of shape {tuple(shape)} is larger than the file")
            return found(subtype, shape, dtype)

        return bounded


def _unpickle(path: Path) -> dict:
    require_regular_file(path, "CIFAR batch", "expected the python-pickle version of the dataset.")
    try:
        if path.stat().st_size > MAX_PICKLE_BYTES:
            raise ValueError(f"{path.stat().st_size:,} bytes, over the limit of {MAX_PICKLE_BYTES:,} for one batch")
        with open(path, "rb") as fh:
            obj = _CifarUnpickler(fh.read(MAX_PICKLE_BYTES + 1)).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, MemoryError) as exc:
        raise UserError(f"cannot read CIFAR batch {path} ({exc}); expected the python-pickle version of the dataset.") from None
    if not isinstance(obj, dict):
        raise UserError(f"CIFAR batch {path} does not hold a dict; expected the python-pickle version of the dataset.")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _bounded_array(value: object, dtype: type, path: Path, key: str) -> np.ndarray:
    """np.asarray(value) once its element count is known to be within the file's size (nested lists made of
    repeated references expand far beyond it: 10 levels of 10 make 10**10 elements from a few hundred bytes)."""
    limit, count, stack = path.stat().st_size, 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            count += 1
            stack.extend(item)
        else:
            count += item.size if isinstance(item, np.ndarray) else 1
        if count > limit:
            raise UserError(f"CIFAR batch {path}: its {key!r} holds more values than the file has bytes ({limit:,}), "
                            "a crafted or corrupt file; expected the python-pickle version of the dataset.")
    try:
        return np.asarray(value, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise UserError(f"CIFAR batch {path} has no valid {key!r} array ({exc}).") from None


def _cifar_images(batch: dict, path: Path) -> np.ndarray:
    if "data" not in batch:
        raise UserError(f"CIFAR batch {path} has no 'data' array; expected the python-pickle version of the dataset.")
    data = _bounded_array(batch["data"], np.uint8, path, "data")
    try:
        return data.reshape(-1, 3, 32, 32)
    except ValueError as exc:
        raise UserError(f"CIFAR batch {path} has no valid 'data' array ({exc}).") from None


def _load_cifar(directory: Path, hundred: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    kind = "cifar100" if hundred else "cifar10"
    expect = "train, test and meta" if hundred else "data_batch_1..5, test_batch and batches.meta"
    require_directory(directory, f"{kind} directory", f"it must hold the python-pickle files {expect}.")
    sub = directory / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    if sub.is_dir():
        directory = sub
    label_key = "fine_labels" if hundred else "labels"
    train_files = [directory / "train"] if hundred else [directory / f"data_batch_{i}" for i in range(1, 6)]
    test_file = directory / ("test" if hundred else "test_batch")
    meta_file = directory / ("meta" if hundred else "batches.meta")
    missing = [p.name for p in [*train_files, test_file] if not os.path.lexists(p)]
    if missing:
        raise UserError(f"{kind} directory {directory} lacks {', '.join(missing)}; it must hold the python-pickle files {expect}.")
    xs, ys = [], []
    for p in train_files:
        b = _unpickle(p)
        xs.append(_cifar_images(b, p))
        ys.append(_bounded_array(b.get(label_key, []), np.int64, p, label_key))
    tb = _unpickle(test_file)
    xte, yte = _cifar_images(tb, test_file), _bounded_array(tb.get(label_key, []), np.int64, test_file, label_key)
    num = 100 if hundred else 10
    names = [str(i) for i in range(num)]
    if meta_file.is_file():
        meta = _unpickle(meta_file)
        raw = meta.get("fine_label_names" if hundred else "label_names")
        if isinstance(raw, (list, tuple)) and len(raw) == num:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw]
    xtr, ytr = np.concatenate(xs), np.concatenate(ys)
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise UserError(f"{kind} files in {directory} have mismatched image and label counts.")
    return xtr, ytr, xte, yte, names


def _load_image_dir(split_dir: Path, classes: list[str] | None, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    try:
        return _read_image_dir(split_dir, classes, size)
    except OSError as exc:
        raise UserError(f"cannot read image folder {split_dir} ({exc.strerror or exc}); check that it is readable.") from None


def _read_image(f: Path, size: int) -> np.ndarray:
    """One image file as uint8 [size, size, 3]: only a regular file is opened, and only decoded when its
    header's size is within MAX_IMAGE_PIXELS (Image.open reads the header alone)."""
    from PIL import Image, UnidentifiedImageError

    require_regular_file(f, "image", "remove it from the image folder (only image files are read).")

    def bomb(dims: str) -> UserError:
        return UserError(f"image {f} declares {dims} in its header, over the limit of {MAX_IMAGE_PIXELS:,} pixels (a "
                         f"decompression bomb or a huge scan); resize it (images are scaled to {size}x{size} anyway) "
                         "or remove it.")

    try:
        with warnings.catch_warnings():  # PIL's DecompressionBombWarning: the sentence below says it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(f) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise bomb(f"{w}x{h} pixels")
                return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)
    except Image.DecompressionBombError:  # PIL's own limit, checked in Image.open: twice its MAX_IMAGE_PIXELS
        raise bomb(f"more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise UserError(f"cannot read image {f} ({exc}); remove or fix it.") from None


def _read_image_dir(split_dir: Path, classes: list[str] | None, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if classes is None:
        classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if not classes:
        raise UserError(f"{split_dir} has no class sub-directories; expected {split_dir}/<class>/<image files>.")
    images, labels = [], []
    for label, cls in enumerate(classes):
        cdir = split_dir / cls
        if not cdir.is_dir():
            continue
        for f in sorted(cdir.iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            images.append(_read_image(f, size).transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise UserError(f"{split_dir} has no readable images ({', '.join(sorted(IMAGE_SUFFIXES))}) in its class folders.")
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes


def _class_dirs(split_dir: Path) -> list[str]:
    try:
        return sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    except OSError as exc:
        raise UserError(f"cannot read image folder {split_dir} ({exc.strerror or exc}); check that it is readable.") from None


def _check_image_classes(directory: Path, held: list[str]) -> None:
    """train/ defines the classes: at least 2 of them, and val/ or test/ may not add any it lacks."""
    classes = _class_dirs(directory / "train")
    if len(classes) == 1:
        raise UserError(f"imagefolder {directory / 'train'} has a single class folder ({classes[0]}); a classifier "
                        "needs at least 2 classes, so add a folder of images for each other class.")
    for split in held:
        extra = [c for c in _class_dirs(directory / split) if c not in classes]
        if extra:
            raise UserError(f"imagefolder {directory / split} has class folder(s) {', '.join(extra)} that "
                            f"{directory / 'train'} lacks; add training images for them or remove them from {split}/.")


def _stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    t = torch.from_numpy(x).float().div_(255.0)
    mean = t.mean(dim=(0, 2, 3))
    std = t.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


# --- entry point ----------------------------------------------------------------------------------

def parse_spec(spec: str) -> tuple[str, Path | None, int]:
    """Split ``KIND[@SIZE][:DIR]`` into (kind, dir, image side); UserError for unknown kinds, sizes or a missing DIR."""
    head, sep, rest = spec.partition(":")
    kind, at, size_text = head.partition("@")
    kinds = ("fashion-mnist", "cifar10", "cifar100", "imagefolder")
    if kind not in kinds:
        raise UserError(f"unknown data spec {spec!r}; use fashion-mnist[:DIR], cifar10:DIR, cifar100:DIR, "
                        "imagefolder:DIR or imagefolder@SIZE:DIR.")
    size = DEFAULT_IMAGE_SIZE
    if at:
        if kind != "imagefolder":
            raise UserError(f"data spec {spec!r}: @SIZE applies to imagefolder only ({kind} images are 32x32); "
                            f"drop '@{size_text}'.")
        if not (size_text.isascii() and size_text.isdigit() and MIN_IMAGE_SIZE <= int(size_text) <= MAX_IMAGE_SIZE):
            raise UserError(f"data spec {spec!r}: the image size after '@' must be an integer in "
                            f"{MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}, got {size_text!r}; use e.g. imagefolder@128:DIR.")
        size = int(size_text)
    if sep and not rest:
        raise UserError(f"data spec {spec!r} has an empty directory after ':'; give e.g. {head}:/path/to/data.")
    if kind != "fashion-mnist" and not rest:
        raise UserError(f"data spec {spec!r} needs a directory: {head}:DIR.")
    return kind, Path(rest).expanduser() if rest else None, size


def _check_memory(directory: Path, splits: list[str], size: int) -> None:
    """Refuse (UserError) an image folder whose images at `size` would take over MEMORY_SHARE of this machine."""
    try:
        count = sum(1 for split in splits for cls in (directory / split).iterdir() if cls.is_dir()
                    for f in cls.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    except OSError:
        return  # the reader names the unreadable folder
    need = count * 3 * size * size
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return
    if need > MEMORY_SHARE * total:
        raise UserError(f"imagefolder {directory}: {count:,} images at {size}x{size} take {need / 2**30:.1f} GiB in "
                        f"memory, over half of this machine's {total / 2**30:.1f} GiB; use a smaller @SIZE or a "
                        "subset of the images.")


def load_data(spec: str = "fashion-mnist", val_fraction: float = 0.1, seed: int = 0, limit: int | None = None) -> DataBundle:
    """Load a dataset spec into memory; val is carved from train with `seed`; `limit` caps train pool and test."""
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    kind, directory, size = parse_spec(spec)
    if kind == "fashion-mnist":
        xtr, ytr, xte, yte = _load_fashion_mnist(directory or fashion_mnist_dir())
        names, mean, std = list(FASHION_MNIST_CLASSES), FASHION_MNIST_MEAN, FASHION_MNIST_STD
    elif kind in ("cifar10", "cifar100"):
        xtr, ytr, xte, yte, names = _load_cifar(directory, kind == "cifar100")  # type: ignore[arg-type]
        mean, std = (CIFAR100_MEAN, CIFAR100_STD) if kind == "cifar100" else (CIFAR10_MEAN, CIFAR10_STD)
    else:
        assert directory is not None
        require_directory(directory, "imagefolder directory", "it must hold train/ and val/ or test/ sub-directories "
                          "of class folders.")
        if not (directory / "train").is_dir():
            raise UserError(f"imagefolder directory {directory} has no train/ sub-directory of class folders.")
        held = [d for d in ("val", "test") if (directory / d).is_dir()]
        _check_image_classes(directory, held)
        if not held:
            raise UserError(f"imagefolder directory {directory} has no val/ or test/ sub-directory of class folders.")
        held_split = "test" if "test" in held else "val"
        _check_memory(directory, ["train", held_split], size)
        xtr, ytr, names = _load_image_dir(directory / "train", None, size)
        xte, yte, _ = _load_image_dir(directory / held_split, names, size)
        mean, std = _stats(xtr)

    num_classes = len(names)
    if ytr.size and (int(ytr.max()) >= num_classes or int(ytr.min()) < 0):
        raise UserError(f"labels in {spec} fall outside 0..{num_classes - 1}.")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(xtr), generator=gen)
    if limit is not None:
        perm = perm[: max(2, int(limit))]
    n_val = int(round(len(perm) * val_fraction))
    if val_fraction > 0:
        n_val = max(1, n_val)
    images = torch.from_numpy(np.ascontiguousarray(xtr))
    labels = torch.from_numpy(ytr.astype(np.int64))
    full = TensorSplit(images, labels, mean, std)
    val = full.take(perm[:n_val])
    train = full.take(perm[n_val:])
    test = TensorSplit(torch.from_numpy(np.ascontiguousarray(xte)), torch.from_numpy(yte.astype(np.int64)), mean, std)
    if limit is not None:
        test = test.take(torch.arange(min(len(test), max(1, int(limit)))))
    return DataBundle(train, val, test, num_classes, names, tuple(mean), tuple(std), (3, size, size), spec)
