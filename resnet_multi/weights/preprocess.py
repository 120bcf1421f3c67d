"""A registry entry's preprocessing, in NumPy: an RGB image (uint8, H x W x 3) -> the network's input.

The steps are the entry's ``preprocessing`` table (resnet_multi/weights/registry.py), in the source's order:

1. ``resize`` the shorter side (the longer one scaled as torchvision does: ``int(resize * long / short)``),
   with the entry's ``interpolation`` (``antialias``: the filter widened by the scale when shrinking);
   the resampling is Pillow's own (separable, horizontal then vertical, fixed-point weights, uint8 after
   each pass), which torchvision's transforms run on a PIL image, so the pixels are the same;
2. a centre ``crop`` (torchvision's rounding); an entry with neither resize nor crop (keras.applications,
   the Gluon model zoo name none) is resized to ``input_size`` x ``input_size`` whole, bilinear where the
   entry names no interpolation (as ``keras.utils.load_img(target_size=...)`` resizes the whole image);
3. the ``value_range`` (``[0, 1]``: divided by 255), the ``channel_order`` (``BGR`` reverses RGB), minus
   ``mean`` and divided by ``std`` when there is one (caffe-style: the BGR mean only), all in float32;
4. NCHW float32.

Pillow is imported only by ``read_image`` (the ``predict`` extra); the rest is NumPy.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from resnet_multi.errors import UserError

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point weights (libImaging/Resample.c)
DEFAULT_INTERPOLATION = "bilinear"


class ImageError(UserError):
    """An image that is missing or that Pillow cannot read."""


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _bicubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


FILTERS: dict[str, tuple[Callable[[float], float], float]] = {"bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0)}


def _coefficients(in_size: int, out_size: int, interpolation: str, antialias: bool
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs`` and ``normalize_coeffs_8bpc``: (source index per tap, int weights)."""
    kernel, support = FILTERS[interpolation]
    scale = in_size / out_size
    filterscale = max(scale, 1.0) if antialias else 1.0
    support = support * filterscale
    ss = 1.0 / filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    index = np.zeros((out_size, ksize), dtype=np.int64)
    weights = np.zeros((out_size, ksize), dtype=np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(math.trunc(center - support + 0.5), 0)
        xmax = min(math.trunc(center + support + 0.5), in_size) - xmin
        taps = [kernel((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        total = sum(taps)
        for x, w in enumerate(taps):
            w = w / total if total != 0.0 else w
            weights[xx, x] = math.trunc((-0.5 if w < 0 else 0.5) + w * (1 << PRECISION_BITS))
            index[xx, x] = x + xmin
        index[xx, xmax:] = min(xmin, in_size - 1)
    return index, weights


def _resample_axis(img: np.ndarray, out_size: int, axis: int, interpolation: str, antialias: bool) -> np.ndarray:
    index, weights = _coefficients(img.shape[axis], out_size, interpolation, antialias)
    src = np.moveaxis(img, axis, 0).astype(np.int64)
    acc = np.full((out_size, *src.shape[1:]), 1 << (PRECISION_BITS - 1), dtype=np.int64)
    extra = (1,) * (src.ndim - 1)
    for k in range(index.shape[1]):
        acc += src[index[:, k]] * weights[:, k].reshape(out_size, *extra)
    out = np.clip(acc >> PRECISION_BITS, 0, 255).astype(np.uint8)
    return np.moveaxis(out, 0, axis)


def resize(img: np.ndarray, height: int, width: int, interpolation: str = DEFAULT_INTERPOLATION,
           antialias: bool = True) -> np.ndarray:
    """An H x W x C uint8 image resized as Pillow's ``Image.resize`` does (the same pixels)."""
    if interpolation == "nearest":  # Pillow's affine nearest: the source pixel under each output centre
        rows = np.minimum(((np.arange(height) + 0.5) * img.shape[0] / height).astype(np.int64), img.shape[0] - 1)
        cols = np.minimum(((np.arange(width) + 0.5) * img.shape[1] / width).astype(np.int64), img.shape[1] - 1)
        return img[rows][:, cols]
    if interpolation not in FILTERS:
        raise UserError(f"interpolation {interpolation!r}: expected nearest, {', '.join(FILTERS)}")
    out = img
    if width != img.shape[1]:
        out = _resample_axis(out, width, 1, interpolation, antialias)
    if height != img.shape[0]:
        out = _resample_axis(out, height, 0, interpolation, antialias)
    return out


def shorter_side_size(height: int, width: int, side: int) -> tuple[int, int]:
    """(H, W) with the shorter side ``side``, as torchvision's ``Resize([side])`` computes it."""
    if width <= height:
        return int(side * height / width), side
    return side, int(side * width / height)


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The centre ``size`` x ``size`` (torchvision's offsets: ``round((H - size) / 2)``)."""
    height, width = img.shape[:2]
    if height < size or width < size:
        raise UserError(f"center crop {size}x{size} of a {height}x{width} image: the image is smaller")
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return img[top:top + size, left:left + size]


def preprocess(image: np.ndarray, pre: Mapping[str, Any]) -> np.ndarray:
    """One RGB uint8 image (H x W x 3) -> the network's input (3 x S x S float32), as the entry says."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise UserError(f"expected an RGB image, H x W x 3 uint8; got {image.dtype} {image.shape}")
    interpolation = pre.get("interpolation", DEFAULT_INTERPOLATION)
    antialias = pre.get("antialias", True)
    size = pre["input_size"]
    if "resize" in pre:
        image = resize(image, *shorter_side_size(*image.shape[:2], pre["resize"]), interpolation, antialias)
    elif "crop" not in pre:
        image = resize(image, size, size, interpolation, antialias)
    if "crop" in pre:
        image = center_crop(image, pre["crop"])
    elif image.shape[:2] != (size, size):
        image = center_crop(image, size)
    low, high = pre["value_range"]
    x = image.astype(np.float32)
    if (low, high) != (0.0, 255.0):
        x = x / np.float32(255.0)
        if (low, high) != (0.0, 1.0):
            x = x * np.float32(high - low) + np.float32(low)
    if pre["channel_order"] == "BGR":
        x = x[..., ::-1]
    x = x - np.asarray(pre["mean"], dtype=np.float32)
    if "std" in pre:
        x = x / np.asarray(pre["std"], dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def read_image(path: str | Path) -> np.ndarray:
    """An image file as RGB uint8 (H x W x 3), decoded by Pillow; a missing or unreadable one is one line."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise UserError("reading images needs Pillow: pip install 'resnet-multi[predict]'") from None
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        text = " ".join(str(exc).split())[:200]
        raise ImageError(f"{path}: not an image Pillow can read ({text or type(exc).__name__})") from None


def load_images(paths: Sequence[str | Path], pre: Mapping[str, Any]) -> np.ndarray:
    """The images, read and preprocessed, as one N x 3 x S x S float32 batch."""
    return np.stack([preprocess(read_image(p), pre) for p in paths])
