"""Datasets for training: Fashion-MNIST from its IDX files, and an embedded digits set.

Fashion-MNIST is downloaded from its canonical location into a cache,
checked by SHA-256, written atomically (a partial download is kept apart as
``.partial`` and resumed with an HTTP Range request, never taken for a whole
file), or read from ``--data-dir``. The embedded default needs no network:
scikit-learn's bundled 8x8 handwritten digits (1,797 images) with a fixed
train/validation split.

Images come out as float32 NCHW in [0, 1], resized (bilinear, like the
book's ``transforms.Resize``) to the size asked for.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import struct
import sys
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from resnet_multi.errors import UserError

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_FILES = {  # name -> SHA-256 of the .gz as published
    "train-images-idx3-ubyte.gz": "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
    "train-labels-idx1-ubyte.gz": "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
    "t10k-images-idx3-ubyte.gz": "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
    "t10k-labels-idx1-ubyte.gz": "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
}
FASHION_MNIST_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                         "ankle boot")
CHUNK = 1 << 16
RESIZE_BLOCK_VALUES = 1 << 24  # resize this many output values at a time (64 MiB of float32 temporaries)


class DataError(UserError):
    """A dataset that cannot be had or does not check out."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset holds, known before it is loaded (for the memory check and the class count)."""

    train: int
    val: int
    channels: int
    num_classes: int

    def nbytes(self, resize_to: int) -> int:
        """The float32 images after resizing, training and validation together."""
        return (self.train + self.val) * self.channels * resize_to * resize_to * 4


DATASETS = {"fashion-mnist": DatasetInfo(60_000, 10_000, 1, 10),
            "digits": DatasetInfo(1_438, 359, 1, 10)}  # 1,797 images, 20% held out


def info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


@dataclass
class Dataset:
    name: str
    train_x: np.ndarray  # float32 (N, 1, H, W) in [0, 1]
    train_y: np.ndarray  # int64 (N,)
    val_x: np.ndarray
    val_y: np.ndarray
    num_classes: int


