"""Data sets by name: float images in [0,1], integer labels, and train / val / test splits.

Each registered loader returns the official train and test parts; ``load_dataset`` holds out a
validation split from train with a fixed seed, so checkpoint selection never sees the test
split. Images are kept as uint8 where the source is 8-bit (four times less memory, and the whole
set can stay on the GPU); ``Split.batch`` turns them into float [0,1] on the fly.

Training-batch augmentation (``Augment``: random crop from a padded image, horizontal flip) is
a data option: ``load_dataset(..., augment=...)`` attaches it to the train split, and
``Split.batches`` applies it to every shuffled batch on the batch's device, drawing the crop
offsets and flips from the same CPU generator as the shuffle, so a run resumed from its saved
data generator sees bitwise the same batches. Val and test are never augmented.

Sources, in order: ``--data-dir``; a system copy (Debian's ``dataset-fashion-mnist`` puts
Fashion-MNIST in /usr/share/datasets/fashion-mnist); a download through torchvision (when
``download`` is on). A data set that cannot be found is a ``DataError`` that says how to get it.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from harness.core.errors import DataError
from harness.core.registry import Registry

DATASETS: Registry[Callable[..., "RawData"]] = Registry("datasets", modules=["harness.data"])

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def default_cache_dir() -> Path:
    return Path(os.environ.get("HARNESS_DATA", Path.home() / ".cache" / "harness" / "data"))


@dataclass
class RawData:
    """What a loader returns: the official train and test parts plus metadata."""

    train_x: np.ndarray  # uint8 [N,C,H,W] (or float32 in [0,1])
    train_y: np.ndarray  # int64 [N]
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    mean: Tuple[float, ...]  # per-channel, in [0,1] units: used by the model's Normalize layer
    std: Tuple[float, ...]
    source: str
    classes: Optional[List[str]] = None


@dataclass(frozen=True)
class Augment:
    """Random crop (from a ``padding``-pixel ``pad_mode`` border back to the image size) and
    horizontal flip with probability 1/2, per example, applied to a whole batch on its device.

    References: torchvision ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()`` (zero
    padding; locuslab/fast_adversarial CIFAR10/utils.py:L23-28, yaodongyu/TRADES
    train_trades_cifar10.py:L59-63), TensorFlow's ``resize_image_with_crop_or_pad`` to 36 +
    ``random_crop`` + ``random_flip_left_right`` (zero padding of 2 pixels a side;
    MadryLab/cifar10_challenge cifar10_input.py:L96-102), and Rice et al.'s ``pad(..., mode='reflect')`` + ``Crop`` +
    ``FlipLR`` (locuslab/robust_overfitting utils.py:L26-50). Every crop offset in
    [0, 2 * padding] is equally likely, as in all of them.

    Randomness: per batch, ``2 * n`` offsets and ``n`` flips drawn from ``generator`` (CPU), so
    the batch is a function of the generator's state alone, whatever the device.
    """

    crop_padding: int = 4
    pad_mode: str = "zeros"  # zeros | reflect
    flip: bool = True

    @classmethod
    def of(cls, kind: Optional[str], crop_padding: int = 4, pad_mode: str = "zeros") -> Optional["Augment"]:
        """The augmentation ``data.augment`` names (none, crop, crop-flip; "auto" is settled per
        data set when the config is resolved), or None."""
        if kind in ("none", None, "auto"):
            return None
        return cls(int(crop_padding), str(pad_mode), kind == "crop-flip")

    def describe(self) -> Dict[str, Any]:
        return {
            "crop_padding": self.crop_padding,
            "pad_mode": self.pad_mode,
            "flip": self.flip,
            "where": "training batches, on the device",
            "randomness": "the run's data generator",
        }

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        n, _, h, w = x.shape
        p = self.crop_padding
        if p > 0:
            offsets = torch.randint(0, 2 * p + 1, (2, n), generator=generator).to(x.device)
            mode = "constant" if self.pad_mode == "zeros" else "reflect"
            padded = torch.nn.functional.pad(x, (p, p, p, p), mode=mode)
            rows = (offsets[0].view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
            cols = (offsets[1].view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
            idx = torch.arange(n, device=x.device).view(n, 1, 1, 1)
            chan = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
            x = padded[idx, chan, rows, cols]
        if self.flip:
            flip = (torch.rand(n, generator=generator) < 0.5).to(x.device).view(n, 1, 1, 1)
            x = torch.where(flip, x.flip(3), x)
        return x


@dataclass
class Split:
    """Images ``x`` (uint8 0..255 or float [0,1]) and labels ``y`` (int64), possibly on a device.
    ``augment``: applied by ``batches`` to every shuffled batch (the train split's, if any)."""

    x: torch.Tensor
    y: torch.Tensor
    augment: Optional[Augment] = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.x.to(device), self.y.to(device), self.augment)

    def images(self, idx: Any = slice(None)) -> torch.Tensor:
        """Float images in [0,1] for ``idx``: always a new tensor, never a view of the split."""
        x = self.x[idx]
        if x.dtype == torch.uint8:
            return x.float().div_(255.0)
        # float data sliced with a range is a view; without a copy, in-place work on a batch
        # (augmentation, an attack's x.add_) would rewrite the data set itself
        return x.to(torch.float32, copy=True)

    def first(self, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` examples in their fixed order (evaluation subsets are declared this way)."""
        n = min(n, len(self))
        return self.images(slice(0, n)), self.y[:n]

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: Optional[torch.Generator] = None,
        drop_last: bool = False,
    ) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x in [0,1], y) on the split's device. Shuffling uses ``generator`` (CPU); a
        shuffled split with ``augment`` is augmented batch by batch from the same generator."""
        n = len(self)
        augment = self.augment if shuffle else None
        if shuffle:
            order = torch.randperm(n, generator=generator).to(self.y.device)
        else:
            order = None
        stop = n - (n % batch_size) if drop_last else n
        for start in range(0, stop, batch_size):
            if order is None:
                idx: Any = slice(start, min(start + batch_size, n))
            else:
                idx = order[start : start + batch_size]
            x = self.images(idx)
            yield (augment(x, generator) if augment is not None else x), self.y[idx]

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        n = len(self)
        return n // batch_size if drop_last else -(-n // batch_size)


@dataclass
class DataBundle:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    shape: Tuple[int, int, int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    source: str
    split_seed: int
    classes: Optional[List[str]] = None
    split: str = "random"

    def to(self, device: torch.device | str) -> "DataBundle":
        return DataBundle(
            self.name,
            self.train.to(device),
            self.val.to(device),
            self.test.to(device),
            self.num_classes,
            self.shape,
            self.mean,
            self.std,
            self.source,
            self.split_seed,
            self.classes,
            self.split,
        )

    def info(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "shape": list(self.shape),
            "num_classes": self.num_classes,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "split_seed": self.split_seed,
            "split": self.split,
            "val_held_out_from": "train",
            "augment": self.train.augment.describe() if self.train.augment is not None else None,
        }


def load_dataset(
    name: str,
    *,
    data_dir: Optional[str | Path] = None,
    val_size: Optional[int] = None,
    split_seed: int = 0,
    download: bool = True,
    device: torch.device | str = "cpu",
    split: str = "random",
    augment: Optional[Augment] = None,
) -> DataBundle:
    """Load ``name`` and hold ``val_size`` examples out of train with ``split_seed``
    (``None``: min(5000, 10% of train), so small data sets keep most of their training data).

    ``split``: "random" (a ``numpy.random.default_rng(split_seed)`` permutation), "numpy-legacy"
    (``np.random.seed(split_seed); np.random.permutation(n)``, the first ``val_size`` are val:
    with seed 0 and 1,000 this is exactly Rice et al.'s CIFAR-10 split, locuslab/robust_overfitting
    generate_validation.py:L5-9,L23-26) or "first" (the first ``val_size`` examples of the official
    train file, as TensorFlow's ``read_data_sets(validation_size=5000)`` that Madry et al.'s MNIST
    code uses). ``augment`` goes to the train split."""
    loader = DATASETS.get(name)
    raw = loader(data_dir=Path(data_dir) if data_dir else None, download=download)
    _check_raw(name, raw)
    n_train = raw.train_x.shape[0]
    if val_size is None:
        val_size = min(5000, n_train // 10)
    if val_size >= n_train:
        raise DataError(f"{name}: val_size {val_size} leaves no training data (train has {n_train} examples)")
    if split == "random":
        perm = np.random.default_rng(split_seed).permutation(n_train)
    elif split == "numpy-legacy":
        perm = np.random.RandomState(split_seed).permutation(n_train)
    elif split == "first":
        perm = np.arange(n_train)
    else:
        raise DataError(f"unknown val split {split!r}; use random, numpy-legacy or first")
    val_idx, train_idx = np.sort(perm[:val_size]), np.sort(perm[val_size:])

    def part(x: np.ndarray, y: np.ndarray, aug: Optional[Augment] = None) -> Split:
        return Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)).long(), aug)

    bundle = DataBundle(
        name=name,
        train=part(raw.train_x[train_idx], raw.train_y[train_idx], augment),
        val=part(raw.train_x[val_idx], raw.train_y[val_idx]),
        test=part(raw.test_x, raw.test_y),
        num_classes=raw.num_classes,
        shape=tuple(raw.train_x.shape[1:]),  # type: ignore[arg-type]
        mean=tuple(raw.mean),
        std=tuple(raw.std),
        source=raw.source,
        split_seed=split_seed,
        classes=raw.classes,
        split=split,
    )
    return bundle.to(device)


def _check_raw(name: str, raw: RawData) -> None:
    for part, x, y in (("train", raw.train_x, raw.train_y), ("test", raw.test_x, raw.test_y)):
        if x.ndim != 4:
            raise DataError(f"{name}: {part} images must be [N,C,H,W], got shape {x.shape}")
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{name}: {part} has {x.shape[0]} images but {y.shape[0]} labels")
        if x.dtype != np.uint8:
            lo, hi = float(x.min()), float(x.max())
            if lo < 0.0 or hi > 1.0:
                raise DataError(
                    f"{name}: {part} images range over [{lo:.3g}, {hi:.3g}]; inputs must be in [0,1] "
                    "(normalisation belongs inside the model)"
                )
        if y.min() < 0 or y.max() >= raw.num_classes:
            raise DataError(f"{name}: {part} labels outside 0..{raw.num_classes - 1}")


# -- file formats ------------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST / Fashion-MNIST format), gzip-compressed or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:  # type: ignore[operator]
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(
            f"{path}: cannot read ({e}); the file is corrupt or truncated, delete it and fetch it again"
        ) from None
    if len(data) < 4:
        raise DataError(f"{path}: not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path}: IDX header is cut short; the file is truncated, delete it and fetch it again")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    expected = int(np.prod(dims)) if dims else 0
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != expected:
        raise DataError(
            f"{path}: IDX header says {expected} values but the file holds {body.size}; the file is truncated"
        )
    return body.reshape(dims).copy()  # frombuffer is read-only


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as a gzip IDX file: used by tests to build data in the official format."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def _find_idx_dir(candidates: Sequence[Path]) -> Optional[Path]:
    for d in candidates:
        if all((d / (f + ".gz")).exists() or (d / f).exists() for f in IDX_FILES.values()):
            return d
    return None


def _read_idx_dir(d: Path) -> Dict[str, np.ndarray]:
    out = {}
    for key, stem in IDX_FILES.items():
        p = d / (stem + ".gz")
        out[key] = read_idx(p if p.exists() else d / stem)
    return out


# size: the facts of one IDX data set (names, folders, statistics, classes, where to get it)
def _idx_dataset(
    name: str,
    tv_name: str,
    data_dir: Optional[Path],
    download: bool,
    system_dirs: Sequence[Path],
    mean: float,
    std: float,
    classes: List[str],
    how_to_get: str,
) -> RawData:
    candidates: List[Path] = []
    roots = [data_dir] if data_dir else []
    roots += list(system_dirs)
    cache = default_cache_dir()
    roots.append(cache)
    for r in roots:
        candidates += [r, r / tv_name / "raw", r / name]
    found = _find_idx_dir(candidates)
    if found is None and download:
        root = data_dir or cache
        try:
            import torchvision

            getattr(torchvision.datasets, tv_name)(str(root), train=True, download=True)
            getattr(torchvision.datasets, tv_name)(str(root), train=False, download=True)
        except Exception as e:  # noqa: BLE001 - any download failure ends in the same advice
            raise DataError(
                f"{name} not found locally and the download failed "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); {how_to_get}"
            ) from None
        found = _find_idx_dir([root / tv_name / "raw"])
    if found is None:
        looked = ", ".join(str(c) for c in roots)
        raise DataError(f"{name} not found (looked in {looked}); {how_to_get}")
    a = _read_idx_dir(found)
    for part in ("train", "test"):
        if a[f"{part}_x"].shape[0] != a[f"{part}_y"].shape[0]:
            raise DataError(f"{found}: {part} images and labels differ in count")
    return RawData(
        train_x=a["train_x"][:, None],
        train_y=a["train_y"].astype(np.int64),
        test_x=a["test_x"][:, None],
        test_y=a["test_y"].astype(np.int64),
        num_classes=10,
        mean=(mean,),
        std=(std,),
        source=str(found),
        classes=classes,
    )


FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


@DATASETS.register(
    "fashion-mnist", summary="Fashion-MNIST, 28x28 grayscale, 10 classes (default; Debian package or download)"
)
def fashion_mnist(data_dir: Optional[Path] = None, download: bool = True) -> RawData:
    return _idx_dataset(
        "fashion-mnist",
        "FashionMNIST",
        data_dir,
        download,
        [SYSTEM_FASHION_MNIST],
        0.2860,
        0.3530,
        FASHION_CLASSES,
        "install Debian's package (sudo apt-get install dataset-fashion-mnist), or pass --data-dir DIR holding "
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz, "
        "or run once with network access to download it",
    )


@DATASETS.register("mnist", summary="MNIST, 28x28 grayscale, 10 classes (--data-dir or download)")
def mnist(data_dir: Optional[Path] = None, download: bool = True) -> RawData:
    return _idx_dataset(
        "mnist",
        "MNIST",
        data_dir,
        download,
        [Path("/usr/share/datasets/mnist")],
        0.1307,
        0.3081,
        [str(i) for i in range(10)],
        "pass --data-dir DIR holding the four MNIST IDX files (train-images-idx3-ubyte.gz, ...), "
        "or run once with network access to download it",
    )


class _SafeUnpickler(pickle.Unpickler):
    """CIFAR's python batches are pickles; a data file must never run code. Only the types those
    files need (dicts, lists, bytes and numpy arrays) may be constructed."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("builtins", "list"),
        ("builtins", "dict"),
        ("_codecs", "encode"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to load {module}.{name} from a data file: data sets are data, never code")


CIFAR_IMAGE = (3, 32, 32)


def read_cifar_batch(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch -> (uint8 [N,3,32,32], int64 labels). Works for CIFAR-10 and -100.

    The file must hold what the official batches hold: a dict with ``data``, a uint8 array of N
    rows of 3*32*32 values (or N images of 3x32x32), and ``labels`` (CIFAR-10) or
    ``fine_labels`` (CIFAR-100), N whole numbers. Anything else is a ``DataError`` naming the
    file and what was expected; nothing is reshaped or cast by guesswork."""
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated or foreign files
        raise DataError(
            f"{path}: not a readable CIFAR batch ({type(e).__name__}: {e}); delete it and fetch it again"
        ) from None
    expected = "a CIFAR python batch: a dict with 'data' (uint8, N x 3072) and 'labels' or 'fine_labels' (N integers)"
    if not isinstance(d, dict):
        raise DataError(f"{path}: holds a {type(d).__name__}, expected {expected}")
    keys = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in keys:
        raise DataError(
            f"{path}: no 'data' key (keys: {', '.join(map(str, sorted(keys, key=str)))}); expected {expected}"
        )
    data = keys["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        what = f"a {data.dtype} array" if isinstance(data, np.ndarray) else f"a {type(data).__name__}"
        raise DataError(f"{path}: 'data' is {what}; expected a uint8 array of N x 3072 pixel values")
    size = int(np.prod(CIFAR_IMAGE))
    if not (data.ndim == 2 and data.shape[1] == size) and not (data.ndim == 4 and data.shape[1:] == CIFAR_IMAGE):
        raise DataError(f"{path}: 'data' has shape {data.shape}; expected N x {size} (N images of 3x32x32)")
    labels = keys.get("labels", keys.get("fine_labels"))
    if labels is None:
        raise DataError(f"{path}: no labels (no 'labels' or 'fine_labels' key); expected {expected}")
    try:
        y = np.asarray(labels)
    except Exception:  # noqa: BLE001 - ragged or foreign objects
        y = np.asarray([None])
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"{path}: labels are {type(labels).__name__} of {y.dtype} with shape {y.shape}; expected a list of "
            "N whole numbers"
        )
    if y.shape[0] != data.shape[0]:
        raise DataError(f"{path}: {data.shape[0]} images but {y.shape[0]} labels")
    return data.reshape(-1, *CIFAR_IMAGE), y.astype(np.int64)


def write_cifar_batch(path: Path, x: np.ndarray, y: np.ndarray, *, fine: bool = False) -> None:
    """Write a CIFAR-format python batch: used by tests to build data in the official format."""
    d = {
        "data": np.ascontiguousarray(x, dtype=np.uint8).reshape(x.shape[0], -1),
        ("fine_labels" if fine else "labels"): list(map(int, y)),
    }
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


# size: the facts of one CIFAR data set (folder, file names, classes, statistics)
def _cifar(
    name: str,
    folder: str,
    train_files: List[str],
    test_file: str,
    tv_name: str,
    num_classes: int,
    mean: Tuple[float, ...],
    std: Tuple[float, ...],
    data_dir: Optional[Path],
    download: bool,
) -> RawData:
    roots = ([data_dir] if data_dir else []) + [default_cache_dir()]
    found = None
    for r in roots:
        for d in (r / folder, r):
            if all((d / f).exists() for f in train_files + [test_file]):
                found = d
                break
        if found:
            break
    how = (
        f"pass --data-dir DIR holding {folder}/ "
        "(the python version from https://www.cs.toronto.edu/~kriz/cifar.html), "
        "or run once with network access to download it"
    )
    if found is None and download:
        root = data_dir or default_cache_dir()
        try:
            import torchvision

            getattr(torchvision.datasets, tv_name)(str(root), train=True, download=True)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{name} not found locally and the download failed ({type(e).__name__}); {how}") from None
        found = root / folder
    if found is None:
        raise DataError(f"{name} not found (looked in {', '.join(str(r) for r in roots)}); {how}")
    parts = [read_cifar_batch(found / f) for f in train_files]
    tx, ty = read_cifar_batch(found / test_file)
    return RawData(
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        tx,
        ty,
        num_classes,
        mean,
        std,
        str(found),
    )


@DATASETS.register("cifar10", summary="CIFAR-10, 32x32 RGB, 10 classes (--data-dir or download)")
def cifar10(data_dir: Optional[Path] = None, download: bool = True) -> RawData:
    return _cifar(
        "cifar10",
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "CIFAR10",
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2471, 0.2435, 0.2616),
        data_dir,
        download,
    )


@DATASETS.register("cifar100", summary="CIFAR-100, 32x32 RGB, 100 classes (--data-dir or download)")
def cifar100(data_dir: Optional[Path] = None, download: bool = True) -> RawData:
    return _cifar(
        "cifar100",
        "cifar-100-python",
        ["train"],
        "test",
        "CIFAR100",
        100,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        data_dir,
        download,
    )


@DATASETS.register("svhn", summary="SVHN cropped digits, 32x32 RGB, 10 classes (--data-dir or download)")
def svhn(data_dir: Optional[Path] = None, download: bool = True) -> RawData:
    roots = ([data_dir] if data_dir else []) + [default_cache_dir()]
    files = ("train_32x32.mat", "test_32x32.mat")
    found = next((d for r in roots for d in (r, r / "svhn") if all((d / f).exists() for f in files)), None)
    how = (
        "pass --data-dir DIR holding train_32x32.mat and test_32x32.mat (http://ufldl.stanford.edu/housenumbers/), "
        "or run once with network access to download them"
    )
    if found is None and download:
        root = data_dir or default_cache_dir()
        try:
            import torchvision

            for split in ("train", "test"):
                torchvision.datasets.SVHN(str(root / "svhn"), split=split, download=True)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"svhn not found locally and the download failed ({type(e).__name__}); {how}") from None
        found = root / "svhn"
    if found is None:
        raise DataError(f"svhn not found (looked in {', '.join(str(r) for r in roots)}); {how}")
    out = []
    for f in files:
        try:
            import scipy.io

            m = scipy.io.loadmat(str(found / f))
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{found / f}: not a readable SVHN .mat file ({type(e).__name__}: {e})") from None
        x = np.transpose(m["X"], (3, 2, 0, 1)).astype(np.uint8)  # HWCN -> NCHW
        y = m["y"].astype(np.int64).reshape(-1)
        y[y == 10] = 0  # SVHN stores digit 0 as label 10
        out.append((x, y))
    return RawData(
        out[0][0], out[0][1], out[1][0], out[1][1], 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), str(found)
    )


@DATASETS.register("digits", summary="scikit-learn's bundled 8x8 digits, 10 classes (offline; for tests and demos)")
def digits(data_dir: Optional[Path] = None, download: bool = True) -> RawData:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # pixel values 0..16 -> [0,1]
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(y))
    test, train = perm[:360], perm[360:]
    return RawData(x[train], y[train], x[test], y[test], 10, (0.3,), (0.38,), "sklearn.datasets.load_digits")


@DATASETS.register("synthetic", summary="generated 1x8x8 images of 10 noisy prototypes (offline; for tests)")
def synthetic(
    data_dir: Optional[Path] = None, download: bool = True, n_train: int = 3000, n_test: int = 600
) -> RawData:
    """Ten random prototype images plus pixel noise, clipped to [0,1]. Learnable in seconds,
    yet not trivially robust: prototypes differ by about 0.35 per pixel on average."""
    rng = np.random.default_rng(1234)
    protos = rng.uniform(0.15, 0.85, size=(10, 1, 8, 8)).astype(np.float32)

    def make(n: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
        r = np.random.default_rng(seed)
        y = r.integers(0, 10, size=n)
        x = protos[y] + r.normal(0, 0.18, size=(n, 1, 8, 8)).astype(np.float32)
        return np.clip(x, 0, 1).astype(np.float32), y.astype(np.int64)

    tx, ty = make(n_train, 1)
    sx, sy = make(n_test, 2)
    return RawData(tx, ty, sx, sy, 10, (0.5,), (0.25,), "generated (seed 1234)")
