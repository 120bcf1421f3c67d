"""Canonical state <-> the Gluon model's Parameters.

Gluon's layouts are PyTorch's (Conv2D weight (O, I/groups, kH, kW), Dense
weight (out, in)), so nothing is transposed; BN's gamma/beta are the
canonical weight/bias. Canonical names are resolved through the block
structure (``layer1.0.downsample.0`` is ``model.layer1[0].downsample[0]``),
never by parsing Gluon's prefixed parameter names.

Native files (``resnet-multi convert``): 'gluon' is our model's own
``.params`` file (``save_parameters``: structural names such as
``layer1.0.conv1.weight``); 'gluon-zoo' is a mxnet.gluon.model_zoo.vision
resnet*_v1/_v2 ``.params`` file, mapped by resnet_multi.interop. Either is
read with mx.nd.load and its names mapped to canonical ones; a file that does
not fit is refused whole, with every missing, unexpected and mis-shaped tensor
listed (check_state), and an unreadable one with a single line (WeightsError).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import mxnet as mx
import numpy as np

from resnet_multi.arch.plan import Conv, Linear, Norm, plan
from resnet_multi.arch.spec import ResNetSpec
from resnet_multi.errors import UserError
from resnet_multi.weights import zoo_names as interop
from resnet_multi.weights.canonical import WeightsError, check_state

FORMATS = ("gluon", "gluon-zoo")

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
    check_state(model.spec, state)
    params = parameters(model)
    for name, param in params.items():  # a model that no longer fits its own spec: refuse before writing
        if tuple(param.shape) != tuple(np.shape(state[name])):
            raise ValueError(f"{name}: Gluon parameter {param.name} has shape {param.shape}, "
                             f"the state has {tuple(np.shape(state[name]))}; nothing loaded")
    for name, param in params.items():
        param.set_data(mx.nd.array(np.asarray(state[name], dtype=np.float32), dtype="float32"))


# -- native files ---------------------------------------------------------------------


def _format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"the mxnet backend reads and writes {', '.join(FORMATS)}, not {fmt!r}")
    return fmt


def _gluon_names(spec: ResNetSpec) -> tuple[dict[str, str], dict[str, str]]:
    """Our model's .params names: (canonical name -> structural name, frozen structural name -> 'gamma'|'beta').

    The structural names are the ones save_parameters writes (``stem.conv1.weight``,
    ``layer1.0.bn1.gamma``), taken from an uninitialised model, matched to the
    canonical names by Parameter identity. Frozen: an affine-free BN's gamma
    and beta, which Gluon stores but the canonical state has not.
    """
    from .model import ResNet

    model = ResNet(spec)  # the structure is enough; nothing is initialised
    structural = {id(p): name for name, p in model._collect_params_with_prefix().items()}
    names = {c: structural[id(p)] for c, p in parameters(model).items()}
    used = set(names.values())
    frozen = {s: s.rsplit(".", 1)[-1] for s in structural.values() if s not in used}
    return names, frozen


def _to_canonical_names(raw: Mapping[str, np.ndarray], names: Mapping[str, str], frozen,
                        spec: ResNetSpec, source: str) -> dict[str, np.ndarray]:
    """File names -> canonical names; refuses the file whole, listing every missing, unexpected
    and mis-shaped tensor (check_state). A file name that is not the file's own name for any
    tensor is listed as unexpected under its own name."""
    canonical = {g: c for c, g in names.items()}
    state = {}
    for key, value in raw.items():
        if key in canonical:
            state[canonical[key]] = value
        elif key not in frozen:
            state[key if key not in names else f"{key} (stored as {names[key]})"] = value
    check_state(spec, state, source=source)
    return state


def read_file(path, spec: ResNetSpec, fmt: str = "gluon") -> dict[str, np.ndarray]:
    """A Gluon .params file -> canonical state (checked against the spec: all or nothing)."""
    path, fmt = Path(path), _format(fmt)
    try:
        params = mx.nd.load(str(path))
    except mx.base.MXNetError as exc:  # MXNet's message ends with the reason
        reason = (str(exc).strip().splitlines() or ["?"])[-1][:200]
        raise WeightsError(f"{path}: not a readable MXNet .params file ({reason})") from None
    if not isinstance(params, dict):
        raise WeightsError(f"{path}: holds an unnamed list of arrays, not named parameters")
    raw = {k: v.asnumpy().astype(np.float32) for k, v in params.items()}
    if fmt == "gluon-zoo":
        names = interop.gluon_zoo_names(spec)
        frozen = {}
        if "input_bn.running_mean" in names:  # v2's data BN: Gluon stores its frozen gamma and beta
            prefix = names["input_bn.running_mean"].rsplit(".", 1)[0]
            frozen = {f"{prefix}.gamma": "gamma", f"{prefix}.beta": "beta"}
        _to_canonical_names(raw, names, frozen, spec, str(path))
        try:  # the same mapping, and its check that the data BN's shift is zero
            state = interop.from_gluon_zoo(spec, raw)
        except UserError as exc:
            raise WeightsError(f"{path}: {exc}") from None
    else:
        names, frozen = _gluon_names(spec)
        state = _to_canonical_names(raw, names, frozen, spec, str(path))
        # An affine-free BN's gamma is ignored (fix_gamma); its beta is added: it must be zero.
        shifted = [k for k, kind in frozen.items() if kind == "beta" and k in raw and np.any(raw[k] != 0)]
        if shifted:
            raise WeightsError(f"{path}: {', '.join(shifted)} not zero: an affine-free BN of {spec.name} "
                               "has no shift; nothing loaded")
    check_state(spec, state, source=str(path))
    return state


def write_file(state: Mapping[str, np.ndarray], path, spec: ResNetSpec, fmt: str = "gluon") -> None:
    """Canonical state -> a Gluon .params file, written atomically (a temporary name, then a rename)."""
    from .model import build

    check_state(spec, state)
    fmt = _format(fmt)
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        if fmt == "gluon-zoo":
            mx.nd.save(str(tmp), {k: mx.nd.array(v, dtype="float32")
                                  for k, v in interop.to_gluon_zoo(spec, state).items()})
        else:
            model = build(spec, device="cpu")
            from_canonical(model, state)
            model.save_parameters(str(tmp))  # Gluon's own file: structural names
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
