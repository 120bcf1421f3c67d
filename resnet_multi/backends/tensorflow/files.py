"""Keras weights files for `resnet-multi convert`: our model's and keras.applications'.

'keras': our model's .weights.h5, as model.save_weights writes it. Keras 3 keys
that file by layer type and position (layers/conv2d_3/vars/0) and loads it so, but
stores each layer's name beside its variables: a file is first checked whole by
those names (check_layout: every missing, unexpected or mis-shaped tensor listed in
canonical names), then loaded by Keras, then checked again: every variable filled.

'keras-applications': keras.applications ResNet50/101/152 and V2 (their own layer
names, mapped by resnet_multi.weights.zoo_names): .weights.h5, or the legacy .h5
they ship.

Files are written through resnet_multi.files.atomic_write (never half a file);
Keras insists on the .weights.h5 ending, the temporary file's included.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Mapping

import h5py
import keras
import numpy as np

from resnet_multi.arch.plan import Conv, Norm, plan
from resnet_multi.arch.spec import ResNetSpec
from resnet_multi.files import atomic_write
from resnet_multi.weights.canonical import (
    State,
    WeightsError,
    check_state,
    check_tensors,
    check_values,
    expected_shapes,
)
from resnet_multi.weights.layouts import canonical_shape
from resnet_multi.weights.zoo_names import canonical_from_keras, keras_applications_layer, keras_variables

from .model import build
from .weights import to_canonical

FORMATS = ("keras", "keras-applications")
SUFFIX = ".weights.h5"  # Keras 3 saves weights only under this ending

APPLICATIONS = {"resnet50_v1": "ResNet50", "resnet101_v1": "ResNet101", "resnet152_v1": "ResNet152",
                "resnet50_v2": "ResNet50V2", "resnet101_v2": "ResNet101V2", "resnet152_v2": "ResNet152V2"}


def read_file(path: str | Path, spec: ResNetSpec, fmt: str) -> State:
    """A Keras weights file -> canonical state (checked against the spec: all or nothing).

    The file's tensors are checked (names, shapes, dtypes, values) as stored, before Keras casts them.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if fmt not in FORMATS:
        raise WeightsError(f"the tensorflow backend reads {' and '.join(map(repr, FORMATS))} files, not {fmt!r}")
    if fmt == "keras":
        notes = check_layout(path, spec, lambda name: name)  # our layers carry the canonical names
        model = build(spec, device="cpu")
        for variable in model.weights:  # a variable the file does not fill stays NaN
            variable.assign(np.full(variable.shape, np.nan, dtype=np.float32))
        _load(model, path, spec)
        stored = _dataset_count(path)
        if stored != len(model.weights):
            raise WeightsError(f"{path}: holds {stored} tensors, {spec.name}'s Keras model has "
                               f"{len(model.weights)}; nothing loaded")
        state = to_canonical(model)
        unfilled = [name for name, value in state.items() if np.isnan(value).all()]
        if unfilled:
            raise WeightsError(f"{path}: does not fill {', '.join(unfilled[:8])}; nothing loaded")
    else:
        application_name(spec)  # an architecture keras.applications lacks: say so before reading
        notes = check_layout(path, spec, keras_applications_layer)
        app = application(spec)
        _load(app, path, spec)
        state = {}
        for module in plan(spec).modules():
            state.update(canonical_from_keras(module, app.get_layer(keras_applications_layer(module.name))
                                              .get_weights()))
    checked = check_state(spec, state, source=str(path))
    checked.notes = notes  # what was converted on the way in, told by check_layout
    return checked


def write_file(state: Mapping[str, np.ndarray], path: str | Path, spec: ResNetSpec, fmt: str) -> None:
    """Canonical state -> a Keras .weights.h5 file, written atomically (never half a file)."""
    check_state(spec, state)
    path = Path(path)
    if not path.name.endswith(SUFFIX):
        raise WeightsError(f"{path}: Keras 3 writes weights files named *{SUFFIX}")
    if fmt == "keras":
        model = build(spec, device="cpu", state=state)
    elif fmt == "keras-applications":
        model = application(spec)
        for module in plan(spec).modules():
            model.get_layer(keras_applications_layer(module.name)).set_weights(keras_variables(module, state))
    else:
        raise WeightsError(f"the tensorflow backend writes {' and '.join(map(repr, FORMATS))} files, not {fmt!r}")
    atomic_write(path, model.save_weights, suffix=SUFFIX)


# -- keras.applications -------------------------------------------------------------------------


def application_name(spec: ResNetSpec) -> str:
    """The keras.applications builder of a preset ('ResNet50'), or a WeightsError listing those there are."""
    if spec.name not in APPLICATIONS:
        raise WeightsError(f"keras.applications has no {spec.name}; it has {', '.join(APPLICATIONS)}")
    return APPLICATIONS[spec.name]


def application(spec: ResNetSpec) -> keras.Model:
    """keras.applications' own model of a preset, random init (no download)."""
    constructor = getattr(keras.applications, application_name(spec))
    return constructor(weights=None, classes=spec.num_classes, input_shape=(224, 224, spec.in_channels))


