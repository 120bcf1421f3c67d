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
import importlib.util
import os
import sys
from pathlib import Path
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
    if key == "tensorflow":
        # Keras 3 picks its backend at first import: ours is TensorFlow unless the user chose.
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    for module in BACKENDS[key][0]:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise BackendUnavailable(
                f"backend {key!r} needs {module}, which is not installed here ({exc.__class__.__name__}: {exc}); "
                f"install it with: {install_hint(key)}"
            ) from None
    _ensure_backends_package()
    return importlib.import_module(f"resnet_multi.backends.{key}.{part}")


def _ensure_backends_package() -> None:
    """Make resnet_multi.backends importable from a source checkout that was never installed.

    Installed (pip install . or -e .), backends/ is resnet_multi.backends. Run
    straight from a checkout (e.g. ``python -m resnet_multi.gpucheck`` on a
    machine where nothing can be installed), map it by hand.
    """
    if "resnet_multi.backends" in sys.modules or importlib.util.find_spec("resnet_multi.backends"):
        return
    folder = Path(__file__).resolve().parent.parent / "backends"
    spec = importlib.util.spec_from_file_location(
        "resnet_multi.backends", folder / "__init__.py", submodule_search_locations=[str(folder)])
    if spec is None or spec.loader is None or not folder.is_dir():
        raise BackendUnavailable(f"resnet_multi.backends is not installed and {folder} does not exist")
    module = importlib.util.module_from_spec(spec)
    sys.modules["resnet_multi.backends"] = module
    spec.loader.exec_module(module)
    sys.modules["resnet_multi"].backends = module  # type: ignore[attr-defined]


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
