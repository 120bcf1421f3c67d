"""Backend name -> module, imported only when asked for.

Every backend is a package ``resnet_multi.backends.<name>`` with the same
files; ``model`` holds the lowering and the contract below. Importing this
module imports no framework.

The model module contract (the same for every framework):

    FRAMEWORK: str                              the framework's import name
    framework_version() -> str
    resolve_device(device) -> str               'auto' | 'cpu' | 'gpu' -> concrete, or DeviceUnavailable
    build(spec, device='auto') -> model         the native model, eval mode
    activations(model, x, train=False) -> dict  layer-table row -> activation (numpy, NCHW / (N, classes))
    row_counts(model) -> dict                   row -> (params, buffers) as the framework counts them
    device_of(model) -> str
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import BackendUnavailable

# backend name -> (modules that must import, extra that installs them)
BACKENDS: dict[str, tuple[tuple[str, ...], str]] = {
    "torch": (("torch",), "torch"),
    "tensorflow": (("tensorflow", "keras"), "tensorflow"),
    "flax": (("jax", "flax"), "flax"),
    "mxnet": (("mxnet",), "mxnet"),
}
ALIASES = {"pytorch": "torch", "tf": "tensorflow", "keras": "tensorflow", "jax": "flax", "gluon": "mxnet"}


def names() -> list[str]:
    return list(BACKENDS)


def canonical_name(name: str) -> str:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}")
    return key


def install_hint(name: str) -> str:
    return f'pip install "resnet-multi[{BACKENDS[canonical_name(name)][1]}]"'


def load(name: str, part: str = "model") -> ModuleType:
    """Import ``resnet_multi.backends.<name>.<part>``; a missing framework is one clear error."""
    key = canonical_name(name)
    for module in BACKENDS[key][0]:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise BackendUnavailable(
                f"backend {key!r} needs {module}, which is not installed here ({exc.__class__.__name__}: {exc}); "
                f"install it with: {install_hint(key)}"
            ) from None
    return importlib.import_module(f"resnet_multi.backends.{key}.{part}")


def available() -> list[str]:
    """Backends whose framework imports in this environment (imports them)."""
    found = []
    for key in BACKENDS:
        try:
            load(key)
        except BackendUnavailable:
            continue
        found.append(key)
    return found
