"""Canonical state (PyTorch names and layouts) <-> the NNX model's variables.

The model's attribute paths are already the canonical module names
(``layer1.0.downsample.0``), so the mapping is one rule per variable:

    Conv   kernel (kH, kW, I/groups, O) <-> weight (O, I/groups, kH, kW)   transpose (3, 2, 0, 1)
    Linear kernel (in, out)             <-> weight (out, in)               transpose
    bias <-> bias;  BatchNorm scale <-> weight, mean <-> running_mean, var <-> running_var
"""

from __future__ import annotations

from typing import Mapping

import jax
import numpy as np
from flax import nnx

from resnet_multi.weights import check_state, expected_shapes

_SUFFIX = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var", "kernel": "weight"}


def _variables(model) -> dict[str, nnx.Variable]:
    """Canonical name -> the model's nnx.Param / nnx.BatchStat holding it."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))):
        out[".".join(str(p) for p in path[:-1]) + "." + _SUFFIX[path[-1]]] = var
    return out


def _to_torch_layout(native: np.ndarray) -> np.ndarray:
    if native.ndim == 4:  # conv kernel (kH, kW, I/g, O)
        return native.transpose(3, 2, 0, 1)
    return native.T if native.ndim == 2 else native  # dense kernel (in, out); vectors as they are


def _to_flax_layout(canonical: np.ndarray) -> np.ndarray:
    if canonical.ndim == 4:  # conv weight (O, I/g, kH, kW)
        return canonical.transpose(2, 3, 1, 0)
    return canonical.T if canonical.ndim == 2 else canonical


def to_canonical(model) -> dict[str, np.ndarray]:
    """Every parameter and BN running statistic, canonical names, PyTorch layout, float32, in model order."""
    found = _variables(model)
    order = list(expected_shapes(model.spec))
    return {name: np.ascontiguousarray(_to_torch_layout(np.asarray(found[name].get_value())), dtype=np.float32)
            for name in order + sorted(set(found) - set(order))}


def from_canonical(model, state: Mapping[str, np.ndarray]) -> None:
    """Load a canonical state: checked whole against the spec first, so nothing loads unless all of it fits."""
    check_state(model.spec, state)
    found = _variables(model)
    converted = {name: np.ascontiguousarray(_to_flax_layout(np.asarray(state[name], np.float32)))
                 for name in found}  # every conversion done before any variable changes
    for name, var in found.items():
        var.set_value(jax.device_put(converted[name], var.get_value().sharding))  # stays on the model's device
