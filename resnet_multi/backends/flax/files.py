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
import msgpack
import numpy as np
from flax import nnx, serialization

from resnet_multi.arch.spec import ResNetSpec
from resnet_multi.files import atomic_write
from resnet_multi.weights.canonical import State, WeightsError, check_state, read_weights_bytes, shown
from resnet_multi.weights.layouts import from_channels_last

from .model import ResNet, jax_device
from .weights import canonical_name, from_canonical, to_canonical

FORMATS = ("flax",)
# What msgpack_restore raises for corrupt or truncated data: msgpack's errors (ExtraData, FormatError, ...),
# and flax's own ndarray decoding (unknown dtype, bad shape, unhashable key).
RESTORE_ERRORS = (msgpack.exceptions.UnpackException, ValueError, TypeError, KeyError, IndexError, OverflowError)


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


def read_file(path, spec: ResNetSpec, fmt: str = "flax") -> State:
    """A msgpack file of our model's state -> canonical state; refused whole unless every tensor fits.

    Names, shapes, dtypes and values are checked as stored (check_state), before any cast.
    """
    _check_format(fmt)
    path = Path(path)
    data = read_weights_bytes(path)
    try:
        tree = serialization.msgpack_restore(data)
    except RESTORE_ERRORS as exc:
        text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise WeightsError(f"{path}: not a readable flax msgpack file ({text})") from None
    if not isinstance(tree, dict) or not tree:
        raise WeightsError(f"{path}: not a flax state file (expected a nested dict of arrays, "
                           f"got {type(tree).__name__})")
    flat = _flatten(tree)
    bad = [shown(".".join(p)) for p, v in flat.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise WeightsError(f"{path}: entries that are not arrays, nothing loaded: {', '.join(bad[:8])}"
                           f"{' ...' if len(bad) > 8 else ''}")
    model = empty_model(spec)
    model_vars = {tuple(str(k) for k in p): v for p, v in nnx.to_flat_state(nnx.state(model))}
    names = {p: canonical_name(p) for p in model_vars}
    canonical_names = set(names.values())

    def name_of(p: tuple[str, ...]) -> str:
        # A path the model does not have keeps its own (slash-separated) name and shows up as unexpected.
        if p in names:
            return names[p]
        own = "/".join(p)
        return own if own not in canonical_names else f"{own} (a path the model lacks)"

    # Checked in canonical names and layout, as stored (no cast yet), so the message reads like every other
    # backend's and an int or NaN tensor is refused by name.
    checked = check_state(spec, {name_of(p): from_channels_last(v) for p, v in flat.items()}, source=str(path))
    # Read back into our model by the file's paths (the file is that model's state), then canonical.
    for p, var in model_vars.items():
        var.set_value(jax.device_put(np.asarray(flat[p], np.float32), var.get_value().sharding))
    return State(to_canonical(model), checked.notes)
