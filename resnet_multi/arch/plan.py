"""The spec resolved into concrete layers with canonical names.

`plan(spec)` decides, once and for every backend, each conv's channels,
kernel, stride, padding, groups and bias, each BN, and each block's shortcut.
Backends lower these records into their own layers; the analytic shapes, the
NumPy reference and the weight files read the same records, so names and
geometry cannot drift apart.

Canonical names are torchvision's state_dict keys (conv1, bn1,
layer1.0.conv1, layer1.0.downsample.0, fc) extended consistently:
``input_bn`` (an affine-free BN on the raw input, Gluon v2), ``layerI.J.preact_bn`` (pre-activation BN before conv1), ``post_bn``
(pre-activation nets' final BN), ``.bias`` on convs that carry one, and a
shortcut without BN is just ``downsample.0``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

from resnet_multi.arch.spec import ResNetSpec


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's padding='same' along one axis of ``size`` pixels: (before, after).

    The output has ceil(size / stride) pixels; the padding they need is split with the
    odd pixel after (at 96 the 7x7/2 stem conv pads 2 before and 3 after). It depends
    on the size only through size mod stride.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


@dataclass(frozen=True)
class Conv:
    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int  # symmetric, on every side (unless `same`)
    groups: int
    bias: bool
    same: bool = False  # TensorFlow's 'same' padding instead: same_pads(size, kernel, stride) per axis

    def pads(self, size: int) -> tuple[int, int]:
        """(before, after) zero padding along an axis of ``size`` pixels."""
        return same_pads(size, self.kernel, self.stride) if self.same else (self.padding, self.padding)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {f"{self.name}.weight": (self.out_channels, self.in_channels // self.groups, self.kernel, self.kernel)}
        if self.bias:
            shapes[f"{self.name}.bias"] = (self.out_channels,)
        return shapes

    def out_size(self, size: int) -> int:
        return (size + sum(self.pads(size)) - self.kernel) // self.stride + 1


@dataclass(frozen=True)
class Norm:
    name: str
    channels: int
    affine: bool = True  # False: no weight/bias, only running statistics (the stem's input_bn)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        if not self.affine:
            return {}
        return {f"{self.name}.weight": (self.channels,), f"{self.name}.bias": (self.channels,)}

    def buffer_shapes(self) -> dict[str, tuple[int, ...]]:
        return {f"{self.name}.running_mean": (self.channels,), f"{self.name}.running_var": (self.channels,)}


@dataclass(frozen=True)
class Pool:
    """The stem's max-pool: 3x3, stride 2, padding 1 on every side (or TensorFlow's 'same')."""

    name: str
    kernel: int
    stride: int
    padding: int
    pad_value: str  # 'neg_inf' or 'zero', from spec.stem.pool_padding
    same: bool = False  # 'same' padding widths (same_pads), filled with pad_value

    def pads(self, size: int) -> tuple[int, int]:
        """(before, after) padding along an axis of ``size`` pixels."""
        return same_pads(size, self.kernel, self.stride) if self.same else (self.padding, self.padding)

    def out_size(self, size: int) -> int:
        return (size + sum(self.pads(size)) - self.kernel) // self.stride + 1


@dataclass(frozen=True)
class Linear:
    name: str
    in_features: int
    out_features: int

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {f"{self.name}.weight": (self.out_features, self.in_features), f"{self.name}.bias": (self.out_features,)}


@dataclass(frozen=True)
class StemPlan:
    name: str  # the layer-table row: "stem"
    input_bn: Norm | None  # affine-free BN on the raw input (Gluon v2)
    conv: Conv
    bn: Norm | None
    pool: Pool | None
    relu: bool = True  # after conv1 [bn1]: a stem with a norm has one (a folded stem keeps it, without bn1)


@dataclass(frozen=True)
class BlockPlan:
    """One residual block. Post-activation order (ResNet v1):

        conv1-bn1-relu-conv2-bn2[-relu-conv3-bn3] + shortcut, relu

    Pre-activation order (ResNet v2):

        preact_bn-relu-conv1-bn1-relu-conv2[-bn2-relu-conv3] + shortcut

    where a projection shortcut reads the pre-activated input and an identity
    or subsample shortcut reads the block input.
    """

    name: str  # "layer1.0"
    kind: str  # 'basic' | 'bottleneck'
    preact: bool
    in_channels: int
    out_channels: int
    stride: int
    convs: tuple[Conv, ...]  # conv1, conv2[, conv3]
    norms: tuple[Norm, ...]  # bnK follows convK; post-activation has one per conv
    preact_bn: Norm | None
    shortcut: str  # 'identity' | 'subsample' | 'conv' | 'conv_bn'
    downsample_conv: Conv | None
    downsample_bn: Norm | None

    @property
    def modules(self) -> tuple:
        parts = ((self.preact_bn,) if self.preact_bn else ()) + self.convs + self.norms
        return parts + tuple(m for m in (self.downsample_conv, self.downsample_bn) if m)


@dataclass(frozen=True)
class HeadPlan:
    post_bn: Norm | None  # pre-activation nets: BN + ReLU before pooling
    fc: Linear | None  # None: num_classes 0, the network ends in the pool (pooled features)


@dataclass(frozen=True)
class Plan:
    spec: ResNetSpec
    stem: StemPlan
    stages: tuple[tuple[BlockPlan, ...], ...]
    head: HeadPlan | None  # None: a feature extractor (spec.features), which ends at its last feature

    @property
    def output_rows(self) -> tuple[str, ...]:
        """The layer-table rows the network returns: its features in order, else 'avgpool' or 'fc'."""
        if self.spec.features:
            return tuple(self.feature_row(i) for i in self.spec.features)
        return ("fc",) if self.head.fc is not None else ("avgpool",)

    def feature_row(self, index: int) -> str:
        """Feature index -> its layer-table row: 0 the stem, i the last block of stage i."""
        return "stem" if index == 0 else self.stages[index - 1][-1].name

    @property
    def pooled_row(self) -> str:
        """The row that global pooling reads ('forward_features'): the last stage's output, or post_bn's."""
        if self.head is not None and self.head.post_bn is not None:
            return "post_bn"
        return self.stages[-1][-1].name if self.stages else "stem"

    @property
    def blocks(self) -> tuple[BlockPlan, ...]:
        return tuple(b for stage in self.stages for b in stage)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Trainable parameters, canonical names, PyTorch layout, in model order."""
        shapes: dict[str, tuple[int, ...]] = {}
        for module in self.modules():
            if hasattr(module, "param_shapes"):
                shapes.update(module.param_shapes())
        return shapes

    def buffer_shapes(self) -> dict[str, tuple[int, ...]]:
        """BN running statistics, canonical names, in model order."""
        shapes: dict[str, tuple[int, ...]] = {}
        for module in self.modules():
            if isinstance(module, Norm):
                shapes.update(module.buffer_shapes())
        return shapes

    def modules(self) -> list:
        """Every record that holds weights (Conv, Norm, Linear), in model order: the canonical state's order."""
        stem = self.stem
        mods = [m for m in (stem.input_bn, stem.conv, stem.bn) if m is not None]
        for block in self.blocks:
            mods.extend(block.modules)
        head = self.head
        return mods + [m for m in ((head.post_bn, head.fc) if head else ()) if m is not None]


