"""Canonical state <-> the live Gluon model's Parameters (the files are files.py's).

Gluon's layouts are PyTorch's (Conv2D weight (O, I/groups, kH, kW), Dense
weight (out, in)), so nothing is transposed (resnet_multi.weights.layouts
is not needed here); BN's gamma/beta are the canonical weight/bias.
Canonical names are resolved through the block structure
(``layer1.0.downsample.0`` is ``model.layer1[0].downsample[0]``), never by
parsing Gluon's prefixed parameter names. The model is only walked, never
built, so this module does not import model.py.
"""

from __future__ import annotations

from typing import Mapping

import mxnet as mx
import numpy as np

from resnet_multi.arch.plan import Conv, Linear, Norm, plan
from resnet_multi.weights.canonical import check_state

# canonical suffix -> Gluon attribute, per kind of layer
_CONV = {"weight": "weight", "bias": "bias"}
_NORM = {"weight": "gamma", "bias": "beta", "running_mean": "running_mean", "running_var": "running_var"}


def _layer(model, name: str):
    """The Gluon block at a canonical layer name; input_bn, conv1 and bn1 live in model.stem."""
    if name in ("input_bn", "conv1", "bn1"):
        return getattr(model.stem, name)
    block = model
    for part in name.split("."):
        block = block[int(part)] if part.isdigit() else getattr(block, part)
    return block


def parameters(model) -> dict[str, mx.gluon.Parameter]:
    """Canonical name -> the Gluon Parameter holding it, in model order."""
    found = {}
    for module in plan(model.spec).modules():
        layer = _layer(model, module.name)
        if isinstance(module, Norm):
            names = _NORM if module.affine else {k: _NORM[k] for k in ("running_mean", "running_var")}
        elif isinstance(module, Conv) and not module.bias:
            names = {"weight": "weight"}
        elif isinstance(module, (Conv, Linear)):
            names = _CONV
        else:
            raise TypeError(f"no Gluon mapping for {module!r}")
        for suffix, attribute in names.items():
            found[f"{module.name}.{suffix}"] = getattr(layer, attribute)
    return found


def to_canonical(model) -> dict[str, np.ndarray]:
    """Every parameter and running statistic as float32 numpy, canonical names and layout."""
    return {name: param.data().asnumpy().astype(np.float32) for name, param in parameters(model).items()}


def from_canonical(model, state: Mapping[str, np.ndarray]) -> None:
    """Load a canonical state; check_state refuses a misfit before anything is written."""
    state = check_state(model.spec, state)  # names, shapes, dtypes and values; float32 from here
    params = parameters(model)
    for name, param in params.items():  # a model that no longer fits its own spec: refuse before writing
        if tuple(param.shape) != tuple(np.shape(state[name])):
            raise ValueError(f"{name}: Gluon parameter {param.name} has shape {param.shape}, "
                             f"the state has {tuple(np.shape(state[name]))}; nothing loaded")
    for name, param in params.items():
        param.set_data(mx.nd.array(np.asarray(state[name], dtype=np.float32), dtype="float32"))
