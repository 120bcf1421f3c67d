"""Canonical state <-> the Keras model's variables; Keras weights files for `resnet-multi convert`.

Every layer with weights is named with its canonical name (model.py), so the
mapping is by layer name and variable role:

    Conv2D              kernel (kH, kW, I/groups, O)  <->  weight (O, I/groups, kH, kW): transpose (3, 2, 0, 1)
                        bias                          <->  bias
    Dense               kernel (in, out)              <->  weight (out, in): transpose
                        bias                          <->  bias
    BatchNormalization  gamma, beta                   <->  weight, bias
                        moving_mean, moving_variance  <->  running_mean, running_var
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterator, Mapping

import keras
import numpy as np

from resnet_multi.weights.canonical import WeightsError, check_state


def _conv_to_canonical(kernel: np.ndarray) -> np.ndarray:
    return kernel.transpose(3, 2, 0, 1)  # (kH, kW, I/groups, O) -> (O, I/groups, kH, kW)


def _conv_from_canonical(weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 1, 0)  # (O, I/groups, kH, kW) -> (kH, kW, I/groups, O)


# (layer type, canonical suffix, Keras attribute, Keras -> canonical, canonical -> Keras); None: as is.
_ROLES = (
    (keras.layers.Conv2D, "weight", "kernel", _conv_to_canonical, _conv_from_canonical),
    (keras.layers.Conv2D, "bias", "bias", None, None),
    (keras.layers.Dense, "weight", "kernel", np.transpose, np.transpose),  # (in, out) <-> (out, in)
    (keras.layers.Dense, "bias", "bias", None, None),
    (keras.layers.BatchNormalization, "weight", "gamma", None, None),  # None when affine-free
    (keras.layers.BatchNormalization, "bias", "beta", None, None),
    (keras.layers.BatchNormalization, "running_mean", "moving_mean", None, None),
    (keras.layers.BatchNormalization, "running_var", "moving_variance", None, None),
)


def _variables(model: keras.Model) -> Iterator[tuple[str, keras.Variable, object, object]]:
    """(canonical name, Keras variable, to canonical, from canonical) for every variable of the model."""
    for layer in model.layers:
        for kind, suffix, attr, to_canon, from_canon in _ROLES:
            variable = getattr(layer, attr, None) if isinstance(layer, kind) else None
            if variable is not None:  # Conv2D(use_bias=False).bias is None
                yield f"{layer.name}.{suffix}", variable, to_canon, from_canon


def to_canonical(model: keras.Model) -> dict[str, np.ndarray]:
    """Canonical name -> float32 numpy array in PyTorch layout."""
    state = {}
    for name, variable, to_canon, _ in _variables(model):
        value = np.asarray(variable.numpy(), dtype=np.float32)
        state[name] = np.ascontiguousarray(to_canon(value) if to_canon else value)
    return state


def from_canonical(model: keras.Model, state: Mapping[str, np.ndarray]) -> None:
    """Load a canonical state: checked whole against the spec and the model first, nothing assigned on error."""
    check_state(model.spec, state)
    updates = []
    for name, variable, _, from_canon in _variables(model):
        if name not in state:
            raise WeightsError(f"the Keras model has variable {name} that the state lacks; nothing loaded")
        value = np.asarray(state[name], dtype=np.float32)
        value = from_canon(value) if from_canon else value
        if tuple(value.shape) != tuple(variable.shape):
            raise WeightsError(f"{name}: Keras variable is {tuple(variable.shape)}, state gives {value.shape} "
                               f"after conversion; nothing loaded")
        updates.append((variable, np.ascontiguousarray(value)))
    if len(updates) != len(state):
        seen = {name for name, *_ in _variables(model)}
        extra = sorted(set(state) - seen)
        raise WeightsError(f"the Keras model has no variable for {', '.join(extra[:8])}; nothing loaded")
    for variable, value in updates:
        variable.assign(value)


# -- native files (resnet-multi convert) ----------------------------------------------------
#
# 'keras': our model's .weights.h5, as model.save_weights writes it. Keras 3 keys
# that file by layer type and position (layers/conv2d_3/vars/0) and loads it so, but
# stores each layer's name beside its variables: a file is first checked whole by
# those names (_check_layout: every missing, unexpected or mis-shaped tensor listed in
# canonical names), then loaded by Keras, then checked again: every variable filled.
# 'keras-applications': keras.applications ResNet50/101/152 and V2 (their own layer
# names, mapped by resnet_multi.interop): .weights.h5, or the legacy .h5 they ship.

_APPLICATIONS = {"resnet50_v1": "ResNet50", "resnet101_v1": "ResNet101", "resnet152_v1": "ResNet152",
                 "resnet50_v2": "ResNet50V2", "resnet101_v2": "ResNet101V2", "resnet152_v2": "ResNet152V2"}


def read_file(path: str | Path, spec, fmt: str) -> dict[str, np.ndarray]:
    """A Keras weights file -> canonical state (checked against the spec: all or nothing)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if fmt == "keras":
        _check_layout(path, spec, lambda name: name)  # our layers carry the canonical names
        model = _our_model(spec)
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
    elif fmt == "keras-applications":
        from resnet_multi.weights.zoo_names import canonical_from_keras, keras_applications_layer, modules

        _application_name(spec)
        _check_layout(path, spec, keras_applications_layer)
        app = _application(spec)
        _load(app, path, spec)
        state = {}
        for module in modules(spec):
            layer = app.get_layer(keras_applications_layer(module.name))
            state.update(canonical_from_keras(module, layer.get_weights()))
    else:
        raise WeightsError(f"the tensorflow backend reads 'keras' and 'keras-applications' files, not {fmt!r}")
    check_state(spec, state, source=str(path))
    return state


