"""The zoo: preset name -> spec, one line each, built by a few family helpers.

Families:
- torchvision ("ResNet v1.5": stride on the 3x3, no conv biases, conv+BN shortcut)
- keras.applications v1 (stride on the first 1x1, every conv biased) and v2
  (pre-activation, stride on a stage's last block, zero-padded stem pool)
- the book (Dive into Deep Learning): d2l_resnet18 (its PyTorch and MXNet tabs), d2l_resnet18_tf
  and d2l_resnet18_jax (its TensorFlow and JAX tabs: 'same' padding, their BN defaults), d2l_resnext18
- MXNet Gluon's model zoo: gluon_resnet{18,34,50,101,152}_v1 and _v2
- the ResNet paper's CIFAR-10 networks resnet20 ... resnet110
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable

from resnet_multi.arch.spec import BatchNorm, ResNetSpec, Stage, Stem, load_spec
from resnet_multi.errors import UserError


class UnknownPreset(UserError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


_REGISTRY: dict[str, Callable[[], ResNetSpec]] = {}


def register(name: str, factory: Callable[[], ResNetSpec]) -> None:
    """Add a preset. Registering a name twice is an error, never an overwrite."""
    if name in _REGISTRY:
        raise ValueError(f"preset {name!r} is already registered")
    _REGISTRY[name] = factory


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> ResNetSpec:
    try:
        factory = _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, names(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see 'resnet-multi list'"
        shown = repr(name) if len(name) <= 80 else repr(name[:80]) + "..."
        raise UnknownPreset(f"unknown preset {shown}{hint}") from None
    return factory()


def resolve(name_or_path: str | Path | ResNetSpec) -> ResNetSpec:
    """A spec from a preset name, a .json/.toml spec file, or a spec itself."""
    if isinstance(name_or_path, ResNetSpec):
        return name_or_path
    text = str(name_or_path)
    if text.endswith((".json", ".toml")) or _is_file(text):
        return load_spec(text)
    return get(text)


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a name too long for a path, or one with a NUL: not a file
        return False


# -- family helpers -------------------------------------------------------------

BASIC_CHANNELS = (64, 128, 256, 512)
IMAGENET_STRIDES = (1, 2, 2, 2)
KERAS_BN = BatchNorm(eps=1.001e-5, momentum=0.01, running_var="biased")  # Keras momentum 0.99


def _basic_stages(depths, channels=BASIC_CHANNELS, strides=IMAGENET_STRIDES):
    return tuple(Stage(n, c, s) for n, c, s in zip(depths, channels, strides))


def _bottleneck_stages(depths, cardinality=1, base_width=64, strides=IMAGENET_STRIDES):
    # torchvision's arithmetic: width = planes * base_width / 64 * groups, out = 4 * planes.
    return tuple(
        Stage(n, 4 * planes, s, cardinality, int(planes * base_width / 64))
        for n, planes, s in zip(depths, BASIC_CHANNELS, strides)
    )


def torchvision(name, depths, block="bottleneck", cardinality=1, base_width=64):
    stages = _basic_stages(depths) if block == "basic" else _bottleneck_stages(depths, cardinality, base_width)
    return ResNetSpec(name=name, stages=stages, block=block, stride_at="3x3",
                      description=f"torchvision.models.{name}")


def keras_v1(name, depths):
    return ResNetSpec(
        name=name, stages=_bottleneck_stages(depths), block="bottleneck", stride_at="1x1",
        conv_bias=("stem", "conv1", "conv2", "conv3", "shortcut"), stem=Stem(pool_padding="zero"),
        bn=KERAS_BN, init="xavier_uniform",
        description=f"keras.applications ResNet{name[6:-3]} (paper v1: stride on the first 1x1, biased convs)",
    )


def keras_v2(name, depths):
    return ResNetSpec(
        name=name, stages=_bottleneck_stages(depths, strides=(2, 2, 2, 1)), block="bottleneck",
        stride_at="3x3", stride_block="last", preactivation=True,
        conv_bias=("stem", "conv3", "shortcut"), shortcut="conv", strided_identity="subsample",
        stem=Stem(norm=False, pool_padding="zero"), bn=KERAS_BN, init="xavier_uniform",
        description=f"keras.applications ResNet{name[6:-3]}V2 (pre-activation)",
    )


GLUON_BLOCKS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
                101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3))}
GLUON_BN = BatchNorm(eps=1e-5, momentum=0.1, running_var="biased")  # Gluon momentum 0.9


def gluon_v1(depth):
    block, depths = GLUON_BLOCKS[depth]
    if block == "basic":  # BasicBlockV1 is torchvision's basic block
        return ResNetSpec(name=f"gluon_resnet{depth}_v1", stages=_basic_stages(depths), block=block, bn=GLUON_BN,
                          description=f"mxnet.gluon.model_zoo.vision.resnet{depth}_v1")
    # BottleneckV1 strides its first 1x1, and its two 1x1 convs keep Gluon's default bias.
    return ResNetSpec(name=f"gluon_resnet{depth}_v1", stages=_bottleneck_stages(depths), block=block,
                      stride_at="1x1", conv_bias=("conv1", "conv3"), bn=GLUON_BN,
                      description=f"mxnet.gluon.model_zoo.vision.resnet{depth}_v1 (stride on the first 1x1)")


def gluon_v2(depth):
    block, depths = GLUON_BLOCKS[depth]
    stages = _basic_stages(depths) if block == "basic" else _bottleneck_stages(depths)
    # ResNetV2: an affine-free BN on the data, a post-activation stem, pre-activation
    # blocks striding the 3x3, and a bare 1x1 conv projecting the pre-activated input.
    return ResNetSpec(name=f"gluon_resnet{depth}_v2", stages=stages, block=block, preactivation=True,
                      stem=Stem(input_norm=True), shortcut="conv", bn=GLUON_BN,
                      description=f"mxnet.gluon.model_zoo.vision.resnet{depth}_v2 (pre-activation)")


def d2l_resnet18():
    return ResNetSpec(
        name="d2l_resnet18", stages=_basic_stages((2, 2, 2, 2)), block="basic", in_channels=1,
        num_classes=10, image_size=96, conv_bias=("stem", "conv1", "conv2", "shortcut"), shortcut="conv",
        init="xavier_uniform",
        description="the book's ResNet-18 (Fashion-MNIST 1x96x96, biased convs, 1x1 shortcut without BN)",
    )


# The book's TensorFlow and JAX tabs: padding='same' on the 7x7/2 stem conv, the 3x3/2 max-pool
# and every 3x3 conv of Residual (asymmetric where a conv strides), and each framework's BN defaults.
BOOK_SAME = ("stem_conv", "stem_pool", "strided")
KERAS_DEFAULT_BN = BatchNorm(eps=1e-3, momentum=0.01, running_var="biased")  # BatchNormalization(): 0.99, 1e-3
FLAX_DEFAULT_BN = BatchNorm(eps=1e-5, momentum=0.01, running_var="biased")  # nn.BatchNorm(): 0.99, 1e-5


def d2l_resnet18_tab(tab: str):
    """d2l_resnet18 as the book's TensorFlow ('tf') or JAX ('jax') tab writes it."""
    framework, bn = {"tf": ("TensorFlow", KERAS_DEFAULT_BN), "jax": ("JAX", FLAX_DEFAULT_BN)}[tab]
    return d2l_resnet18().replace(
        name=f"d2l_resnet18_{tab}", same_padding=BOOK_SAME, bn=bn,
        description=f"the book's ResNet-18, its {framework} tab: padding='same' (stem conv, pool, strided 3x3) "
                    f"and {'Keras' if tab == 'tf' else 'Flax'}'s BN defaults (momentum 0.99, eps {bn.eps:g})",
    )


