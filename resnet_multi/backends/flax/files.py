"""Flax's own weight files: our NNX model's state as msgpack (flax.serialization).

A file is ``nnx.to_pure_dict(nnx.state(model))`` of our model, serialized
with ``flax.serialization.msgpack_serialize``: what Flax's own API writes and
reads back with ``msgpack_restore`` and ``nnx.replace_by_pure_dict``. It is
checked whole in canonical names before anything is read from it, and
written atomically (resnet_multi.files.atomic_write).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import jax
import numpy as np
from flax import nnx, serialization

from resnet_multi.arch.spec import ResNetSpec
from resnet_multi.files import atomic_write
from resnet_multi.weights.canonical import WeightsError, check_state, read_weights_bytes
from resnet_multi.weights.layouts import from_channels_last

from .model import ResNet, jax_device
from .weights import canonical_name, from_canonical, to_canonical

FORMATS = ("flax",)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise WeightsError(f"the flax backend reads and writes the format 'flax' (.msgpack), not {fmt!r}")


def empty_model(spec: ResNetSpec) -> ResNet:
    """Our NNX model of `spec` on the CPU, variables zero (no seeded init: they are overwritten)."""
    with jax.default_device(jax_device("cpu")):
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


def write_file(state: Mapping[str, np.ndarray], path, spec: ResNetSpec, fmt: str = "flax") -> None:
    """Canonical state -> our model's nnx.state as a msgpack file (flax.serialization), atomically."""
    _check_format(fmt)
    check_state(spec, state)  # all or nothing: no file unless the state fits
    model = empty_model(spec)
    from_canonical(model, state)
    atomic_write(path, serialization.msgpack_serialize(nnx.to_pure_dict(nnx.state(model))))


def read_file(path, spec: ResNetSpec, fmt: str = "flax") -> dict[str, np.ndarray]:
    """A msgpack file of our model's state -> canonical state; refused whole unless every tensor fits."""
    _check_format(fmt)
    path = Path(path)
    data = read_weights_bytes(path)
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
    model = empty_model(spec)
    model_vars = {tuple(str(k) for k in p): v for p, v in nnx.to_flat_state(nnx.state(model))}
    names = {p: canonical_name(p) for p in model_vars}
    # Checked in canonical names and layout, so the message reads like every other backend's; a path the
    # model does not have keeps its own (slash-separated) name and shows up as unexpected.
    canonical = {names.get(p, "/".join(p)): from_channels_last(np.asarray(v, np.float32)) for p, v in flat.items()}
    check_state(spec, canonical, source=str(path))
    # Read back into our model by the file's paths (the file is that model's state), then canonical.
    for p, var in model_vars.items():
        var.set_value(jax.device_put(np.asarray(flat[p], np.float32), var.get_value().sharding))
    return to_canonical(model)
