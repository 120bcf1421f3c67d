"""Canonical weights: seeded initialisation, validation, and safetensors files.

A canonical state is a dict ``name -> float32 numpy array`` with the
canonical names of ``plan(spec)`` and PyTorch's layout: conv kernels
(O, I/groups, kH, kW), linear (out, in), BN weight/bias/running_mean/
running_var. Every backend converts to and from exactly this, so one file
runs in all four frameworks.

Every reader of weights (this module's ``load_state``, each backend's
``read_file`` and ``from_canonical``) goes through ``check_state``: names and
shapes (``check_tensors``), then dtypes and values (``check_values``), before
anything is cast. Tensors that are not floating point or hold NaN/inf are
refused; float16, bfloat16 and float64 are converted to float32, and the
``State`` returned says so in its ``notes``.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from resnet_multi.arch.plan import Conv, Linear, Norm, plan
from resnet_multi.arch.spec import ResNetSpec, spec_from_dict
from resnet_multi.errors import SpecError, UserError
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


def head_names(spec: ResNetSpec) -> list[str]:
    """The canonical names of the tensors whose shape follows the number of classes (the head)."""
    if spec.features or not spec.num_classes:
        return []
    now = expected_shapes(spec)
    other = expected_shapes(spec.replace(num_classes=spec.num_classes + 1))
    return [k for k, shape in now.items() if other.get(k) != shape]


def with_new_head(pretrained: Mapping[str, np.ndarray], spec: ResNetSpec, seed: int) -> dict[str, np.ndarray]:
    """``spec``'s canonical state from a whole network's ``pretrained`` one (fine-tuning, backbones).

    The head (``spec.num_classes`` classes) comes fresh from the spec's seeded init; every other
    tensor of ``spec`` from ``pretrained``. Tensors ``spec`` does not have (a backbone's head, a
    feature extractor's later stages) are left out.
    """
    fresh = init_weights(spec, seed)
    head = set(head_names(spec))
    missing = sorted(k for k in fresh if k not in head and k not in pretrained)
    if missing:
        raise WeightsError(f"the pretrained weights lack {', '.join(missing[:8])} of {spec.name}")
    return {k: (v if k in head else np.asarray(pretrained[k], dtype=np.float32)) for k, v in fresh.items()}


class State(dict):
    """A canonical state as the readers return it: float32 arrays, and ``notes`` on what was converted."""

    def __init__(self, arrays: Mapping[str, np.ndarray] | Iterable = (), notes: Iterable[str] = ()):
        super().__init__(arrays)
        self.notes: list[str] = list(notes)


def shown(name: Any, limit: int = 80) -> str:
    """A tensor name fit for a one-line message: odd characters escaped, long names cut."""
    text = str(name)
    text = text if text.isprintable() else repr(text)
    return text if len(text) <= limit else text[:limit] + "..."


def _listed(items: list[str], limit: int = 8) -> str:
    return ", ".join(items[:limit]) + (" ..." if len(items) > limit else "")


def check_tensors(want: Mapping[str, tuple[int, ...]], state: Mapping[str, np.ndarray], what: str) -> None:
    """Raise WeightsError listing every missing, unexpected or mis-shaped tensor (all or nothing).

    ``what`` starts the message, e.g. "weights.safetensors do not fit resnet50".
    """
    missing = [shown(k) for k in want if k not in state]
    unexpected = [shown(k) for k in state if k not in want]
    misshaped = [f"{shown(k)} {tuple(np.shape(state[k]))} (expected {tuple(want[k])})"
                 for k in want if k in state and tuple(np.shape(state[k])) != tuple(want[k])]
    problems = [f"{label} {len(items)}: {_listed(items)}"
                for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
                if items]
    if problems:
        raise WeightsError(f"{what}, nothing loaded: " + "; ".join(problems))


# The dtypes a weights file may hold: float32 as it is, these converted to float32 (and said so).
FLOAT32 = "float32"
CONVERTED = ("float16", "bfloat16", "float64")


def check_values(state: Mapping[str, Any], source: str = "weights",
                 dtypes: Mapping[str, str] | None = None) -> State:
    """The state as float32, or a WeightsError naming every tensor that is not float or not finite.

    This is the one check of dtypes and values: every reader calls it (through
    check_state) before its own cast. ``dtypes`` gives a tensor's dtype in its
    file where the reader had to change it to reach NumPy (torch's bfloat16
    arrives as float32, a safetensors float8 as a placeholder): the file's
    dtype is judged. float16, bfloat16 and float64 are converted, each dtype
    one note; a float64 value beyond float32's range is refused, never
    turned into inf.
    """
    dtypes = dtypes or {}
    wrong, nonfinite, overflow = [], [], []
    converted: dict[str, list[str]] = {}
    out = State(notes=getattr(state, "notes", ()))
    for name, value in state.items():
        array = np.asarray(value)
        dtype = dtypes.get(name, array.dtype.name)
        if dtype != FLOAT32 and dtype not in CONVERTED:
            wrong.append(f"{shown(name)} ({shown(dtype, 20)})")
            continue
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, not warned about
            cast = np.asarray(array, dtype=np.float32)
        if not np.isfinite(cast).all():
            beyond = array.dtype == np.float64 and bool(np.isfinite(array).all())
            (overflow if beyond else nonfinite).append(shown(name))
        if dtype != FLOAT32:
            converted.setdefault(dtype, []).append(shown(name))
        out[name] = cast
    problems = [f"{label} {len(items)}: {_listed(items)}"
                for label, items in (("not floating point", wrong), ("NaN or inf", nonfinite),
                                     ("beyond float32's range", overflow)) if items]
    if problems:
        raise WeightsError(f"{source}: refused whole, nothing loaded: " + "; ".join(problems))
    out.notes += [f"{len(names)} {dtype} tensor{'s' if len(names) > 1 else ''} converted to float32 "
                  f"({_listed(names, 3)})" for dtype, names in converted.items()]
    return out


def check_state(spec: ResNetSpec, state: Mapping[str, Any], source: str = "weights",
                dtypes: Mapping[str, str] | None = None) -> State:
    """The state as float32 if it fits the spec whole: names and shapes, then dtypes and values.

    Raises WeightsError listing every missing, unexpected or mis-shaped tensor,
    or every tensor that is not floating point or not finite (check_values).
    """
    want = expected_shapes(spec)
    check_tensors(want, state, f"{source} do not fit {spec.name}")
    ordered = State({k: state[k] for k in want}, getattr(state, "notes", ()))  # the model's order, whatever the file's
    return check_values(ordered, source, dtypes)


def save_state(state: Mapping[str, np.ndarray], path: str | Path, spec: ResNetSpec | None = None,
               notes: Iterable[str] = ()) -> Path:
    """Write a canonical safetensors file (atomically: a crash never leaves half a file).

    The state is checked first (check_state with a spec, else check_values): no
    canonical file holds NaN or an integer tensor. ``notes`` (convert's middle
    file) travel in the metadata; read them back with ``file_metadata``.
    """
    from safetensors.numpy import save

    path = Path(path)
    checked = check_state(spec, state) if spec is not None else check_values(state)
    metadata = {"format": FORMAT}
    if spec is not None:
        metadata["spec"] = json.dumps(spec.to_dict())
    if notes:
        metadata["notes"] = json.dumps(list(notes))
    blob = save({k: np.ascontiguousarray(v) for k, v in checked.items()}, metadata=metadata)
    return atomic_write(path, blob)


def read_weights_bytes(path: str | Path) -> bytes:
    """The bytes of a weights file, or a one-line WeightsError naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read weights file ({exc.strerror or exc})") from None


# safetensors dtype -> NumPy (little-endian, as the format is); others (BF16, float8) are decoded or refused below.
_NUMPY_DTYPES = {"BOOL": "?", "U8": "u1", "I8": "i1", "U16": "<u2", "I16": "<i2", "U32": "<u4", "I32": "<i4",
                 "U64": "<u8", "I64": "<i8", "F16": "<f2", "F32": "<f4", "F64": "<f8", "C64": "<c8"}


def _decode(info: Mapping[str, Any]) -> tuple[np.ndarray, str | None]:
    """A deserialized safetensors tensor -> (array, its dtype name where the array's own differs)."""
    kind, shape, data = info["dtype"], tuple(info["shape"]), info["data"]
    if kind in _NUMPY_DTYPES:
        return np.frombuffer(data, dtype=_NUMPY_DTYPES[kind]).reshape(shape), None
    if kind == "BF16":  # bfloat16 is the top half of a float32: widened exactly
        bits = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape), "bfloat16"
    return np.broadcast_to(np.uint8(0), shape), str(kind).lower()  # a shape only: refused by its dtype


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, str]]:
    """(tensors as stored, the dtypes check_values must judge instead, metadata) of a safetensors file."""
    from safetensors import SafetensorError, deserialize

    data = read_weights_bytes(path)
    try:
        tensors = deserialize(data)  # checks the header, the offsets and the sizes
    except SafetensorError as exc:
        detail = (str(exc).strip().splitlines() or ["no detail"])[0][:200]
        raise WeightsError(f"{path}: not a readable safetensors file ({detail})") from None
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])  # valid: deserialize parsed it
    state, dtypes = {}, {}
    for name, info in sorted(tensors, key=lambda item: header[item[0]]["data_offsets"]):  # the file's order
        state[name], dtype = _decode(info)
        if dtype is not None:
            dtypes[name] = dtype
    return state, dtypes, dict(header.get("__metadata__") or {})