# The book's tabs of one network: tab -> preset (the PyTorch and MXNet tabs are one network).
BOOK_TABS = {"d2l_resnet18": {"PyTorch": "d2l_resnet18", "MXNet": "d2l_resnet18", "TensorFlow": "d2l_resnet18_tf",
                              "JAX": "d2l_resnet18_jax"}}


def book_tabs(name: str) -> dict[str, str] | None:
    """The book's tabs of the network a preset belongs to (tab -> preset), or None."""
    return next((tabs for tabs in BOOK_TABS.values() if name in tabs.values()), None)


def d2l_resnext18():
    # The book's ResNeXtBlock(num_channels, groups=16, bot_mul=1) passes
    # groups=bot_channels // 16 to its conv: 16 is channels per group, so the
    # cardinality is channels / 16 (4, 8, 16, 32 across the stages).
    stages = tuple(Stage(2, c, s, c // 16, 16) for c, s in zip(BASIC_CHANNELS, IMAGENET_STRIDES))
    return ResNetSpec(
        name="d2l_resnext18", stages=stages, block="bottleneck", in_channels=1, num_classes=10, image_size=96,
        stride_at="3x3", conv_bias=("stem", "conv1", "conv2", "conv3", "shortcut"), shortcut="conv_bn",
        init="xavier_uniform",
        description="the book's ResNet-18 layout with its ResNeXt block (16 channels per group, bot_mul 1)",
    )


def cifar(name, depth):
    n = (depth - 2) // 6
    return ResNetSpec(
        name=name, stages=_basic_stages((n, n, n), (16, 32, 64), (1, 2, 2)), block="basic",
        num_classes=10, stem=Stem(kind="cifar", channels=16),
        description=f"ResNet paper CIFAR-10 ResNet-{depth} (projection shortcuts)",
    )


# -- the zoo ----------------------------------------------------------------------

register("resnet18", lambda: torchvision("resnet18", (2, 2, 2, 2), "basic"))
register("resnet34", lambda: torchvision("resnet34", (3, 4, 6, 3), "basic"))
register("resnet50", lambda: torchvision("resnet50", (3, 4, 6, 3)))
register("resnet101", lambda: torchvision("resnet101", (3, 4, 23, 3)))
register("resnet152", lambda: torchvision("resnet152", (3, 8, 36, 3)))
register("resnext50_32x4d", lambda: torchvision("resnext50_32x4d", (3, 4, 6, 3), cardinality=32, base_width=4))
register("resnext101_32x8d", lambda: torchvision("resnext101_32x8d", (3, 4, 23, 3), cardinality=32, base_width=8))
register("resnext101_64x4d", lambda: torchvision("resnext101_64x4d", (3, 4, 23, 3), cardinality=64, base_width=4))
register("wide_resnet50_2", lambda: torchvision("wide_resnet50_2", (3, 4, 6, 3), base_width=128))
register("wide_resnet101_2", lambda: torchvision("wide_resnet101_2", (3, 4, 23, 3), base_width=128))
register("resnet50_v1", lambda: keras_v1("resnet50_v1", (3, 4, 6, 3)))
register("resnet101_v1", lambda: keras_v1("resnet101_v1", (3, 4, 23, 3)))
register("resnet152_v1", lambda: keras_v1("resnet152_v1", (3, 8, 36, 3)))
register("resnet50_v2", lambda: keras_v2("resnet50_v2", (3, 4, 6, 3)))
register("resnet101_v2", lambda: keras_v2("resnet101_v2", (3, 4, 23, 3)))
register("resnet152_v2", lambda: keras_v2("resnet152_v2", (3, 8, 36, 3)))
for _depth in GLUON_BLOCKS:
    register(f"gluon_resnet{_depth}_v1", lambda d=_depth: gluon_v1(d))
    register(f"gluon_resnet{_depth}_v2", lambda d=_depth: gluon_v2(d))
register("d2l_resnet18", d2l_resnet18)
register("d2l_resnet18_tf", lambda: d2l_resnet18_tab("tf"))
register("d2l_resnet18_jax", lambda: d2l_resnet18_tab("jax"))
register("d2l_resnext18", d2l_resnext18)
for _depth in (20, 32, 44, 56, 110):
    register(f"resnet{_depth}", lambda d=_depth: cifar(f"resnet{d}", d))
