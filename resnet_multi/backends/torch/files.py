"""torch's own weight files: a state_dict saved with torch.save (format 'torch': .pt, .pth, .bin).

Ours, torchvision's and timm's share the canonical names, so a file is read
whole, unwrapped from a training checkpoint ('state_dict' / 'model') and
stripped of DataParallel or torch.compile prefixes, then checked against the
spec: every tensor fits, or nothing is returned. Read only with
torch.load(weights_only=True): tensors and plain containers, never arbitrary
pickled objects. Each tensor reaches check_state in the dtype the file holds
(int, bool, NaN are refused; float16/bfloat16/float64 converted and noted).
Written as torchvision's model.load_state_dict(strict=True) takes it, BN
counters included, through resnet_multi.files.atomic_write.
"""

from __future__ import annotations

import io
import pickle
import re
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from resnet_multi.arch.plan import Norm, plan
from resnet_multi.arch.spec import ResNetSpec
from resnet_multi.files import atomic_write
from resnet_multi.weights.canonical import State, WeightsError, check_state, read_weights_bytes, shown

from .weights import COUNTER, is_canonical

FORMATS = ("torch",)
# Containers a checkpoint may wrap its state_dict in (training scripts, timm, DeiT-style).
WRAPPERS = ("state_dict", "model")
# Prefixes of wrapped modules: DistributedDataParallel / DataParallel, torch.compile.
PREFIXES = ("module.", "_orig_mod.")


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise WeightsError(f"the torch backend reads and writes the format(s) {', '.join(FORMATS)}, not {fmt!r}")


# -- torch.load / torch.save -------------------------------------------------------------------


ZIP = b"PK\x03\x04"  # torch.save's format since 1.6; before it, a bare pickle (b"\x80" + protocol)
# What torch.load raises for bytes that are damaged, truncated or not its own (its zip reader, the unpickler).
LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, IndexError, TypeError,
               AttributeError, OSError, struct.error, OverflowError)


def load(path: Path) -> Any:
    """torch.load with weights_only=True; any failure is one line naming the file."""
    data = read_weights_bytes(path)
    if not (data.startswith(ZIP) or (data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))):
        raise WeightsError(f"{path}: not a torch file (torch.save writes a zip archive or a pickle; "
                           "this is neither)")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except LOAD_ERRORS as exc:
        text = str(exc).strip()
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if refused:  # a real pickle of objects weights_only will not build: never executed
            raise WeightsError(f"{path}: refused: the file holds pickled objects other than tensors "
                               f"({refused.group(1)}; read with torch.load(weights_only=True))") from None
        reason = re.search(r"WeightsUnpickler error: \s*(\S[^\n]*)", text)  # the cause under torch's advice
        first = reason.group(1) if reason else (text.splitlines() or ["no detail"])[0].split(". ")[0]
        raise WeightsError(f"{path}: not a readable torch weights file, damaged or truncated "
                           f"({type(exc).__name__}: {first[:200]})") from None


def save(obj: Any, path: Path) -> None:
    """torch.save, atomically: a crash never leaves half a file at `path`."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


# -- reading --------------------------------------------------------------------------------


def unwrap(obj: Any, path: Path) -> Mapping[str, Any]:
    """The state_dict inside a checkpoint: bare, or under 'state_dict' / 'model'."""
    for _ in range(3):  # e.g. {'model': {'state_dict': ...}}
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
                continue
        break
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: not a state_dict (a torch.save'd {type(obj).__name__})")
    others = [shown(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if others or not obj:
        detail = f"entries that are not tensors: {', '.join(others[:5])}" if others else "no tensors"
        raise WeightsError(f"{path}: not a state_dict ({detail}); expected name -> tensor, bare or under "
                           f"{' or '.join(repr(k) for k in WRAPPERS)}")
    return obj


def strip_prefixes(name: str) -> str:
    """'module._orig_mod.conv1.weight' -> 'conv1.weight' (any order, any repetition of PREFIXES)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    return name


def file_array(tensor: torch.Tensor) -> tuple[np.ndarray, str | None]:
    """A tensor as its file holds it: NumPy in its own dtype, and the dtype's name where NumPy has none.

    bfloat16 is widened exactly to float32 (and named, so check_state notes the
    conversion); float8 and other dtypes NumPy lacks become a shape only, which
    check_state refuses by the dtype named.
    """
    tensor = tensor.detach().cpu()
    name = str(tensor.dtype).removeprefix("torch.")
    if tensor.dtype == torch.bfloat16:
        return tensor.to(torch.float32).numpy(), name
    try:
        return tensor.numpy(), None
    except (TypeError, RuntimeError):  # no NumPy dtype, or not a dense tensor
        return np.broadcast_to(np.uint8(0), tuple(tensor.shape)), name


def read_file(path: str | Path, spec: ResNetSpec, fmt: str) -> State:
    """A torch.save'd state_dict (ours, torchvision's, timm's) -> canonical state, refused whole unless it fits."""
    check_format(fmt)
    path = Path(path)
    state_dict = unwrap(load(path), path)
    state: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for key, tensor in state_dict.items():
        name = strip_prefixes(str(key))
        if name in state:
            raise WeightsError(f"{path}: {shown(name)} appears twice (with and without a wrapper prefix)")
        if is_canonical(name):  # BN's num_batches_tracked counters are not weights: dropped
            state[name], dtype = file_array(tensor)
            if dtype is not None:
                dtypes[name] = dtype
    # torchvision's and timm's names are the canonical ones; dtypes and values are checked before any cast.
    return check_state(spec, state, source=str(path), dtypes=dtypes)


# -- writing --------------------------------------------------------------------------------


def state_dict(state: Mapping[str, np.ndarray], spec: ResNetSpec) -> OrderedDict[str, torch.Tensor]:
    """Canonical state -> a torchvision-style state_dict: model order, BN counters included (as zeros)."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for module in plan(spec).modules():
        leaves = [k for k in ("weight", "bias", "running_mean", "running_var") if f"{module.name}.{k}" in state]
        for leaf in leaves:
            # A copy of its own: the file holds exactly this tensor's bytes, not a larger array it views.
            out[f"{module.name}.{leaf}"] = torch.from_numpy(
                np.array(state[f"{module.name}.{leaf}"], dtype=np.float32, order="C"))
        if isinstance(module, Norm):
            out[f"{module.name}.{COUNTER}"] = torch.tensor(0, dtype=torch.long)
    return out


def write_file(state: Mapping[str, np.ndarray], path: str | Path, spec: ResNetSpec, fmt: str) -> None:
    """Canonical state -> a state_dict file that torchvision's model.load_state_dict(strict=True) takes."""
    check_format(fmt)
    check_state(spec, state)
    save(state_dict(state, spec), Path(path))