def load_state(path: str | Path, spec: ResNetSpec | None = None) -> State:
    """Read a canonical safetensors file; with a spec, refuse it whole unless it fits.

    Refused too: tensors that are not floating point or hold NaN/inf. float16,
    bfloat16 and float64 tensors are converted to float32; the State's
    ``notes`` say which.
    """
    path = Path(path)
    state, dtypes, _ = _read(path)
    if spec is not None:
        return check_state(spec, state, source=str(path), dtypes=dtypes)
    return check_values(state, source=str(path), dtypes=dtypes)


def file_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a canonical file, or a one-line WeightsError naming it."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    read_weights_bytes(path)  # a missing or unreadable file: the same one line as load_state's
    try:
        with safe_open(str(path), framework="numpy") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as exc:
        detail = (str(exc).strip().splitlines() or ["no detail"])[0][:200]
        raise WeightsError(f"{path}: not a readable safetensors file ({detail})") from None


def file_spec(path: str | Path) -> ResNetSpec | None:
    """The spec stored in a canonical file's metadata, if any; a bad one is a one-line UserError naming the file."""
    meta = file_metadata(path)
    if "spec" not in meta:
        return None
    try:
        data = json.loads(meta["spec"])
    except (ValueError, RecursionError) as exc:
        raise WeightsError(f"{path}: the spec in its metadata is not valid JSON ({str(exc)[:200]})") from None
    try:
        return spec_from_dict(data)
    except SpecError as exc:
        raise SpecError(f"{path}: the spec in its metadata: {exc}") from None
