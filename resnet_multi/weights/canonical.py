"""Canonical weights: seeded initialisation, validation, and safetensors files.

A canonical state is a dict ``name -> float32 numpy array`` with the
canonical names of ``plan(spec)`` and PyTorch's layout: conv kernels
(O, I/groups, kH, kW), linear (out, in), BN weight/bias/running_mean/
running_var. Every backend converts to and from exactly this, so one file
runs in all four frameworks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

import numpy as np

from resnet_multi.arch.plan import Conv, Linear, Norm, plan
from resnet_multi.arch.spec import ResNetSpec
from resnet_multi.errors import UserError
from resnet_multi.files import atomic_write

FORMAT = "resnet-multi/1"


class WeightsError(UserError, ValueError):
    """A weights file or state that does not fit the spec; nothing was loaded."""


def _conv_init(conv: Conv, init: str, rng: np.random.Generator) -> np.ndarray:
    shape = (conv.out_channels, conv.in_channels // conv.groups, conv.kernel, conv.kernel)
    fan_in = shape[1] * conv.kernel * conv.kernel
    fan_out = conv.out_channels * conv.kernel * conv.kernel  # PyTorch's fan_out: size(0) * receptive field
    if init == "kaiming_fan_out":  # torchvision: kaiming_normal_(mode='fan_out', nonlinearity='relu')
        return rng.normal(0.0, math.sqrt(2.0 / fan_out), shape)
    bound = math.sqrt(6.0 / (fan_in + fan_out))  # xavier_uniform_, the book's init_cnn
    return rng.uniform(-bound, bound, shape)


def _linear_init(fc: Linear, init: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    shape = (fc.out_features, fc.in_features)
    if init == "kaiming_fan_out":  # torchvision leaves nn.Linear's default: U(+-1/sqrt(fan_in))
        bound = 1.0 / math.sqrt(fc.in_features)
        return rng.uniform(-bound, bound, shape), rng.uniform(-bound, bound, (fc.out_features,))
    bound = math.sqrt(6.0 / (fc.in_features + fc.out_features))
    return rng.uniform(-bound, bound, shape), np.zeros(fc.out_features)


def _last_norms(spec: ResNetSpec) -> set[str]:
    return {block.norms[-1].name for block in plan(spec).blocks} if spec.zero_init_last_bn else set()


def init_weights(spec: ResNetSpec, seed: int = 0, perturb_bn: bool = False) -> dict[str, np.ndarray]:
    """The spec's initialisation, bit-identical for a seed on any machine.

    ``perturb_bn`` draws BN affine parameters and running statistics at
    random too, so that tests exercise every BN term instead of identities.
    """
    rng = np.random.default_rng(seed)
    p = plan(spec)
    zero_last = _last_norms(spec)
    state: dict[str, np.ndarray] = {}
    for module in p.modules():
        if isinstance(module, Conv):
            state[f"{module.name}.weight"] = _conv_init(module, spec.init, rng)
            if module.bias:
                state[f"{module.name}.bias"] = (rng.uniform(-0.1, 0.1, module.out_channels) if perturb_bn
                                                else np.zeros(module.out_channels))
        elif isinstance(module, Norm):
            c = module.channels
            if perturb_bn:
                if module.affine:
                    state[f"{module.name}.weight"] = rng.uniform(0.5, 1.5, c)
                    state[f"{module.name}.bias"] = rng.uniform(-0.2, 0.2, c)
                state[f"{module.name}.running_mean"] = rng.uniform(-0.2, 0.2, c)
                state[f"{module.name}.running_var"] = rng.uniform(0.5, 2.0, c)
            else:
                if module.affine:
                    state[f"{module.name}.weight"] = np.zeros(c) if module.name in zero_last else np.ones(c)
                    state[f"{module.name}.bias"] = np.zeros(c)
                state[f"{module.name}.running_mean"] = np.zeros(c)
                state[f"{module.name}.running_var"] = np.ones(c)
        elif isinstance(module, Linear):
            state[f"{module.name}.weight"], state[f"{module.name}.bias"] = _linear_init(module, spec.init, rng)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}


def expected_shapes(spec: ResNetSpec) -> dict[str, tuple[int, ...]]:
    p = plan(spec)
    return {**p.param_shapes(), **p.buffer_shapes()}


def check_tensors(want: Mapping[str, tuple[int, ...]], state: Mapping[str, np.ndarray], what: str) -> None:
    """Raise WeightsError listing every missing, unexpected or mis-shaped tensor (all or nothing).

    ``what`` starts the message, e.g. "weights.safetensors do not fit resnet50".
    """
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    misshaped = [f"{k} {tuple(np.shape(state[k]))} (expected {tuple(want[k])})"
                 for k in want if k in state and tuple(np.shape(state[k])) != tuple(want[k])]
    problems = [f"{label} {len(items)}: {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}"
                for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
                if items]
    if problems:
        raise WeightsError(f"{what}, nothing loaded: " + "; ".join(problems))


def check_state(spec: ResNetSpec, state: Mapping[str, np.ndarray], source: str = "weights") -> None:
    """Raise WeightsError listing every missing, unexpected or mis-shaped tensor (all or nothing)."""
    check_tensors(expected_shapes(spec), state, f"{source} do not fit {spec.name}")


def save_state(state: Mapping[str, np.ndarray], path: str | Path, spec: ResNetSpec | None = None) -> Path:
    """Write a canonical safetensors file (atomically: a crash never leaves half a file)."""
    from safetensors.numpy import save

    path = Path(path)
    if spec is not None:
        check_state(spec, state)
    metadata = {"format": FORMAT}
    if spec is not None:
        metadata["spec"] = json.dumps(spec.to_dict())
    blob = save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}, metadata=metadata)
    return atomic_write(path, blob)


def read_weights_bytes(path: str | Path) -> bytes:
    """The bytes of a weights file, or a one-line WeightsError naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read weights file ({exc.strerror or exc})") from None


def load_state(path: str | Path, spec: ResNetSpec | None = None) -> dict[str, np.ndarray]:
    """Read a canonical safetensors file; with a spec, refuse it whole unless it fits."""
    from safetensors.numpy import load

    path = Path(path)
    data = read_weights_bytes(path)
    try:
        state = load(data)
    except Exception as exc:  # safetensors raises its own error types for corrupt or truncated files
        raise WeightsError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0][:200]})") from None
    if spec is not None:
        check_state(spec, state, source=str(path))
    return {k: np.asarray(v, dtype=np.float32) for k, v in state.items()}


def file_spec(path: str | Path) -> ResNetSpec | None:
    """The spec stored in a canonical file's metadata, if any."""
    from safetensors import safe_open

    from resnet_multi.arch.spec import spec_from_dict

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
    return spec_from_dict(json.loads(meta["spec"])) if "spec" in meta else None