def write_file(state: Mapping[str, np.ndarray], path: str | Path, spec, fmt: str) -> None:
    """Canonical state -> a Keras .weights.h5 file, written atomically (never half a file)."""
    check_state(spec, state)
    path = Path(path)
    if not path.name.endswith(".weights.h5"):
        raise WeightsError(f"{path}: Keras 3 writes weights files named *.weights.h5")
    if fmt == "keras":
        model = _our_model(spec)
        from_canonical(model, state)
    elif fmt == "keras-applications":
        from resnet_multi.weights.zoo_names import keras_applications_layer, keras_variables, modules

        model = _application(spec)
        for module in modules(spec):
            model.get_layer(keras_applications_layer(module.name)).set_weights(keras_variables(module, state))
    else:
        raise WeightsError(f"the tensorflow backend writes 'keras' and 'keras-applications' files, not {fmt!r}")
    tmp = path.with_name(f".{path.name[:-len('.weights.h5')]}.partial.weights.h5")
    try:
        model.save_weights(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _our_model(spec) -> keras.Model:
    from .model import build

    return build(spec, device="cpu")


def _application_name(spec) -> str:
    if spec.name not in _APPLICATIONS:
        raise WeightsError(f"keras.applications has no {spec.name}; it has {', '.join(_APPLICATIONS)}")
    return _APPLICATIONS[spec.name]


def _application(spec) -> keras.Model:
    constructor = getattr(keras.applications, _application_name(spec))
    return constructor(weights=None, classes=spec.num_classes, input_shape=(224, 224, spec.in_channels))


def _load(model: keras.Model, path: Path, spec) -> None:
    try:
        with warnings.catch_warnings():  # Keras warns per skipped object before it raises
            warnings.simplefilter("ignore")
            model.load_weights(path)
    except (ValueError, KeyError, OSError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise WeightsError(f"{path}: not a Keras weights file of {spec.name} ({first}); nothing loaded") from None


def _dataset_count(path: Path) -> int:
    import h5py

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
# position. Both Keras weights files name their layers, though: a Keras 3 .weights.h5
# stores each layer's name on its "vars" group, the legacy .h5 lists "layer_names" and
# each layer's "weight_names". So the file's tensors are first mapped to canonical names
# (by shape only, nothing read) and checked with check_state: every missing, unexpected
# or mis-shaped tensor is listed, and nothing is loaded.


def _stored_shapes(path: Path, spec) -> dict[str, dict[int, tuple[int, ...]]] | None:
    """Layer name -> {variable index in Keras order: stored shape}; None if the file names no layers."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f  # a legacy whole-model .h5
            if "layer_names" in root.attrs:  # legacy: keras.applications' downloads, Keras 2 save_weights
                out = {}
                for raw in root.attrs["layer_names"]:
                    name = raw.decode() if isinstance(raw, bytes) else str(raw)
                    names = [w.decode() if isinstance(w, bytes) else str(w)
                             for w in root[name].attrs.get("weight_names", [])]
                    out[name] = {i: tuple(root[name][w].shape) for i, w in enumerate(names)}
                return out
            out = {}

            def visit(key, obj):
                if isinstance(obj, h5py.Group) and key.rsplit("/", 1)[-1] == "vars" and "name" in obj.attrs:
                    out[str(obj.attrs["name"])] = {int(k) if k.isdigit() else k: tuple(obj[k].shape) for k in obj
                                                   if isinstance(obj[k], h5py.Dataset)}

            f.visititems(visit)
            return out or None
    except (OSError, KeyError, ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise WeightsError(f"{path}: not a readable Keras weights file of {spec.name} ({first}); "
                           f"nothing loaded") from None


def _canonical_shape(module, index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A stored Keras variable's shape in canonical (PyTorch) layout; a kernel of the wrong rank as it is."""
    from resnet_multi.arch.plan import Conv, Linear

    if index == 0 and isinstance(module, Conv) and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if index == 0 and isinstance(module, Linear) and len(shape) == 2:
        return (shape[1], shape[0])
    return shape


def _canonical_names(module) -> list[str]:
    """A module's canonical tensor names in its Keras layer's variable order (get_weights())."""
    from resnet_multi.arch.plan import Conv, Norm

    if isinstance(module, Conv):
        keys = ["weight"] + (["bias"] if module.bias else [])
    elif isinstance(module, Norm):
        keys = (["weight", "bias"] if module.affine else []) + ["running_mean", "running_var"]
    else:
        keys = ["weight", "bias"]
    return [f"{module.name}.{k}" for k in keys]


def _check_layout(path: Path, spec, layer_name) -> None:
    """Refuse the file whole unless its tensors, mapped to canonical names, fit the spec exactly."""
    from resnet_multi.weights.zoo_names import modules

    stored = _stored_shapes(path, spec)
    if stored is None:  # a file that does not name its layers: load_weights judges it
        return
    seen: dict[str, np.ndarray] = {}
    placeholder = lambda shape: np.broadcast_to(np.float32(0), shape)  # noqa: E731 (a shape, no memory)
    known = set()
    for module in modules(spec):
        layer = layer_name(module.name)
        known.add(layer)
        names = _canonical_names(module)
        for i, shape in stored.get(layer, {}).items():
            key = names[i] if isinstance(i, int) and i < len(names) else f"{layer}/vars/{i}"
            seen[key] = placeholder(_canonical_shape(module, i, shape))
    for layer, shapes in stored.items():
        if layer not in known:
            for i, shape in shapes.items():
                seen[f"{layer}/vars/{i}"] = placeholder(shape)
    check_state(spec, seen, source=str(path))
