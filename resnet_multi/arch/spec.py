"""The architecture spec: frozen dataclasses in which every numerics choice is explicit.

A spec says everything that changes the numbers a ResNet computes; no backend
may fill a gap with its framework's default. Specs validate on construction
(``SpecError``, a ``ValueError`` whose message starts with the field's path)
and round-trip through plain dicts, JSON and TOML files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from resnet_multi.errors import SpecError
from resnet_multi.files import atomic_write

# Stem geometry per kind: (conv kernel, conv stride, max-pool after it).
# Padding is always kernel // 2 on every side (symmetric, never 'same').
STEM_KINDS = {
    "imagenet": (7, 2, True),  # 7x7/2 conv, 3x3/2 max-pool (ResNet paper, torchvision, Keras, the book)
    "cifar": (3, 1, False),  # 3x3/1 conv, no pool (ResNet paper, section 4.2)
}
POOL_PADDINGS = ("neg_inf", "zero")
BLOCK_KINDS = ("basic", "bottleneck")
STRIDE_AT = ("1x1", "3x3")
STRIDE_BLOCKS = ("first", "last")
SHORTCUTS = ("conv_bn", "conv")
STRIDED_IDENTITIES = ("projection", "subsample")
RUNNING_VARS = ("unbiased", "biased")
INITS = ("kaiming_fan_out", "xavier_uniform")
# Convs that may carry a bias, named by role. 'conv3' exists in bottlenecks only.
BIAS_ROLES = ("stem", "conv1", "conv2", "conv3", "shortcut")
# Where TensorFlow's 'same' padding replaces the symmetric kernel // 2 one: the stem conv, the
# stem max-pool, and every strided conv of the blocks (stride-1 convs pad the same either way).
SAME_PADDING_ROLES = ("stem_conv", "stem_pool", "strided")

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")  # fullmatch: '$' would let a final newline through

# Values quoted in errors: short and on one line, however long or deep the value a file gave.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlevel = 3


def _shown(value: Any) -> str:
    return _REPR.repr(value)


def _fail(path: str, message: str) -> None:
    raise SpecError(f"{path}: {message}")


def _check_int(path: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(path, f"must be an integer >= {minimum}, got {_shown(value)}")


def _check_choice(path: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(path, f"must be one of {', '.join(choices)}; got {_shown(value)}")


def _check_bool(path: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(path, f"must be true or false, got {_shown(value)}")


@dataclass(frozen=True)
class Stem:
    """The first conv (and optional BN + ReLU and max-pool) before the stages."""

    kind: str = "imagenet"
    channels: int = 64
    # BN + ReLU after the conv. Pre-activation nets leave it to the first block.
    norm: bool = True
    # What the 3x3/2 max-pool pads with. 'neg_inf' is the true max; 'zero' is
    # what keras.applications does (ZeroPadding2D), which differs when the pool
    # input can be negative (pre-activation stems have no ReLU before it).
    pool_padding: str = "neg_inf"
    # A BN without scale or shift on the raw input, before the conv (Gluon's
    # ResNet v2 normalises its data this way): running statistics only.
    input_norm: bool = False

    def __post_init__(self) -> None:
        _check_choice("stem.kind", self.kind, tuple(STEM_KINDS))
        _check_bool("stem.input_norm", self.input_norm)
        _check_int("stem.channels", self.channels)
        _check_bool("stem.norm", self.norm)
        _check_choice("stem.pool_padding", self.pool_padding, POOL_PADDINGS)

    @property
    def kernel(self) -> int:
        return STEM_KINDS[self.kind][0]

    @property
    def stride(self) -> int:
        return STEM_KINDS[self.kind][1]

    @property
    def pool(self) -> bool:
        return STEM_KINDS[self.kind][2]


@dataclass(frozen=True)
class Stage:
    """A run of blocks with the same output channels; one of them strides."""

    blocks: int
    channels: int  # output channels of every block in the stage
    stride: int = 1
    # Bottleneck only: the 3x3 conv has `cardinality` groups of
    # `width_per_group` channels (torchvision: groups, base_width scaled).
    cardinality: int = 1
    width_per_group: int = 0

    @property
    def mid_channels(self) -> int:
        return self.cardinality * self.width_per_group


@dataclass(frozen=True)
class BatchNorm:
    """BN numerics in one stated convention (PyTorch's).

    running = (1 - momentum) * running + momentum * batch_statistic.
    Keras, Flax and Gluon write momentum the other way round (their
    momentum = 1 - ours); backends convert.
    """

    eps: float = 1e-5
    momentum: float = 0.1
    # Which batch variance updates running_var: 'unbiased' (n / (n - 1),
    # PyTorch) or 'biased' (Keras, Flax). Normalisation always uses the biased one.
    running_var: str = "unbiased"

    def __post_init__(self) -> None:
        for name in ("eps", "momentum"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                _fail(f"bn.{name}", f"must be a finite number, got {_shown(value)}")
        if not self.eps > 0:
            _fail("bn.eps", f"must be > 0, got {_shown(self.eps)}")
        if not 0 <= self.momentum <= 1:
            _fail("bn.momentum", f"must be in [0, 1] (PyTorch convention), got {_shown(self.momentum)}")
        _check_choice("bn.running_var", self.running_var, RUNNING_VARS)


@dataclass(frozen=True)
class ResNetSpec:
    """A whole ResNet/ResNeXt: every choice that changes its numbers."""

    name: str
    stages: tuple[Stage, ...]
    block: str = "basic"
    in_channels: int = 3
    # 0: no fc; the network ends in the global average pool (a backbone's pooled features).
    num_classes: int = 1000
    # The image size the network is made for (H = W): what every command uses when no
    # --input-shape is given. Not a numerics choice. Unset: 32 for a CIFAR stem, else 224.
    image_size: int | None = None
    stem: Stem = field(default_factory=Stem)
    # Bottleneck: which conv strides. '1x1' = the paper, keras.applications,
    # Gluon v1; '3x3' = torchvision ("ResNet v1.5"). Basic blocks stride their first 3x3.
    stride_at: str = "3x3"
    # Which block of a stage strides: 'first' (torchvision, the paper) or
    # 'last' (keras.applications ResNetV2).
    stride_block: str = "first"
    # Pre-activation (ResNet v2): BN-ReLU before each conv, a final BN-ReLU
    # before pooling, and the shortcut projection reads the pre-activated input.
    preactivation: bool = False
    # Roles of the convs that carry a bias (see BIAS_ROLES).
    conv_bias: tuple[str, ...] = ()
    # A projection shortcut (channels or stride change): 1x1 conv + BN, or the book's bare 1x1 conv.
    shortcut: str = "conv_bn"
    # Stride without a channel change: 'projection' (torchvision) or
    # 'subsample', an identity that keeps every stride-th pixel (Keras ResNetV2).
    strided_identity: str = "projection"
    # Roles (see SAME_PADDING_ROLES) padded as TensorFlow's padding='same' does: from the input
    # size, the odd pixel after (the book's TensorFlow and JAX tabs). Empty: symmetric everywhere.
    same_padding: tuple[str, ...] = ()
    bn: BatchNorm = field(default_factory=BatchNorm)
    # Zero-init the last BN of each residual branch (Goyal et al.).
    zero_init_last_bn: bool = False
    init: str = "kaiming_fan_out"
    # Non-empty: a feature extractor returning these rows' outputs, in order (0 = the stem's
    # output, i = stage i's), with no head (num_classes 0) and no stage after the last one.
    features: tuple[int, ...] = ()
    # The inference form (for_inference): every BN that directly follows a conv is folded into
    # that conv's weight and bias, so the net has no such BN. BNs a ReLU or padding separates
    # from the next conv (pre-activation preact_bn and post_bn, the stem's input_bn) stay.
    folded_bn: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        # Normalise sequences so that equal specs compare equal whatever built them.
        object.__setattr__(self, "stages", tuple(self.stages))
        if isinstance(self.features, (list, tuple)):
            object.__setattr__(self, "features", tuple(self.features))
        if isinstance(self.conv_bias, str):
            _fail("conv_bias", "must be a list of roles (or 'none' / 'all' in a file)")
        object.__setattr__(self, "conv_bias", tuple(r for r in BIAS_ROLES if r in set(self.conv_bias)))
        if isinstance(self.same_padding, str) or not isinstance(self.same_padding, (list, tuple)):
            _fail("same_padding", f"must be a list of roles ({', '.join(SAME_PADDING_ROLES)}); "
                                  f"got {_shown(self.same_padding)}")
        for role in self.same_padding:
            _check_choice("same_padding", role, SAME_PADDING_ROLES)
        object.__setattr__(self, "same_padding", tuple(r for r in SAME_PADDING_ROLES if r in set(self.same_padding)))
        if self.image_size is None and isinstance(self.stem, Stem):
            object.__setattr__(self, "image_size", 32 if self.stem.kind == "cifar" else 224)
        self._validate()

    def _validate(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            _fail("name", f"must be a non-empty name of letters, digits, '_', '.', '-'; got {_shown(self.name)}")
        _check_int("in_channels", self.in_channels)
        _check_int("num_classes", self.num_classes, minimum=0)
        _check_int("image_size", self.image_size)
        _check_choice("block", self.block, BLOCK_KINDS)
        if not isinstance(self.stem, Stem):
            _fail("stem", "must be a Stem")
        if not isinstance(self.bn, BatchNorm):
            _fail("bn", "must be a BatchNorm")
        _check_choice("stride_at", self.stride_at, STRIDE_AT)
        if self.block == "basic" and self.stride_at != "3x3":
            _fail("stride_at", "basic blocks have no 1x1 conv to stride; must be '3x3'")
        _check_choice("stride_block", self.stride_block, STRIDE_BLOCKS)
        _check_bool("preactivation", self.preactivation)
        _check_choice("shortcut", self.shortcut, SHORTCUTS)
        _check_choice("strided_identity", self.strided_identity, STRIDED_IDENTITIES)
        _check_bool("zero_init_last_bn", self.zero_init_last_bn)
        _check_bool("folded_bn", self.folded_bn)
        if self.zero_init_last_bn and self.folded_bn:
            _fail("zero_init_last_bn", "a folded net has no BN after its convs to zero; must be false")
        if self.zero_init_last_bn and self.preactivation:
            _fail("zero_init_last_bn", "a pre-activation block ends in a conv, not a BN; must be false")
        _check_choice("init", self.init, INITS)
        if not isinstance(self.description, str):
            _fail("description", "must be a string")
        if self.block == "basic" and "conv3" in self.conv_bias:
            _fail("conv_bias", "basic blocks have no conv3")
        if "stem_pool" in self.same_padding and isinstance(self.stem, Stem) and not self.stem.pool:
            _fail("same_padding", f"a {self.stem.kind} stem has no max-pool; 'stem_pool' does not apply")
        if not self.stages:
            _fail("stages", "must hold at least one stage")
        for i, stage in enumerate(self.stages):
            self._validate_stage(f"stages[{i}]", stage)
        self._validate_features()

    def _validate_features(self) -> None:
        if not isinstance(self.features, tuple):
            _fail("features", f"must be a list of stage indices, got {_shown(self.features)}")
        for i, index in enumerate(self.features):
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= len(self.stages):
                _fail(f"features[{i}]", f"must be 0 (the stem) to {len(self.stages)} (the last stage), "
                                        f"got {_shown(index)}")
            if i and index <= self.features[i - 1]:
                _fail(f"features[{i}]", "indices must be increasing, each once")
        if self.features and self.num_classes != 0:
            _fail("num_classes", "a feature extractor (features set) has no head; must be 0")

    def _validate_stage(self, path: str, stage: Any) -> None:
        if not isinstance(stage, Stage):
            _fail(path, "must be a Stage")
        _check_int(f"{path}.blocks", stage.blocks)
        _check_int(f"{path}.channels", stage.channels)
        _check_int(f"{path}.stride", stage.stride)
        _check_int(f"{path}.cardinality", stage.cardinality)
        _check_int(f"{path}.width_per_group", stage.width_per_group, minimum=0)
        if self.block == "basic":
            if stage.cardinality != 1:
                _fail(f"{path}.cardinality", "basic blocks have no grouped conv; must be 1")
            if stage.width_per_group != 0:
                _fail(f"{path}.width_per_group", "basic blocks have no bottleneck width; must be 0")
        elif stage.width_per_group < 1:
            _fail(f"{path}.width_per_group", "bottleneck blocks need the 3x3 conv's channels per group (>= 1)")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The default input (C, H, W): in_channels x image_size x image_size."""
        return (self.in_channels, self.image_size, self.image_size)

    # -- files -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-ready dict with every field (nothing left to defaults)."""
        data = dataclasses.asdict(self)
        data["stages"] = [dataclasses.asdict(s) for s in self.stages]
        data["conv_bias"] = list(self.conv_bias)
        data["same_padding"] = list(self.same_padding)
        data["features"] = list(self.features)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ResNetSpec":
        return spec_from_dict(data)

    def replace(self, **changes: Any) -> "ResNetSpec":
        return dataclasses.replace(self, **changes)


def with_head(spec: ResNetSpec, num_classes: int | None = None,
              features: tuple[int, ...] | None = None) -> ResNetSpec:
    """``spec`` with another head: ``num_classes`` K (a new classifier), 0 (pooled features), or a feature
    extractor returning ``features`` (stage indices: 0 the stem, i stage i). None keeps the spec's."""
    changes: dict[str, Any] = {}
    if features is not None:
        if num_classes:
            raise SpecError("a feature extractor has no classifier: give features or num_classes, not both")
        if isinstance(features, (str, bytes)) or not hasattr(features, "__iter__"):
            raise SpecError(f"features: must be a list of stage indices, got {_shown(features)}")
        changes.update(features=tuple(features), num_classes=0)
        if not changes["features"]:
            raise SpecError("features: name at least one stage (0 = the stem, 1 ... the stages)")
    elif num_classes is not None:
        changes.update(features=(), num_classes=num_classes)
    return spec.replace(**changes) if changes else spec


def _fields(kind: type) -> set[str]:
    return {f.name for f in dataclasses.fields(kind)}


def _build(kind: type, path: str, data: Any) -> Any:
    if not isinstance(data, Mapping):
        _fail(path, f"must be a table/object, got {type(data).__name__}")
    unknown = sorted(str(k) for k in set(data) - _fields(kind))
    if unknown:
        name = unknown[0] if unknown[0].isidentifier() else _shown(unknown[0])  # a key may hold any text
        _fail(f"{path}.{name}" if path else name, f"unknown field (known: {', '.join(sorted(_fields(kind)))})")
    try:
        return kind(**data)
    except TypeError as exc:  # a required field is missing
        missing = re.findall(r"'(\w+)'", str(exc))
        name = missing[0] if missing else "?"
        _fail(f"{path}.{name}" if path else name, "required field is missing")


def spec_from_dict(data: Mapping[str, Any]) -> ResNetSpec:
    """Build and validate a spec from a plain dict (as read from JSON or TOML)."""
    if not isinstance(data, Mapping):
        raise SpecError(f"spec: must be a table/object, got {type(data).__name__}")
    data = dict(data)
    if "stem" in data:
        data["stem"] = _build(Stem, "stem", data["stem"])
    if "bn" in data:
        data["bn"] = _build(BatchNorm, "bn", data["bn"])
    if "stages" in data:
        stages = data["stages"]
        if not isinstance(stages, (list, tuple)):
            _fail("stages", "must be a list of stages")
        data["stages"] = tuple(_build(Stage, f"stages[{i}]", s) for i, s in enumerate(stages))
    bias = data.get("conv_bias", ())
    if bias == "none":
        data["conv_bias"] = ()
    elif bias == "all":
        data["conv_bias"] = BIAS_ROLES[:3] + (("conv3",) if data.get("block") == "bottleneck" else ()) + ("shortcut",)
    elif isinstance(bias, (list, tuple)):
        for role in bias:
            _check_choice("conv_bias", role, BIAS_ROLES)
    else:
        _fail("conv_bias", f"must be a list of roles, 'none' or 'all'; got {_shown(bias)}")
    same = data.get("same_padding", ())
    if same == "none":
        data["same_padding"] = ()
    elif same == "all":
        data["same_padding"] = SAME_PADDING_ROLES if data.get("stem", Stem()).pool else SAME_PADDING_ROLES[::2]
    return _build(ResNetSpec, "", data)


# -- JSON and TOML files ------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def spec_to_toml(spec: ResNetSpec) -> str:
    data = spec.to_dict()
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items()
             if not isinstance(v, (dict, list)) or k in ("conv_bias", "features", "same_padding")]
    for table in ("stem", "bn"):
        lines += ["", f"[{table}]"] + [f"{k} = {_toml_value(v)}" for k, v in data[table].items()]
    for stage in data["stages"]:
        lines += ["", "[[stages]]"] + [f"{k} = {_toml_value(v)}" for k, v in stage.items()]
    return "\n".join(lines) + "\n"


def save_spec(spec: ResNetSpec, path: str | Path) -> Path:
    """Write a spec as .json or .toml (by the file's suffix)."""
    path = Path(path)
    if path.suffix == ".toml":
        text = spec_to_toml(spec)
    elif path.suffix == ".json":
        text = json.dumps(spec.to_dict(), indent=2) + "\n"
    else:
        raise SpecError(f"{path}: spec files end in .json or .toml")
    return atomic_write(path, text)


def load_spec(path: str | Path) -> ResNetSpec:
    """Read and validate a .json or .toml spec file; errors name the file and the field."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec file ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte {exc.start}); spec files are UTF-8 JSON or TOML") from None
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python < 3.11
                import tomli as tomllib
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise SpecError("spec files end in .json or .toml")
        return spec_from_dict(data)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None
    except ValueError as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise SpecError(f"{path}: not valid {path.suffix[1:].upper()}: {first}") from None
    except RecursionError:  # both parsers recurse per level of nesting
        raise SpecError(f"{path}: not a spec: nested too deeply") from None
