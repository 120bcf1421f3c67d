"""What the four backends share, written once (as Keras keeps its backend/common).

Framework-free: device strings, the bench modes, precision checks, the names
and the check of the optimizer state, and the attribute name of a layer
inside its block.
The core's own shared pieces a backend also uses live in the core:
``resnet_multi.files.atomic_write`` (every writer), the kernel layouts in
``resnet_multi.weights.layouts`` and ``resnet_multi.timing``.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping

from resnet_multi.arch.plan import plan
from resnet_multi.arch.spec import ResNetSpec
from resnet_multi.errors import DeviceUnavailable, PrecisionUnavailable, UserError
from resnet_multi.weights.canonical import WeightsError, check_tensors

# -- devices ---------------------------------------------------------------------------

DEVICE_FORMS = "auto, cpu, gpu or gpu:N (cuda and cuda:N are the same as gpu)"


def parse_device(device: str, gpu_count: int, framework: str, hint: str = "", cpu_count: int = 1
                 ) -> tuple[str, int]:
    """A device string -> ('cpu', N) or ('gpu', N), the same accepted forms in every backend.

    'auto' is the first GPU when there is one, else the CPU; 'cpu' and 'cpu:N'
    a CPU device (``cpu_count`` of them: JAX can split the host into several);
    'gpu', 'gpu:N', 'cuda', 'cuda:N' a GPU, which must be there.
    Anything else, or an absent GPU, is a DeviceUnavailable naming what
    ``framework`` sees; ``hint`` ends that message (e.g. which build to install).
    """
    name = str(device).strip().lower()
    if name == "auto":
        return ("gpu", 0) if gpu_count else ("cpu", 0)
    kind, colon, index = name.partition(":")
    kind = "gpu" if kind == "cuda" else kind
    if kind not in ("cpu", "gpu") or (colon and not index.isdigit()):
        raise DeviceUnavailable(f"unknown device {device!r}; use {DEVICE_FORMS}")
    number = int(index or 0)
    if kind == "cpu":
        if number >= cpu_count:
            raise DeviceUnavailable(f"device {device!r} is not there: {framework} sees {cpu_count} CPU device(s)")
        return "cpu", number
    if not gpu_count:
        raise DeviceUnavailable(f"device {device!r} asked for, but {framework} sees no GPU here"
                                + (f" ({hint})" if hint else ""))
    if number >= gpu_count:
        raise DeviceUnavailable(f"device {device!r} is not there: {framework} sees {gpu_count} GPU(s)")
    return "gpu", number


# -- benchmarks and precisions -------------------------------------------------------------

MODES = ("infer", "train")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def check_precision(precision: str, supported: Iterable[str], backend: str) -> str:
    """``precision`` if this backend runs it, else PrecisionUnavailable naming what it runs."""
    supported = tuple(supported)
    if precision not in supported:
        raise PrecisionUnavailable(f"the {backend} backend runs precision {', '.join(supported)}, "
                                   f"not {precision!r}")
    return precision


# -- optimizer state -------------------------------------------------------------------------

MOMENTUM_PREFIX = "momentum."


def momentum_shapes(spec: ResNetSpec) -> dict[str, tuple[int, ...]]:
    """'momentum.<canonical parameter name>' -> the buffer's shape: what optimizer_state() holds."""
    return {MOMENTUM_PREFIX + name: tuple(shape) for name, shape in plan(spec).param_shapes().items()}


def check_momentum_state(spec: ResNetSpec, state: Mapping[str, object], momentum: float) -> None:
    """The all-or-nothing check of load_optimizer_state, the same in every backend.

    An empty state is always fine (it clears the buffers). Otherwise every
    trainable parameter needs its buffer with the parameter's shape, and the
    step must have momentum: plain SGD keeps no buffers to load them into.
    """
    if not state:
        return
    check_tensors(momentum_shapes(spec), state, f"optimizer state does not fit {spec.name}")
    if not momentum:
        raise WeightsError(f"optimizer state holds {len(state)} momentum buffers, but this step's SGD has "
                           "momentum 0; nothing loaded")


def momentum_of(name: str) -> str:
    """'momentum.layer1.0.conv1.weight' -> 'layer1.0.conv1.weight'."""
    return name[len(MOMENTUM_PREFIX):] if name.startswith(MOMENTUM_PREFIX) else name


# -- names ------------------------------------------------------------------------------------


def leaf_name(name: str) -> str:
    """A layer's attribute name inside its block: 'layer1.0.conv1' -> 'conv1'."""
    return name.rsplit(".", 1)[-1]


# -- data parallel -------------------------------------------------------------------------------


def parallel_device_kind(device: str, gpu_count: int, framework: str) -> str:
    """'cpu' or 'gpu': the kind of device each worker of a data-parallel run takes one of.

    'auto' is the GPUs when there are any, else the CPU; 'cpu' and 'gpu' (or 'cuda') name the kind;
    a numbered device ('gpu:1') is one device, not a set of workers: a DeviceUnavailable.
    """
    name = str(device).strip().lower()
    if ":" in name:
        raise DeviceUnavailable(f"device {device!r} is one device; a data-parallel run gives each worker one "
                                f"of its own: pass --device gpu, cpu or auto")
    kind, _ = parse_device(name, gpu_count, framework)
    return kind


# -- data parallel ---------------------------------------------------------------------


def dist_timeout_s() -> float:
    """RESNET_MULTI_DIST_TIMEOUT seconds (default 120): the bound on set-up and on every collective or
    meeting of the workers, in every engine; anything but a number above 0 is a one-line UserError."""
    text = os.environ.get("RESNET_MULTI_DIST_TIMEOUT", "")
    try:
        value = float(text) if text else 120.0
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UserError(f"RESNET_MULTI_DIST_TIMEOUT must be a number of seconds above 0, got {text!r}")
    return value


# -- benchmarks --------------------------------------------------------------------------


def conv_gflops(shape: tuple[int, int, int, int], seconds: float) -> float:
    """GFLOP/s of one unstrided 3x3 conv of an (N, C, H, W) batch to C channels done in ``seconds``."""
    n, c, h, w = shape
    return 2 * n * h * w * c * c * 9 / seconds / 1e9
