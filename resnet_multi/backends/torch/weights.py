"""Canonical state <-> the torch model's state_dict, and torch's own weight files.

PyTorch's layout IS the canonical one and the model's state_dict keys ARE the
canonical names, so nothing is renamed or transposed. The only difference is
BN's num_batches_tracked buffer, which torch keeps and the canonical state
does not (it is a counter, not a weight).

Files (format 'torch': .pt, .pth, .bin): a state_dict saved with torch.save,
ours or torchvision's or timm's, which share the canonical names. Read only
with torch.load(weights_only=True): tensors and plain containers, never
arbitrary pickled objects.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from resnet_multi.arch.plan import Norm
from resnet_multi.arch.spec import ResNetSpec
from resnet_multi.weights.canonical import WeightsError, check_state
from resnet_multi.weights.zoo_names import from_torchvision, modules

_NOT_CANONICAL = "num_batches_tracked"


def _canonical_keys(model: torch.nn.Module) -> list[str]:
    return [k for k in model.state_dict() if not k.endswith(_NOT_CANONICAL)]


def to_canonical(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """name -> float32 numpy copy, canonical names, PyTorch layout."""
    state = model.state_dict()
    return {k: state[k].detach().to("cpu", torch.float32).numpy().copy() for k in _canonical_keys(model)}


def from_canonical(model: torch.nn.Module, state: Mapping[str, np.ndarray]) -> None:
    """Load a canonical state into the model: all or nothing (checked against model.spec first)."""
    check_state(model.spec, state)
    keys = _canonical_keys(model)
    if set(keys) != set(state):  # the model disagrees with its own spec: a bug here, not bad input
        raise WeightsError(f"torch model of {model.spec.name} has names outside the canonical state: "
                           f"{sorted(set(keys) ^ set(state))[:8]}")
    tensors = {k: torch.from_numpy(np.ascontiguousarray(state[k], dtype=np.float32)) for k in keys}
    with torch.no_grad():
        own = model.state_dict()
        for k in keys:
            own[k].copy_(tensors[k])  # copies onto the model's device; shapes were checked above


# -- native files ------------------------------------------------------------------------

FORMATS = ("torch",)
# Containers a checkpoint may wrap its state_dict in (training scripts, timm, DeiT-style).
_WRAPPERS = ("state_dict", "model")
# Prefixes of wrapped modules: DistributedDataParallel / DataParallel, torch.compile.
_PREFIXES = ("module.", "_orig_mod.")


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise WeightsError(f"the torch backend reads and writes the format(s) {', '.join(FORMATS)}, not {fmt!r}")


def _load(path: Path) -> Any:
    """torch.load with weights_only=True; any failure is one line naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read weights file ({exc.strerror or exc})") from None
    except Exception as exc:  # torch/pickle raise many types for corrupt, truncated or foreign files
        text = str(exc).strip()
        if "Weights only load failed" in text:
            raise WeightsError(f"{path}: refused: the file holds pickled objects other than tensors "
                               "(read with torch.load(weights_only=True))") from None
        first = text.splitlines()[0][:200] if text else "no detail"
        raise WeightsError(f"{path}: not a readable torch weights file ({type(exc).__name__}: {first})") from None


def _unwrap(obj: Any, path: Path) -> Mapping[str, Any]:
    """The state_dict inside a checkpoint: bare, or under 'state_dict' / 'model'."""
    for _ in range(3):  # e.g. {'model': {'state_dict': ...}}
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
                continue
        break
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: not a state_dict (a torch.save'd {type(obj).__name__})")
    others = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if others or not obj:
        detail = f"entries that are not tensors: {', '.join(others[:5])}" if others else "no tensors"
        raise WeightsError(f"{path}: not a state_dict ({detail}); expected name -> tensor, bare or under "
                           f"{' or '.join(repr(k) for k in _WRAPPERS)}")
    return obj


def _strip(name: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    return name


def read_file(path: str | Path, spec: ResNetSpec, fmt: str = "torch") -> dict[str, np.ndarray]:
    """A torch.save'd state_dict (ours, torchvision's, timm's) -> canonical state, refused whole unless it fits."""
    _check_format(fmt)
    path = Path(path)
    state_dict = _unwrap(_load(path), path)
    renamed: dict[str, np.ndarray] = {}
    for key, tensor in state_dict.items():
        name = _strip(str(key))
        if name in renamed:
            raise WeightsError(f"{path}: {name!r} appears twice (with and without a wrapper prefix)")
        renamed[name] = tensor.detach().to("cpu", torch.float32).numpy()  # bf16/fp16 files too
    state = from_torchvision(renamed)  # drops BN's num_batches_tracked counters
    check_state(spec, state, source=str(path))
    return state


def _state_dict(state: Mapping[str, np.ndarray], spec: ResNetSpec) -> OrderedDict[str, torch.Tensor]:
    """Canonical state -> a torchvision-style state_dict: model order, BN counters included (as zeros)."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for module in modules(spec):
        leaves = [k for k in ("weight", "bias", "running_mean", "running_var") if f"{module.name}.{k}" in state]
        for leaf in leaves:
            out[f"{module.name}.{leaf}"] = torch.from_numpy(
                np.array(state[f"{module.name}.{leaf}"], dtype=np.float32, order="C"))
        if isinstance(module, Norm):
            out[f"{module.name}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return out


def write_file(state: Mapping[str, np.ndarray], path: str | Path, spec: ResNetSpec, fmt: str = "torch") -> None:
    """Canonical state -> a state_dict file that torchvision's model.load_state_dict(strict=True) takes.

    Atomic: written to a temporary file in the same folder, then renamed over `path`.
    """
    _check_format(fmt)
    check_state(spec, state)
    path = Path(path)
    state_dict = _state_dict(state, spec)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        torch.save(state_dict, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
