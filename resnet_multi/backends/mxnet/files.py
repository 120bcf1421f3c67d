"""MXNet's own weight files (``resnet-multi convert``): Gluon ``.params`` <-> canonical state.

'gluon' is our model's own ``.params`` file (``save_parameters``: structural
names such as ``stem.conv1.weight``, ``layer1.0.bn1.gamma``); 'gluon-zoo' is
a mxnet.gluon.model_zoo.vision resnet*_v1/_v2 ``.params`` file (and GluonCV's
ResNext, which has its layout); 'gluoncv-v1b' is a GluonCV ResNetV1b
``.params`` file (torchvision's names, ``bn1.gamma``); their names are
mapped by resnet_multi.weights.zoo_names. Each is read with mx.nd.load and
its names mapped to canonical ones; a file that does not fit is refused
whole, with every missing, unexpected and mis-shaped tensor listed, and
every tensor that is not float or not finite, checked as stored before any
cast (check_state), and an unreadable one with a single line (WeightsError).
Every write is atomic (resnet_multi.files.atomic_write).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import mxnet as mx
import numpy as np

from resnet_multi.arch.spec import ResNetSpec
from resnet_multi.errors import UserError
from resnet_multi.files import atomic_write
from resnet_multi.weights import zoo_names
from resnet_multi.weights.canonical import State, WeightsError, check_state, shown

from .model import ResNet, build
from .weights import parameters

FORMATS = ("gluon", "gluon-zoo", "gluoncv-v1b")


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
    model = ResNet(spec)  # the structure is enough; nothing is initialised
    # Gluon's own (underscored) walk, the one save_parameters names the file's tensors with.
    structural = {id(p): name for name, p in model._collect_params_with_prefix().items()}
    names = {c: structural[id(p)] for c, p in parameters(model).items()}
    used = set(names.values())
    frozen = {s: s.rsplit(".", 1)[-1] for s in structural.values() if s not in used}
    return names, frozen


def _to_canonical_names(raw: Mapping[str, np.ndarray], names: Mapping[str, str], frozen,
                        spec: ResNetSpec, source: str) -> State:
    """File names -> canonical names; refuses the file whole, listing every missing, unexpected
    and mis-shaped tensor (check_state). A file name that is not the file's own name for any
    tensor is listed as unexpected under its own name."""
    canonical = {g: c for c, g in names.items()}
    state = {}
    for key, value in raw.items():
        if key in canonical:
            state[canonical[key]] = value
        elif key not in frozen:
            state[shown(key) if key not in names else f"{shown(key)} (stored as {names[key]})"] = value
    return check_state(spec, state, source=source)


def read_file(path, spec: ResNetSpec, fmt: str = "gluon") -> State:
    """A Gluon .params file -> canonical state (checked against the spec: all or nothing)."""
    path, fmt = Path(path), _format(fmt)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        params = mx.nd.load(str(path))
    except mx.base.MXNetError as exc:  # MXNet's message ends with the reason
        reason = (str(exc).strip().splitlines() or ["?"])[-1][:200]
        raise WeightsError(f"{path}: not a readable MXNet .params file ({reason})") from None
    if not isinstance(params, dict):
        raise WeightsError(f"{path}: holds an unnamed list of arrays, not named parameters")
    raw = {k: v.asnumpy() for k, v in params.items()}  # as stored: check_state judges dtypes before any cast
    if fmt == "gluon-zoo":
        names = zoo_names.gluon_zoo_names(spec)
        frozen = {}
        if "input_bn.running_mean" in names:  # v2's data BN: Gluon stores its frozen gamma and beta
            prefix = names["input_bn.running_mean"].rsplit(".", 1)[0]
            frozen = {f"{prefix}.gamma": "gamma", f"{prefix}.beta": "beta"}
        notes = _to_canonical_names(raw, names, frozen, spec, str(path)).notes
        try:  # the same mapping, and its check that the data BN's shift is zero
            state = zoo_names.from_gluon_zoo(spec, raw)
        except UserError as exc:
            raise WeightsError(f"{path}: {exc}") from None
    elif fmt == "gluoncv-v1b":
        try:
            names = zoo_names.gluoncv_v1b_names(spec)
        except UserError as exc:
            raise WeightsError(f"{path}: {exc}") from None
        state = _to_canonical_names(raw, names, {}, spec, str(path))  # every missing, extra, mis-shaped one
        notes = state.notes
    else:
        names, frozen = _gluon_names(spec)
        state = _to_canonical_names(raw, names, frozen, spec, str(path))
        notes = state.notes
        # An affine-free BN's gamma is ignored (fix_gamma); its beta is added: it must be zero.
        shifted = [k for k, kind in frozen.items() if kind == "beta" and k in raw and np.any(raw[k] != 0)]
        if shifted:
            raise WeightsError(f"{path}: {', '.join(shifted)} not zero: an affine-free BN of {spec.name} "
                               "has no shift; nothing loaded")
    return State(check_state(spec, state, source=str(path)), notes)


def write_file(state: Mapping[str, np.ndarray], path, spec: ResNetSpec, fmt: str = "gluon") -> None:
    """Canonical state -> a Gluon .params file, written atomically."""
    check_state(spec, state)  # before anything is written
    fmt = _format(fmt)
    if fmt == "gluon-zoo":
        arrays = {k: mx.nd.array(v, dtype="float32") for k, v in zoo_names.to_gluon_zoo(spec, state).items()}
        atomic_write(path, lambda tmp: mx.nd.save(str(tmp), arrays))
    elif fmt == "gluoncv-v1b":
        arrays = {k: mx.nd.array(v, dtype="float32") for k, v in zoo_names.to_gluoncv_v1b(spec, state).items()}
        atomic_write(path, lambda tmp: mx.nd.save(str(tmp), arrays))
    else:
        model = build(spec, device="cpu", state=state)
        atomic_write(path, lambda tmp: model.save_parameters(str(tmp)))  # Gluon's own file: structural names
