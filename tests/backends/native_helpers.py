"""Small helpers the backends' native test files share (tiny specs, batches, tolerances)."""

from __future__ import annotations

import dataclasses

import numpy as np

from resnet_multi.arch import presets
from resnet_multi.arch.spec import Stage

RTOL = 1e-4  # logits within RTOL * max(1, max |logits|), as the parity suite


def tol(logits) -> float:
    return RTOL * max(1.0, float(np.abs(logits).max()))


def tiny(name: str):
    """A preset's every choice (block, shortcut, BN convention, stem) with two small stages."""
    spec = presets.get(name)
    if spec.block == "bottleneck":
        stages = (Stage(1, 32, 1, 2, 8), Stage(1, 64, 2, 2, 8))
    else:
        stages = (Stage(1, 8, 1), Stage(2, 16, 2))
    return dataclasses.replace(spec, name=f"tiny_{name}", stages=stages, num_classes=5,
                               stem=dataclasses.replace(spec.stem, channels=8))


def cross_entropy(logits, labels) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(labels)), labels]))


def batch(spec, n=4, size=(9, 11), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, spec.in_channels, *size)).astype(np.float32)
    return x, (np.arange(n) % spec.num_classes).astype(np.int64)