def _load(model: keras.Model, path: Path, spec: ResNetSpec) -> None:
    try:
        with warnings.catch_warnings():  # Keras warns per skipped object before it raises
            warnings.simplefilter("ignore")
            model.load_weights(path)
    except (ValueError, KeyError, OSError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise WeightsError(f"{path}: not a Keras weights file of {spec.name} ({first}); nothing loaded") from None


def _dataset_count(path: Path) -> int:
    count = 0

    def visit(_name, obj):
        nonlocal count
        count += isinstance(obj, h5py.Dataset)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return count


# -- checking a file whole before loading it ---------------------------------------------------
#
# Keras's load_weights stops at the first layer that does not fit and names it by its
# position, and casts whatever it reads to float32. Both Keras weights files name their
# layers, though: a Keras 3 .weights.h5 stores each layer's name on its "vars" group, the
# legacy .h5 lists "layer_names" and each layer's "weight_names". So the file's tensors
# are first read with h5py and mapped to canonical names: every missing, unexpected or
# mis-shaped tensor is listed (check_tensors), every one that is not float or not finite
# too (check_values), and nothing is loaded.

H5_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError)  # h5py on damaged, truncated, foreign files


def _h5_failure(path: Path, spec: ResNetSpec, exc: Exception) -> WeightsError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return WeightsError(f"{path}: not a readable Keras weights file of {spec.name} ({first}); nothing loaded")


def stored_arrays(path: Path, spec: ResNetSpec) -> dict[str, dict[int | str, np.ndarray]] | None:
    """Layer name -> {variable index in Keras order: the array as stored}; None if the file names no layers."""
    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f  # a legacy whole-model .h5
            if "layer_names" in root.attrs:  # legacy: keras.applications' downloads, Keras 2 save_weights
                out = {}
                for raw in root.attrs["layer_names"]:
                    name = raw.decode() if isinstance(raw, bytes) else str(raw)
                    names = [w.decode() if isinstance(w, bytes) else str(w)
                             for w in root[name].attrs.get("weight_names", [])]
                    out[name] = {i: np.asarray(root[name][w][()]) for i, w in enumerate(names)}
                return out
            out = {}

            def visit(key, obj):
                if isinstance(obj, h5py.Group) and key.rsplit("/", 1)[-1] == "vars" and "name" in obj.attrs:
                    out[str(obj.attrs["name"])] = {int(k) if k.isdigit() else k: np.asarray(obj[k][()]) for k in obj
                                                   if isinstance(obj[k], h5py.Dataset)}

            f.visititems(visit)
            return out or None
    except H5_ERRORS as exc:
        raise _h5_failure(path, spec, exc) from None


def all_datasets(path: Path, spec: ResNetSpec) -> dict[str, np.ndarray]:
    """Every dataset of an h5 file by its path in the file (a file that names no layers)."""
    out = {}

    def visit(key, obj):
        if isinstance(obj, h5py.Dataset):
            out[key] = np.asarray(obj[()])

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except H5_ERRORS as exc:
        raise _h5_failure(path, spec, exc) from None
    return out


def keras_order(module) -> list[str]:
    """A module's canonical tensor names in its Keras layer's variable order (get_weights())."""
    if isinstance(module, Conv):
        keys = ["weight"] + (["bias"] if module.bias else [])
    elif isinstance(module, Norm):
        keys = (["weight", "bias"] if module.affine else []) + ["running_mean", "running_var"]
    else:
        keys = ["weight", "bias"]
    return [f"{module.name}.{k}" for k in keys]


def check_layout(path: Path, spec: ResNetSpec, layer_name: Callable[[str], str]) -> list[str]:
    """Refuse the file whole unless its tensors, mapped to canonical names, fit the spec exactly.

    ``layer_name`` maps a canonical module name to the file's layer name.
    Returns check_values' notes (the float16/float64 tensors Keras will cast).
    """
    stored = stored_arrays(path, spec)
    if stored is None:  # a file that does not name its layers: its values by their h5 paths; load_weights judges
        return check_values(all_datasets(path, spec), source=str(path)).notes
    seen: dict[str, np.ndarray] = {}
    placeholder = lambda shape: np.broadcast_to(np.float32(0), shape)  # noqa: E731 (a shape, no memory)
    values: dict[str, np.ndarray] = {}
    known = set()
    for module in plan(spec).modules():
        layer = layer_name(module.name)
        known.add(layer)
        names = keras_order(module)
        for i, array in stored.get(layer, {}).items():
            key = names[i] if isinstance(i, int) and i < len(names) else f"{layer}/vars/{i}"
            # Variable 0 is a kernel, stored channels-last, or a BN's gamma, a vector that
            # canonical_shape leaves as it is.
            seen[key] = placeholder(canonical_shape(array.shape) if i == 0 else array.shape)
            values[key] = array
    for layer, arrays in stored.items():
        if layer not in known:
            for i, array in arrays.items():
                seen[f"{layer}/vars/{i}"] = placeholder(array.shape)
    check_tensors(expected_shapes(spec), seen, f"{path} do not fit {spec.name}")
    return check_values(values, source=str(path)).notes  # in the file's layout: values and dtypes only
