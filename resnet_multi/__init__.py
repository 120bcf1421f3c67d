"""resnet-multi: one ResNet/ResNeXt spec, lowered to PyTorch, Keras 3, Flax NNX and MXNet Gluon.

Importing this package imports no framework (numpy is loaded only by the
functions that compute). Backends load on first use:

    >>> import resnet_multi
    >>> spec = resnet_multi.get_spec("d2l_resnet18")
    >>> resnet_multi.layer_table(spec, spec.input_shape).total_params
    11178378
    >>> model = resnet_multi.build("resnet50", backend="flax")   # doctest: +SKIP
    >>> resnet_multi.backend("flax").forward(model, x)              # doctest: +SKIP
"""

from __future__ import annotations

from resnet_multi import faces
from resnet_multi.arch import presets
from resnet_multi.arch.plan import plan
from resnet_multi.arch.presets import register, resolve
from resnet_multi.arch.shapes import layer_table
from resnet_multi.arch.shapes import feature_info
from resnet_multi.arch.spec import BatchNorm, ResNetSpec, Stage, Stem, load_spec, save_spec, with_head
from resnet_multi.errors import BackendUnavailable, DeviceUnavailable, PrecisionUnavailable, SpecError, UserError
from resnet_multi.faces import BackendFace, backend
from resnet_multi.weights import registry

__version__ = "0.2.0"

__all__ = [
    "BackendFace", "BackendUnavailable", "BatchNorm", "DeviceUnavailable", "PrecisionUnavailable", "ResNetSpec",
    "SpecError", "Stage", "Stem", "UserError", "backend", "backend_names", "backend_of", "build", "feature_info",
    "for_inference", "get_spec",
    "layer_table", "list_presets", "load_spec", "load_weights", "plan", "register", "register_weights", "resolve", "save_spec",
    "save_weights", "weights_info", "with_head",
]


def get_spec(name_or_path) -> ResNetSpec:
    """A preset by name, or a spec read from a .json/.toml file."""
    return resolve(name_or_path)


def list_presets() -> list[str]:
    return presets.names()


def backend_names() -> list[str]:
    """Every backend name (installed or not); see resnet_multi.faces.available()."""
    return faces.names()


def build(name_or_spec, backend: str = "torch", device: str = "auto", seed: int = 0, state=None, weights=None,
          num_classes: int | None = None, features_only: bool = False, out_indices=None):
    """The native model of `backend` (torch, tensorflow, flax, mxnet) for a preset, file or spec.

    Its weights are the spec's seeded init, ``state`` (a canonical state dict) when given, or ``weights``:
    a weights name (``"torchvision/IMAGENET1K_V2"``: the registry's or one of ``register_weights``) or a
    local weights file's path, downloaded, verified and converted once (docs/weights.md).

    The head, as timm's ``create_model`` takes it: ``num_classes=K`` a new classifier of K classes (freshly
    initialised from ``seed``; every other tensor from the weights), ``num_classes=0`` no classifier (the
    model returns the pooled features, N x C), ``features_only=True`` a feature extractor returning the maps
    of ``out_indices`` (default every stage: 1 ... K; 0 is the stem) as a list, with ``model.feature_info``.
    """
    spec = resolve(name_or_spec)
    if out_indices is not None and not features_only:
        raise UserError("build: out_indices needs features_only=True")
    if features_only:
        indices = tuple(range(1, len(spec.stages) + 1)) if out_indices is None else out_indices
        try:
            target = with_head(spec, num_classes, features=indices)
        except SpecError as exc:  # name the argument the caller gave
            raise SpecError(f"out_indices: {str(exc).split(': ', 1)[-1]}") from None
    else:
        target = with_head(spec, num_classes)
    if weights is not None:
        if state is not None:
            raise UserError("build: pass state= or weights=, not both")
        from resnet_multi.run import fetch  # on use: downloads and conversions are not needed at import

        state = fetch.load(spec, weights)  # the whole network's, as the source published it
    if state is not None and target != spec:
        from resnet_multi.weights.canonical import with_new_head

        state = with_new_head(state, target, seed)
    return faces.backend(backend).build(target, device=device, seed=seed, state=state)


def register_weights(path_or_entries) -> list[registry.Entry]:
    """Add user weights entries: a TOML file of ``[[weights]]`` tables (zoo.toml's fields), or the tables."""
    return registry.register(path_or_entries)


def weights_info(arch, name: str) -> registry.Entry:
    """The entry of a weights name (``.preprocessing``, ``.categories``, ``.url``, ``.to_dict()``)."""
    return registry.get(resolve(arch).name, name)


# Where a native model's class comes from -> our backend name.
_FRAMEWORK_ROOTS = {"torch": "torch", "keras": "tensorflow", "tensorflow": "tensorflow", "flax": "flax",
                    "jax": "flax", "mxnet": "mxnet"}


def backend_of(model) -> str:
    """The backend that built a native model (from its class's module), e.g. 'flax'."""
    for cls in type(model).__mro__:
        root = cls.__module__.split(".")[0]
        if root in _FRAMEWORK_ROOTS:
            return _FRAMEWORK_ROOTS[root]
    raise UserError(f"{type(model).__name__} is not a model of any backend ({', '.join(faces.names())})")


def save_weights(model, path) -> None:
    """Write any backend's model to a canonical .safetensors file (names and layout of PyTorch)."""
    from resnet_multi.weights.canonical import save_state

    save_state(faces.backend(backend_of(model)).to_canonical(model), path, model.spec)


def load_weights(model, path) -> None:
    """Load a canonical .safetensors file into any backend's model; a file that does not fit is refused whole."""
    from resnet_multi.weights.canonical import load_state

    faces.backend(backend_of(model)).from_canonical(model, load_state(path, model.spec))


def for_inference(model, compile: bool = True):
    """The fast inference form of any backend's model, in the same framework: BNs folded into the
    convs, the framework's fastest layout and compilation; the same eval-mode output."""
    return faces.backend(backend_of(model)).for_inference(model, compile=compile)
