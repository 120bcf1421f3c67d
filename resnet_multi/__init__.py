"""resnet-multi: one ResNet/ResNeXt spec, lowered to PyTorch, Keras 3, Flax NNX and MXNet Gluon.

Importing this package imports no framework (numpy is loaded only by the
functions that compute). Backends load on first use:

    >>> import resnet_multi
    >>> spec = resnet_multi.get_spec("d2l_resnet18")
    >>> resnet_multi.layer_table(spec, (1, 96, 96)).total_params
    11178378
    >>> model = resnet_multi.build("resnet50", backend="flax")   # doctest: +SKIP
"""

from __future__ import annotations

from . import presets, registry
from .errors import BackendUnavailable, DeviceUnavailable, SpecError, UserError
from .plan import plan
from .presets import register, resolve
from .shapes import layer_table
from .spec import BatchNorm, ResNetSpec, Stage, Stem, load_spec, save_spec

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable", "BatchNorm", "DeviceUnavailable", "ResNetSpec", "SpecError", "Stage", "Stem",
    "UserError", "backend_names", "build", "get_spec", "layer_table", "list_presets", "load_spec", "plan",
    "register", "resolve", "save_spec", "save_weights", "load_weights", "backend_of",
]


def get_spec(name_or_path) -> ResNetSpec:
    """A preset by name, or a spec read from a .json/.toml file."""
    return resolve(name_or_path)


def list_presets() -> list[str]:
    return presets.names()


def backend_names() -> list[str]:
    """Every backend name (installed or not); see registry.available()."""
    return registry.names()


def build(name_or_spec, backend: str = "torch", device: str = "auto"):
    """The native model of `backend` (torch, tensorflow, flax, mxnet) for a preset, file or spec."""
    spec = resolve(name_or_spec)
    return registry.load(backend).build(spec, device=device)


# Where a native model's class comes from -> our backend name.
_FRAMEWORK_ROOTS = {"torch": "torch", "keras": "tensorflow", "tensorflow": "tensorflow", "flax": "flax",
                    "jax": "flax", "mxnet": "mxnet"}


def backend_of(model) -> str:
    """The backend that built a native model (from its class's module), e.g. 'flax'."""
    for cls in type(model).__mro__:
        root = cls.__module__.split(".")[0]
        if root in _FRAMEWORK_ROOTS:
            return _FRAMEWORK_ROOTS[root]
    raise UserError(f"{type(model).__name__} is not a model of any backend ({', '.join(registry.names())})")


def save_weights(model, path) -> None:
    """Write any backend's model to a canonical .safetensors file (names and layout of PyTorch)."""
    from .weights import save_state

    native = registry.load(backend_of(model), "weights")
    save_state(native.to_canonical(model), path, model.spec)


def load_weights(model, path) -> None:
    """Load a canonical .safetensors file into any backend's model; a file that does not fit is refused whole."""
    from .weights import load_state

    native = registry.load(backend_of(model), "weights")
    native.from_canonical(model, load_state(path, model.spec))
