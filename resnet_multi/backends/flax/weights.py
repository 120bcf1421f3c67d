"""Canonical state (PyTorch names and layouts) <-> the NNX model's variables.

The model's attribute paths are already the canonical module names
(``layer1.0.downsample.0``), so the mapping is one rule per variable:

    Conv   kernel (kH, kW, I/groups, O) <-> weight (O, I/groups, kH, kW)
    Linear kernel (in, out)             <-> weight (out, in)
    bias <-> bias;  BatchNorm scale <-> weight, mean <-> running_mean, var <-> running_var

The kernel transposes are the core's (resnet_multi.weights.layouts); the
framework's own .msgpack files are files.py's.
"""

from __future__ import annotations

from typing import Mapping

import jax
import numpy as np
from flax import nnx

from resnet_multi.weights.canonical import check_state, expected_shapes
from resnet_multi.weights.layouts import from_channels_last, to_channels_last

# An NNX variable's name -> the canonical suffix of the tensor it holds.
CANONICAL_SUFFIX = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var",
                    "kernel": "weight"}


def canonical_name(path: tuple) -> str:
    """An NNX state path -> its canonical name: ('layer1', 0, 'bn1', 'scale') -> 'layer1.0.bn1.weight'."""
    return ".".join(str(p) for p in path[:-1]) + "." + CANONICAL_SUFFIX[str(path[-1])]


def variables(model) -> dict[str, nnx.Variable]:
    """Canonical name -> the model's nnx.Param / nnx.BatchStat holding it."""
    return {canonical_name(path): var
            for path, var in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))}


def to_canonical(model) -> dict[str, np.ndarray]:
    """Every parameter and BN running statistic, canonical names, PyTorch layout, float32, in model order."""
    found = variables(model)
    order = list(expected_shapes(model.spec))
    return {name: np.ascontiguousarray(from_channels_last(np.asarray(found[name].get_value())), dtype=np.float32)
            for name in order + sorted(set(found) - set(order))}


def from_canonical(model, state: Mapping[str, np.ndarray]) -> None:
    """Load a canonical state: checked whole against the spec first, so nothing loads unless all of it fits."""
    state = check_state(model.spec, state)  # names, shapes, dtypes and values; float32 from here
    found = variables(model)
    converted = {name: np.ascontiguousarray(to_channels_last(np.asarray(state[name], np.float32)))
                 for name in found}  # every conversion done before any variable changes
    for name, var in found.items():
        var.set_value(jax.device_put(converted[name], var.get_value().sharding))  # stays on the model's device