def default_cache() -> Path:
    root = os.environ.get("RESNET_MULTI_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                               os.path.expanduser("~/.cache"), "resnet-multi")
    return Path(root)


# -- download ----------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str, progress: Callable[[int, int | None], None] | None = None,
             timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` unless a verified copy is there; resume a partial one.

    The bytes go to ``dest.partial`` first; only a file whose SHA-256 matches
    is renamed to ``dest``. A mismatch deletes the partial file and raises.
    """
    if dest.exists():
        if sha256_of(dest) == sha256:
            return dest
        dest.unlink()  # a corrupt cache entry: fetch again
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = have and response.status == 206
            total = response.headers.get("Content-Length")
            total = int(total) + (have if resumed else 0) if total is not None else None
            mode = "ab" if resumed else "wb"
            done = have if resumed else 0
            with open(partial, mode) as f:
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(f"download of {url} failed ({reason}); run again to resume, or pass --data-dir") from None
    if total is not None and partial.stat().st_size < total:
        raise DataError(f"download of {url} stopped at {partial.stat().st_size} of {total} bytes; "
                        f"run again to resume")
    got = sha256_of(partial)
    if got != sha256:
        partial.unlink()
        raise DataError(f"{url}: SHA-256 {got} does not match the published {sha256}; the file was discarded")
    partial.replace(dest)
    return dest


# -- IDX files ------------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a numpy array of unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip raises zlib.error for a damaged stream
        raise DataError(f"{path}: cannot read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                        ) from None
    if len(data) < 4:
        raise DataError(f"{path}: not an IDX file (too short)")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    if ndim == 0:
        raise DataError(f"{path}: IDX header names no dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: IDX header cut short ({len(data)} bytes; {ndim} dimensions need {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    promised = math.prod(dims)  # Python ints: a hostile header cannot overflow it
    body = np.frombuffer(data, dtype=np.uint8, offset=header)
    if body.size != promised:
        raise DataError(f"{path}: holds {body.size} values, its header promises {promised}")
    return body.reshape(dims)


def check_pair(images: np.ndarray, labels: np.ndarray, images_path: Path, labels_path: Path,
               num_classes: int) -> None:
    """One image per label, labels among the classes: else training would silently use a part, or crash."""
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected images (count, height, width), got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected labels (count,), got shape {labels.shape}")
    if len(images) == 0:
        raise DataError(f"{images_path}: holds no images")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        raise DataError(f"{labels_path}: label {int(labels[bad[0]])} at index {int(bad[0])} is outside the "
                        f"{num_classes} classes (0..{num_classes - 1})")


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of (N, 1, H, W) float images (half-pixel centres, like torchvision).

    In blocks of images, so that the temporaries stay small and the memory
    needed is the result's (what the memory check counts).
    """
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images
    block = max(1, RESIZE_BLOCK_VALUES // (c * size * max(size, w)))
    out = np.empty((n, c, size, size), np.float32)
    for start in range(0, n, block):
        out[start:start + block] = _resize_block(images[start:start + block], size)
    return out


def _resize_block(images: np.ndarray, size: int) -> np.ndarray:
    h, w = images.shape[2:]

    def axis(src: int):
        pos = (np.arange(size) + 0.5) * src / size - 0.5
        pos = np.clip(pos, 0, src - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, src - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    (y0, y1, wy), (x0, x1, wx) = axis(h), axis(w)
    top = images[:, :, y0][..., x0] * (1 - wx) + images[:, :, y0][..., x1] * wx
    bottom = images[:, :, y1][..., x0] * (1 - wx) + images[:, :, y1][..., x1] * wx
    return (top * (1 - wy)[:, None] + bottom * wy[:, None]).astype(np.float32)


def fashion_mnist(resize_to: int = 96, data_dir: str | Path | None = None, url: str = FASHION_MNIST_URL,
                  files: dict[str, str] | None = None, limit: int | None = None,
                  progress: Callable[[str, int, int | None], None] | None = None) -> Dataset:
    """Fashion-MNIST: 60,000 training and 10,000 test images (the book's validation set)."""
    files = files or FASHION_MNIST_FILES
    paths = {}
    for name, digest in files.items():
        if data_dir is not None:
            local = Path(data_dir) / name
            plain = Path(data_dir) / name[:-3]
            if not local.exists() and plain.exists():
                local = plain  # already unpacked: trust the user's copy
            if not local.exists():
                raise DataError(f"{local} not found in --data-dir")
            if local.suffix == ".gz" and sha256_of(local) != digest:
                raise DataError(f"{local}: SHA-256 does not match the published one")
            paths[name] = local
        else:
            report = (lambda done, total, n=name: progress(n, done, total)) if progress else None
            paths[name] = download(url + name, default_cache() / "fashion-mnist" / name, digest, report)
    names = list(files)
    arrays = [read_idx(paths[n]) for n in names]
    train_x, train_y, val_x, val_y = arrays
    check_pair(train_x, train_y, paths[names[0]], paths[names[1]], len(FASHION_MNIST_CLASSES))
    check_pair(val_x, val_y, paths[names[2]], paths[names[3]], len(FASHION_MNIST_CLASSES))
    if limit:
        train_x, train_y, val_x, val_y = train_x[:limit], train_y[:limit], val_x[:limit], val_y[:limit]
    prep = lambda a: resize(a[:, None].astype(np.float32) / 255.0, resize_to)  # noqa: E731
    return Dataset("fashion-mnist", prep(train_x), train_y.astype(np.int64), prep(val_x), val_y.astype(np.int64), 10)


def digits(resize_to: int = 32, val_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits, upsampled; a fixed split (the same for every seed)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError('the digits dataset needs scikit-learn: pip install "resnet-multi[data]"') from None
    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]  # values 0..16
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(split_seed).permutation(len(labels))
    n_val = int(round(len(labels) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    images = resize(images, resize_to)
    return Dataset("digits", images[train], labels[train], images[val], labels[val], 10)


def batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True):
    """Index batches for one epoch: the same for a seed and epoch in every backend."""
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def load(name: str, resize_to: int, data_dir: str | Path | None = None, show_progress: bool = True) -> Dataset:
    info(name)  # an unknown name is a DataError listing the known ones
    if name == "digits":
        return digits(resize_to)
    bars: dict[str, tqdm] = {}

    def progress(file: str, done: int, total: int | None) -> None:
        bar = bars.get(file)
        if bar is None:  # tqdm draws only on a terminal (disable=None), so logs stay clean
            bar = bars[file] = tqdm(total=total, desc=f"downloading {file}", unit="B", unit_scale=True,
                                    unit_divisor=1024, leave=False, file=sys.stderr,
                                    disable=None if show_progress else True)
        bar.update(done - bar.n)

    try:
        return fashion_mnist(resize_to, data_dir, progress=progress)
    finally:
        for bar in bars.values():
            bar.close()
