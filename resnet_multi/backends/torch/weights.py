"""Canonical state <-> the live torch model's state_dict.

PyTorch's layout IS the canonical one and the model's state_dict keys ARE the
canonical names, so nothing is renamed or transposed. The only difference is
BN's num_batches_tracked buffer, which torch keeps and the canonical state
does not (it is a counter, not a weight).

torch's own weight files (.pt, .pth, .bin) are read and written in files.py.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from resnet_multi.weights.canonical import WeightsError, check_state

COUNTER = "num_batches_tracked"  # BN's step counter: in the state_dict, not in the canonical state


def is_canonical(name: str) -> bool:
    """Whether a state_dict key is a canonical tensor (everything but BN's counters)."""
    return not name.endswith(COUNTER)


def canonical_keys(model: torch.nn.Module) -> list[str]:
    """The model's state_dict keys that are canonical names, in model order."""
    return [k for k in model.state_dict() if is_canonical(k)]


def parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Canonical name -> the trainable parameter itself (the module's own names ARE canonical)."""
    return dict(model.named_parameters())


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A float32 NumPy copy on the host (bf16/fp16 and device tensors too), sharing no memory with torch."""
    return tensor.detach().to("cpu", torch.float32, copy=True).numpy()


def from_numpy(array) -> torch.Tensor:
    """A float32, C-contiguous CPU tensor (no copy when the array already is one)."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def to_canonical(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """name -> float32 numpy copy, canonical names, PyTorch layout."""
    state = model.state_dict()
    return {k: to_numpy(state[k]) for k in canonical_keys(model)}


def from_canonical(model: torch.nn.Module, state: Mapping[str, np.ndarray]) -> None:
    """Load a canonical state into the model: all or nothing (checked against model.spec first)."""
    state = check_state(model.spec, state)  # names, shapes, dtypes and values; float32 from here
    keys = canonical_keys(model)
    if set(keys) != set(state):  # the model disagrees with its own spec: a bug here, not bad input
        raise WeightsError(f"torch model of {model.spec.name} has names outside the canonical state: "
                           f"{sorted(set(keys) ^ set(state))[:8]}")
    tensors = {k: from_numpy(state[k]) for k in keys}
    with torch.no_grad():
        own = model.state_dict()
        for k in keys:
            own[k].copy_(tensors[k])  # copies onto the model's device; shapes were checked above
