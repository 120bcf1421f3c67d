"""One face per backend: the same attributes for all four frameworks, loaded lazily.

``resnet_multi.backend("flax")`` returns the flax ``BackendFace``. Making one
imports nothing; the framework is imported on the first call that needs it,
and a missing one is a ``BackendUnavailable`` naming the extra to install.
Every part of the core that drives a framework goes through a face, so the
core never imports a backend module by name (docs/architecture.md).

Behind the face, every backend is the package ``resnet_multi.backends.<name>``
with the same files (docs/backends.md):

    model.py    the lowering (stem, block, stage, head, build) and the model functions
    weights.py  canonical state <-> the live model's variables
    files.py    the framework's own weight files
    train.py    TrainStep (one SGD step) and its optimizer state
    infer.py    the inference fast path: the folded model, compiled the framework's fastest way
    bench.py    timed inference and training, and the framework's own ResNet-50
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import re
import sys
import tempfile
from types import ModuleType
from typing import Any, Mapping

from resnet_multi.arch.plan import plan
from resnet_multi.arch.spec import ResNetSpec
from resnet_multi.errors import BackendUnavailable

# backend name -> (modules that must import, the extra that installs them)
BACKENDS: dict[str, tuple[tuple[str, ...], str]] = {
    "torch": (("torch",), "torch"),
    "tensorflow": (("tensorflow", "keras"), "tensorflow"),
    "flax": (("jax", "flax"), "flax"),
    "mxnet": (("mxnet",), "mxnet"),
}
ALIASES = {"pytorch": "torch", "tf": "tensorflow", "keras": "tensorflow", "jax": "flax", "gluon": "mxnet"}
PARTS = ("model", "weights", "files", "train", "infer", "bench")


def names() -> list[str]:
    return list(BACKENDS)


def canonical_name(name: str) -> str:
    """'tf' -> 'tensorflow'; an unknown name is a BackendUnavailable listing the known ones."""
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}")
    return key


def install_hint(name: str) -> str:
    # The package index form, and the one that works from a checkout until the package is published.
    extra = BACKENDS[canonical_name(name)][1]
    return f'pip install "resnet-multi[{extra}]" (from a checkout: pip install ".[{extra}]")'


def importable(name: str) -> bool:
    """Whether the backend's framework is installed here (finds it, imports nothing)."""
    return all(importlib.util.find_spec(m) is not None for m in BACKENDS[canonical_name(name)][0])


