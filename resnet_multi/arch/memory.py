"""Will it fit? A lower bound of the memory a model, a batch or a dataset needs, from the analytic table.

Checked before anything is built or allocated, so a spec with billions of
parameters or an input of 100000x100000 pixels is one line naming the
estimate, not a crash minutes later (or a machine out of memory). The bounds
are deliberately low (float32, the fewest copies any framework keeps), so
nothing that could fit is refused; ``allow_large=True`` (``--allow-large``)
skips the check for those who know better.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from resnet_multi.arch.shapes import layer_table
from resnet_multi.arch.spec import ResNetSpec
from resnet_multi.errors import UserError

FLOAT32 = 4


class TooLarge(UserError, MemoryError):
    """What was asked for cannot fit in this machine's available memory."""


@dataclass(frozen=True)
class Estimate:
    """Bytes needed at least: the weights (two copies: canonical and the framework's) and the activations."""

    weights: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.activations


def available_bytes() -> int:
    """Memory available to a new allocation now (MemAvailable), or the physical memory where that is unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no check
        return 2**63


def gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"


def estimate(spec: ResNetSpec, input_shape, batch: int, train: bool = False) -> Estimate:
    """The lower bound for building ``spec`` and running a batch through it.

    Weights: parameters and BN statistics, twice (the canonical state and the
    framework's own copy), four times in training (gradients and momentum).
    Activations, inference: the largest layer output and its input, which
    must coexist. Training: every layer-table row's output, all kept for the
    backward pass.
    """
    table = layer_table(spec, tuple(input_shape))
    per_image = [c * h * w for c, h, w in [tuple(input_shape)] + [r.output_shape for r in table.layers]]
    values = table.total_params + table.total_buffers
    weights = values * FLOAT32 * (4 if train else 2)
    if train:
        activations = sum(per_image) * batch * FLOAT32
    else:
        activations = max(a + b for a, b in zip(per_image, per_image[1:])) * batch * FLOAT32
    return Estimate(weights, activations)


def check_fits(what: str, needed: int, allow_large: bool = False, detail: str = "") -> None:
    """Raise TooLarge unless ``needed`` bytes fit in the available memory (or ``allow_large``)."""
    if allow_large:
        return
    free = available_bytes()
    if needed > free:
        raise TooLarge(f"{what} needs at least {gib(needed)}{f' ({detail})' if detail else ''}, but this machine "
                       f"has {gib(free)} available; pass --allow-large (allow_large=True) to try anyway")


def check_model_fits(spec: ResNetSpec, input_shape, batch: int, train: bool = False,
                     allow_large: bool = False) -> Estimate:
    """check_fits for building ``spec`` and running ``batch`` inputs of ``input_shape`` through it."""
    found = estimate(spec, input_shape, batch, train)
    shape = "x".join(str(d) for d in input_shape)
    check_fits(f"{spec.name} with a batch of {batch}x{shape}{' in training' if train else ''}", found.total,
               allow_large, f"weights {gib(found.weights)}, activations {gib(found.activations)}")
    return found