def _block(spec: ResNetSpec, name: str, in_ch: int, stage_index: int, stride: int) -> BlockPlan:
    stage = spec.stages[stage_index]
    out = stage.channels
    bias = set(spec.conv_bias)
    if spec.block == "basic":
        convs = (
            Conv(f"{name}.conv1", in_ch, out, 3, stride, 1, 1, "conv1" in bias),
            Conv(f"{name}.conv2", out, out, 3, 1, 1, 1, "conv2" in bias),
        )
    else:
        mid = stage.mid_channels
        s1, s3 = (stride, 1) if spec.stride_at == "1x1" else (1, stride)
        convs = (
            Conv(f"{name}.conv1", in_ch, mid, 1, s1, 0, 1, "conv1" in bias),
            Conv(f"{name}.conv2", mid, mid, 3, s3, 1, stage.cardinality, "conv2" in bias),
            Conv(f"{name}.conv3", mid, out, 1, 1, 0, 1, "conv3" in bias),
        )
    if "strided" in spec.same_padding:  # 'same' differs from kernel // 2 only where a k > 1 conv strides
        convs = tuple(replace(c, same=True) if c.stride > 1 and c.kernel > 1 else c for c in convs)
    # Pre-activation blocks have no BN after their last conv.
    norm_convs = convs[:-1] if spec.preactivation else convs
    norms = tuple(Norm(f"{name}.bn{i + 1}", c.out_channels) for i, c in enumerate(norm_convs))
    if spec.folded_bn:  # each bnK is in convK's weight and bias now
        convs = tuple(replace(c, bias=True) if i < len(norms) else c for i, c in enumerate(convs))
        norms = ()
    preact_bn = Norm(f"{name}.preact_bn", in_ch) if spec.preactivation else None

    if in_ch != out or (stride != 1 and spec.strided_identity == "projection"):
        shortcut = spec.shortcut
        ds_conv = Conv(f"{name}.downsample.0", in_ch, out, 1, stride, 0, 1, "shortcut" in bias)
        ds_bn = Norm(f"{name}.downsample.1", out) if shortcut == "conv_bn" else None
        if spec.folded_bn and ds_bn is not None:
            shortcut, ds_conv, ds_bn = "conv", replace(ds_conv, bias=True), None
    else:
        shortcut = "subsample" if stride != 1 else "identity"
        ds_conv = ds_bn = None
    return BlockPlan(name, spec.block, spec.preactivation, in_ch, out, stride, convs, norms,
                     preact_bn, shortcut, ds_conv, ds_bn)