class BackendFace:
    """A backend's whole contract. Arrays in and out are NumPy: images NCHW float32, labels int."""

    def __init__(self, name: str):
        self.name = canonical_name(name)
        self.extra = BACKENDS[self.name][1]

    def __repr__(self) -> str:
        return f"<backend {self.name}>"

    def module(self, part: str) -> ModuleType:
        """``resnet_multi.backends.<name>.<part>``, imported on first use."""
        if part not in PARTS:
            raise ValueError(f"a backend has the parts {', '.join(PARTS)}, not {part!r}")
        return _load(self.name, part)

    # -- the model ---------------------------------------------------------------------

    def build(self, spec: ResNetSpec, device: str = "auto", seed: int = 0,
              state: Mapping[str, Any] | None = None):
        """The native model in inference mode: the spec's seeded init, or ``state`` (a canonical state) instead."""
        return self.module("model").build(spec, device=device, seed=seed, state=state)

    def forward(self, model, x, train: bool = False):
        """What the model returns: logits (N, classes); the pooled features (N, C) with num_classes 0; a
        feature extractor's (spec.features) list of NCHW maps. train=True: BN uses batch statistics and
        updates its running ones."""
        return self.module("model").forward(model, x, train=train)

    def forward_features(self, model, x):
        """The NCHW map that global pooling reads: the last stage's output (after the final BN-ReLU of a
        pre-activation net; a feature extractor's last row)."""
        return self.activations(model, x)[plan(model.spec).pooled_row]

    def activations(self, model, x, train: bool = False) -> dict:
        """Every layer-table row's output in order ('stem', 'layer1.0', ..., 'avgpool', 'fc'), NCHW."""
        return self.module("model").activations(model, x, train=train)

    def row_counts(self, model) -> dict[str, tuple[int, int]]:
        """Row -> (trainable params, BN running-stat elements), counted from the framework's variables."""
        return self.module("model").row_counts(model)

    def device_of(self, model) -> str:
        return self.module("model").device_of(model)

    def resolve_device(self, device: str = "auto") -> str:
        """'auto' | 'cpu' | 'gpu' | 'gpu:N' (also 'cuda[:N]') -> this framework's device string."""
        return self.module("model").resolve_device(device)

    def devices(self) -> list[str]:
        """The devices this framework sees here, in its own spelling ('cpu', 'cuda:0', 'GPU:0', ...)."""
        return self.module("model").devices()

    def version(self) -> str:
        return self.module("model").framework_version()

    def for_inference(self, model, compile: bool = True):
        """A model of this framework computing ``model``'s eval-mode output, faster: every BN that
        follows a conv folded into it (resnet_multi.weights.fold), in the framework's fastest layout
        and compilation for inference (infer.py). compile=False: no compiler step that costs more
        than a call or two gains (torch.compile, one whole-model jit, oneDNN partitioning), for
        one-off use such as ``predict``. Inference only; the plain model is left as it was."""
        return self.build_for_inference(model.spec, self.device_of(model), self.to_canonical(model), compile)

    def build_for_inference(self, spec: ResNetSpec, device: str = "auto", state: Mapping[str, Any] | None = None,
                            compile: bool = True, seed: int = 0):
        """``for_inference(build(spec, device, seed, state))`` without building the plain model first."""
        from resnet_multi.weights.canonical import init_weights
        from resnet_multi.weights.fold import fold_state

        folded, folded_state = fold_state(spec, init_weights(spec, seed) if state is None else state)
        return self.module("infer").fast(self.build(folded, device=device, state=folded_state), compile=compile)

    # -- weights: canonical state <-> the live model, and the framework's own files -----

    def to_canonical(self, model) -> dict:
        """Every parameter and running statistic: canonical names, PyTorch layout, float32."""
        return self.module("weights").to_canonical(model)

    def from_canonical(self, model, state: Mapping[str, Any]) -> None:
        """Load a canonical state into the model: all or nothing."""
        self.module("weights").from_canonical(model, state)

    @property
    def formats(self) -> tuple[str, ...]:
        """The weight-file formats this backend reads and writes (see ``resnet-multi convert``)."""
        return self.module("files").FORMATS

    def read_file(self, path, spec: ResNetSpec, fmt: str) -> dict:
        """A native weights file -> canonical state, refused whole unless every tensor fits."""
        return self.module("files").read_file(path, spec, fmt)

    def write_file(self, state: Mapping[str, Any], path, spec: ResNetSpec, fmt: str) -> None:
        """Canonical state -> a native weights file, written atomically."""
        self.module("files").write_file(state, path, spec, fmt)

    # -- training -------------------------------------------------------------------------

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(self.module("train").PRECISIONS)

    def make_train_step(self, model, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                        precision: str = "fp32"):
        """step(x, labels) -> the loss before one SGD step (torch.optim.SGD semantics); the model changes in place."""
        return self.module("train").TrainStep(model, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                              precision=precision)

    def optimizer_state(self, step) -> dict:
        """'momentum.<canonical name>' -> momentum buffer (PyTorch layout); empty before the first step."""
        return self.module("train").optimizer_state(step)

    def load_optimizer_state(self, step, state: Mapping[str, Any]) -> None:
        self.module("train").load_optimizer_state(step, state)

    def data_parallel(self, workers: int, sync_bn: bool = False, device: str = "auto"):
        """The framework's own data-parallel engine for ``workers`` workers (train.py's DataParallel).

        It has ``name``, ``device``, ``processes``, ``rank`` and ``launcher`` (this process must start the
        worker processes: ``launch(fn, args)``), and ``build``, ``make_train_step`` (step(part of the global
        batch, its labels) -> the global batch's loss), ``gather``, ``replica_spread`` and ``close``;
        docs/distributed.md.
        """
        if self.name == "tensorflow" and "tensorflow" not in sys.modules:
            # oneDNN's CPU kernels race when MirroredStrategy runs replicas side by side (a conv gradient
            # fails now and then: "could not create a primitive descriptor"); TensorFlow's own kernels do not.
            os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
        return self.module("train").DataParallel(workers, sync_bn=sync_bn, device=device)

    # -- benchmarks -----------------------------------------------------------------------

    def benchmark(self, model, x, mode: str = "infer", precision: str = "fp32", repeats: int = 5,
                  warmup: int = 2, compile: bool = False) -> dict:
        """Time inference ('infer') or SGD steps ('train') with the framework's best practice."""
        return self.module("bench").benchmark(model, x, mode=mode, precision=precision, repeats=repeats,
                                              warmup=warmup, compile=compile)

    def conv_throughput(self, shape: tuple[int, int, int, int] = (8, 256, 28, 28), repeats: int = 10,
                        device: str = "cpu") -> dict:
        """GFLOP/s of one 3x3 conv (N, C, H, W) -> C channels in this framework: the machine's practical ceiling."""
        return self.module("bench").conv_throughput(shape, repeats=repeats, device=device)

    @property
    def native(self) -> str:
        """The framework's own ResNet-50, in words ('torchvision.models.resnet50')."""
        return self.module("bench").NATIVE

    @property
    def native_preset(self) -> str:
        """Our preset with the same architecture as ``native``."""
        return self.module("bench").NATIVE_PRESET

    def benchmark_native(self, x, mode: str = "infer", precision: str = "fp32", repeats: int = 5,
                         warmup: int = 2, compile: bool = False, device: str = "cpu",
                         num_classes: int = 1000) -> dict:
        """The framework's own ResNet-50 timed by exactly the code path of ``benchmark``."""
        return self.module("bench").benchmark_native(x, mode=mode, precision=precision, repeats=repeats,
                                                     warmup=warmup, compile=compile, device=device,
                                                     num_classes=num_classes)


