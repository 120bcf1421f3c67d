"""Kernel layouts: the canonical (PyTorch) one and the channels-last one of Keras and Flax, written once.

    conv kernel   canonical (O, I/groups, kH, kW)  <->  channels-last (kH, kW, I/groups, O)
    dense kernel  canonical (out, in)              <->  channels-last (in, out)
    vectors (biases, BN parameters and statistics) are the same in both.
"""

from __future__ import annotations

import numpy as np


def to_channels_last(canonical: np.ndarray) -> np.ndarray:
    """A canonical tensor in Keras's and Flax's layout (by rank: 4 = conv, 2 = dense, else as is)."""
    canonical = np.asarray(canonical)
    if canonical.ndim == 4:
        return canonical.transpose(2, 3, 1, 0)
    return canonical.T if canonical.ndim == 2 else canonical


def from_channels_last(native: np.ndarray) -> np.ndarray:
    """The inverse of to_channels_last: a Keras/Flax kernel in the canonical layout."""
    native = np.asarray(native)
    if native.ndim == 4:
        return native.transpose(3, 2, 0, 1)
    return native.T if native.ndim == 2 else native


def canonical_shape(channels_last: tuple[int, ...]) -> tuple[int, ...]:
    """The canonical shape of a tensor stored channels-last (a Keras/Flax kernel's shape)."""
    shape = tuple(channels_last)
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    return shape[::-1] if len(shape) == 2 else shape