@lru_cache(maxsize=256)
def plan(spec: ResNetSpec) -> Plan:
    """Resolve a spec into named layers (cached: specs are frozen)."""
    st = spec.stem
    conv = Conv("conv1", spec.in_channels, st.channels, st.kernel, st.stride, st.kernel // 2, 1, "stem" in spec.conv_bias,
                same="stem_conv" in spec.same_padding)
    if spec.folded_bn and st.norm:
        conv = replace(conv, bias=True)  # bn1 folded in
    stem = StemPlan(
        "stem",
        Norm("input_bn", spec.in_channels, affine=False) if st.input_norm else None,
        conv,
        Norm("bn1", st.channels) if st.norm and not spec.folded_bn else None,
        Pool("maxpool", 3, 2, 1, st.pool_padding, same="stem_pool" in spec.same_padding) if st.pool else None,
        relu=st.norm,
    )
    stages = []
    in_ch = st.channels
    # A feature extractor stops at its last feature: later stages and the head are not built.
    kept = spec.stages[: max(spec.features)] if spec.features else spec.stages
    for i, stage in enumerate(kept):
        strided = 0 if spec.stride_block == "first" else stage.blocks - 1
        blocks = []
        for j in range(stage.blocks):
            stride = stage.stride if j == strided else 1
            blocks.append(_block(spec, f"layer{i + 1}.{j}", in_ch, i, stride))
            in_ch = stage.channels
        stages.append(tuple(blocks))
    head = None if spec.features else HeadPlan(
        Norm("post_bn", in_ch) if spec.preactivation else None,
        Linear("fc", in_ch, spec.num_classes) if spec.num_classes else None)
    return Plan(spec, stem, tuple(stages), head)