_FACES: dict[str, BackendFace] = {}


def backend(name: str) -> BackendFace:
    """The face of a backend by name or alias ('torch', 'tf', 'jax', 'gluon', ...); imports nothing."""
    key = canonical_name(name)
    if key not in _FACES:
        _FACES[key] = BackendFace(key)
    return _FACES[key]


def available() -> list[str]:
    """Backends whose framework imports in this environment (imports them)."""
    found = []
    for key in BACKENDS:
        try:
            backend(key).module("model")
        except BackendUnavailable:
            continue
        found.append(key)
    return found


# absl's C++ log lines: "I0000 00:00:1796157769.965474   23585 port.cc:153] ..." (severity I, W, E, F).
_LOG_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d")
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


@contextlib.contextmanager
def _quiet_tensorflow_import():
    """Hide TensorFlow's import-time log lines below TF_CPP_MIN_LOG_LEVEL, so an error stays one line.

    TensorFlow logs "oneDNN custom operations are on" and absl's banner before
    its log level applies (absl is not initialised yet), from C++, straight to
    file descriptor 2. So fd 2 is caught in a file while tensorflow imports and
    replayed afterwards without the lines the level hides; anything else
    (errors, Python warnings, a failed import's own output) still shows.
    """
    setting = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")
    level = int(setting) if setting.isdigit() else 0
    hidden = {"I": level >= 1, "W": level >= 2, "E": level >= 3, "F": False}
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, AttributeError, ValueError):  # no fd 2 to catch (stderr closed or replaced): import as is
        yield
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept, skipping = [], False
            for line in caught.read().decode(errors="replace").splitlines(keepends=True):
                match = _LOG_LINE.match(line)
                if match or line.startswith(_ABSL_BANNER):
                    skipping = hidden[match.group(1)] if match else level >= 1
                if not skipping:  # a hidden log line's continuation lines go with it
                    kept.append(line)
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def _load(key: str, part: str) -> ModuleType:
    quiet: contextlib.AbstractContextManager = contextlib.nullcontext()
    if key == "tensorflow":
        # Keras 3 picks its backend at first import: ours is TensorFlow unless the user chose.
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        # TensorFlow's C++ INFO and WARNING lines would make every one-line error several; a user's own
        # setting wins.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if "tensorflow" not in sys.modules:
            quiet = _quiet_tensorflow_import()
    with quiet:
        for module in BACKENDS[key][0]:
            _import(key, module)
    return importlib.import_module(f"resnet_multi.backends.{key}.{part}")


def _import(key: str, module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailable(
            f"backend {key!r} needs {module}, which is not installed here ({exc.__class__.__name__}: {exc}); "
            f"install it with: {install_hint(key)}"
        ) from None
