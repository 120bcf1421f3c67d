"""Canonical state <-> the Keras model's variables.

Every layer with weights is named with its canonical name (model.py), so the
mapping is by layer name and variable role:

    Conv2D              kernel (kH, kW, I/groups, O)  <->  weight (O, I/groups, kH, kW)
                        bias                          <->  bias
    Dense               kernel (in, out)              <->  weight (out, in)
                        bias                          <->  bias
    BatchNormalization  gamma, beta                   <->  weight, bias
                        moving_mean, moving_variance  <->  running_mean, running_var

The kernels' transposes are resnet_multi.weights.layouts' channels-last ones
(by rank: the vectors pass as they are). Keras's weight files are files.py's.
"""

from __future__ import annotations

from typing import Mapping

import keras
import numpy as np

from resnet_multi.weights.canonical import WeightsError, check_state
from resnet_multi.weights.layouts import from_channels_last, to_channels_last

# (layer type, canonical suffix, Keras attribute)
_ROLES = (
    (keras.layers.Conv2D, "weight", "kernel"),
    (keras.layers.Conv2D, "bias", "bias"),
    (keras.layers.Dense, "weight", "kernel"),
    (keras.layers.Dense, "bias", "bias"),
    (keras.layers.BatchNormalization, "weight", "gamma"),  # None when affine-free
    (keras.layers.BatchNormalization, "bias", "beta"),
    (keras.layers.BatchNormalization, "running_mean", "moving_mean"),
    (keras.layers.BatchNormalization, "running_var", "moving_variance"),
)


def variables(model: keras.Model) -> dict[str, keras.Variable]:
    """Canonical name -> the Keras variable that holds it (in Keras's layout), in model order."""
    out = {}
    for layer in model.layers:
        for kind, suffix, attr in _ROLES:
            variable = getattr(layer, attr, None) if isinstance(layer, kind) else None
            if variable is not None:  # Conv2D(use_bias=False).bias is None
                out[f"{layer.name}.{suffix}"] = variable
    return out


def to_canonical(model: keras.Model) -> dict[str, np.ndarray]:
    """Canonical name -> float32 numpy array in PyTorch layout."""
    return {name: np.ascontiguousarray(from_channels_last(np.asarray(variable.numpy(), dtype=np.float32)))
            for name, variable in variables(model).items()}


def from_canonical(model: keras.Model, state: Mapping[str, np.ndarray]) -> None:
    """Load a canonical state: checked whole against the spec and the model first, nothing assigned on error."""
    state = check_state(model.spec, state)  # names, shapes, dtypes and values; float32 from here
    found = variables(model)
    updates = []
    for name, variable in found.items():
        if name not in state:
            raise WeightsError(f"the Keras model has variable {name} that the state lacks; nothing loaded")
        value = to_channels_last(np.asarray(state[name], dtype=np.float32))
        if tuple(value.shape) != tuple(variable.shape):
            raise WeightsError(f"{name}: Keras variable is {tuple(variable.shape)}, state gives {value.shape} "
                               f"after conversion; nothing loaded")
        updates.append((variable, np.ascontiguousarray(value)))
    if len(updates) != len(state):
        extra = sorted(set(state) - set(found))
        raise WeightsError(f"the Keras model has no variable for {', '.join(extra[:8])}; nothing loaded")
    for variable, value in updates:
        variable.assign(value)
