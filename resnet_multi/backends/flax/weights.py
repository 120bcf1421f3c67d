"""Canonical state (PyTorch names and layouts) <-> the NNX model's variables.

The model's attribute paths are already the canonical module names
(``layer1.0.downsample.0``), so the mapping is one rule per variable:

    Conv   kernel (kH, kW, I/groups, O) <-> weight (O, I/groups, kH, kW)   transpose (3, 2, 0, 1)
    Linear kernel (in, out)             <-> weight (out, in)               transpose
    bias <-> bias;  BatchNorm scale <-> weight, mean <-> running_mean, var <-> running_var
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import jax
import numpy as np
from flax import nnx

from resnet_multi.weights.canonical import WeightsError, check_state, expected_shapes

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


# -- native files: our NNX model's state as msgpack (flax.serialization) ----------------------

FORMATS = ("flax",)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise WeightsError(f"the flax backend reads and writes the format 'flax' (.msgpack), not {fmt!r}")


def _empty_model(spec):
    """Our NNX model of `spec` on the CPU, variables zero (no seeded init: they are overwritten)."""
    from .model import ResNet, _jax_device

    with jax.default_device(_jax_device("cpu")):
        return ResNet(spec, rngs=nnx.Rngs(0))


def _flatten(tree, prefix: tuple = ()) -> dict[tuple[str, ...], object]:
    out = {}
    for key, value in tree.items():
        path = (*prefix, str(key))  # msgpack keeps nnx.List's int keys; compare them as text
        if isinstance(value, dict):
            out.update(_flatten(value, path))
        else:
            out[path] = value
    return out


def write_file(state: Mapping[str, np.ndarray], path, spec, fmt: str = "flax") -> None:
    """Canonical state -> our model's nnx.state as a msgpack file (flax.serialization), atomically."""
    from flax import serialization

    _check_format(fmt)
    check_state(spec, state)  # all or nothing: no file unless the state fits
    model = _empty_model(spec)
    from_canonical(model, state)
    blob = serialization.msgpack_serialize(nnx.to_pure_dict(nnx.state(model)))
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        tmp.write_bytes(blob)
        tmp.replace(path)  # a crash never leaves half a file under the real name
    finally:
        tmp.unlink(missing_ok=True)


def read_file(path, spec, fmt: str = "flax") -> dict[str, np.ndarray]:
    """A msgpack file of our model's state -> canonical state; refused whole unless every tensor fits."""
    from flax import serialization

    _check_format(fmt)
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read weights file ({exc.strerror or exc})") from None
    try:
        tree = serialization.msgpack_restore(data)
    except Exception as exc:  # msgpack raises ValueError, ExtraData, FormatError, ... for corrupt or truncated data
        text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise WeightsError(f"{path}: not a readable flax msgpack file ({text})") from None
    if not isinstance(tree, dict) or not tree:
        raise WeightsError(f"{path}: not a flax state file (expected a nested dict of arrays, "
                           f"got {type(tree).__name__})")
    flat = _flatten(tree)
    bad = [".".join(p) for p, v in flat.items()
           if not (isinstance(v, np.ndarray) and (np.issubdtype(v.dtype, np.floating) or v.dtype.name == "bfloat16"))]
    if bad:
        raise WeightsError(f"{path}: entries that are not float arrays, nothing loaded: {', '.join(bad[:8])}"
                           f"{' ...' if len(bad) > 8 else ''}")
    model = _empty_model(spec)
    variables = {tuple(str(k) for k in p): v for p, v in nnx.to_flat_state(nnx.state(model))}
    names = {p: ".".join(p[:-1]) + "." + _SUFFIX[p[-1]] for p in variables}  # as _variables() names them
    # Checked in canonical names and layout, so the message reads like every other backend's; a path the
    # model does not have keeps its own (slash-separated) name and shows up as unexpected.
    canonical = {names.get(p, "/".join(p)): _to_torch_layout(np.asarray(v, np.float32)) for p, v in flat.items()}
    check_state(spec, canonical, source=str(path))
    # Read back into our model by the file's paths (the file is that model's state), then canonical.
    for p, var in variables.items():
        var.set_value(jax.device_put(np.asarray(flat[p], np.float32), var.get_value().sharding))
    return to_canonical(model)
