"""Canonical state <-> the torch model's state_dict.

PyTorch's layout IS the canonical one and the model's state_dict keys ARE the
canonical names, so nothing is renamed or transposed. The only difference is
BN's num_batches_tracked buffer, which torch keeps and the canonical state
does not (it is a counter, not a weight).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from resnet_multi.weights import WeightsError, check_state

_NOT_CANONICAL = "num_batches_tracked"


def _canonical_keys(model: torch.nn.Module) -> list[str]:
    return [k for k in model.state_dict() if not k.endswith(_NOT_CANONICAL)]


def to_canonical(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """name -> float32 numpy copy, canonical names, PyTorch layout."""
    state = model.state_dict()
    return {k: state[k].detach().to("cpu", torch.float32).numpy().copy() for k in _canonical_keys(model)}


def from_canonical(model: torch.nn.Module, state: Mapping[str, np.ndarray]) -> None:
    """Load a canonical state into the model: all or nothing (checked against model.spec first)."""
    check_state(model.spec, state)
    keys = _canonical_keys(model)
    if set(keys) != set(state):  # the model disagrees with its own spec: a bug here, not bad input
        raise WeightsError(f"torch model of {model.spec.name} has names outside the canonical state: "
                           f"{sorted(set(keys) ^ set(state))[:8]}")
    tensors = {k: torch.from_numpy(np.ascontiguousarray(state[k], dtype=np.float32)) for k in keys}
    with torch.no_grad():
        own = model.state_dict()
        for k in keys:
            own[k].copy_(tensors[k])  # copies onto the model's device; shapes were checked above
