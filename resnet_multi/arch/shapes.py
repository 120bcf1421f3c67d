"""Analytic per-layer table: names, output shapes (C, H, W), params, buffers, MACs.

Pure arithmetic on the plan; no framework, no arrays. Backends measure the
same table on their real models and tests demand equality.

Rows: ``stem``, every block (``layer1.0`` ...), ``post_bn`` (pre-activation
nets), ``avgpool``, ``fc`` (none with ``num_classes`` 0; a feature extractor's
table ends at its last feature, with no head). ``fc``'s shape is reported as (classes, 1, 1) so
that every row has the same (C, H, W) form. MACs count the multiply-adds of
convs and the classifier; BN, ReLU, adds and pooling are not counted
(torchvision's "GFLOPS" column counts the same way).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from resnet_multi.arch.plan import BlockPlan, Conv, Linear, Norm, Plan, plan
from resnet_multi.arch.spec import ResNetSpec
from resnet_multi.errors import UserError


class InputTooSmall(UserError, ValueError):
    """The input collapses to zero pixels somewhere in the network."""


@dataclass(frozen=True)
class LayerRow:
    name: str
    output_shape: tuple[int, int, int]
    params: int
    buffers: int
    macs: int
    param_names: tuple[str, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "output_shape": list(self.output_shape), "params": self.params,
                "buffers": self.buffers, "macs": self.macs}


@dataclass(frozen=True)
class LayerTable:
    name: str
    input_shape: tuple[int, int, int]
    layers: tuple[LayerRow, ...]

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.layers)

    @property
    def total_buffers(self) -> int:
        return sum(r.buffers for r in self.layers)

    @property
    def total_macs(self) -> int:
        return sum(r.macs for r in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "input_shape": list(self.input_shape),
                "layers": [r.to_dict() for r in self.layers], "total_params": self.total_params,
                "total_buffers": self.total_buffers, "total_macs": self.total_macs}


def _count(modules) -> tuple[int, int, tuple[str, ...]]:
    params = buffers = 0
    names: list[str] = []
    for m in modules:
        for name, shape in m.param_shapes().items():
            params += _numel(shape)
            names.append(name)
        if isinstance(m, Norm):
            buffers += sum(_numel(s) for s in m.buffer_shapes().values())
    return params, buffers, tuple(names)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _conv(conv: Conv, h: int, w: int, where: str) -> tuple[int, int, int]:
    oh, ow = conv.out_size(h), conv.out_size(w)
    if oh < 1 or ow < 1:
        raise InputTooSmall(f"input too small: it collapses at {where} ({conv.name}: {h}x{w} -> {oh}x{ow})")
    macs = oh * ow * conv.out_channels * (conv.in_channels // conv.groups) * conv.kernel * conv.kernel
    return oh, ow, macs


def _block_row(block: BlockPlan, h: int, w: int) -> tuple[LayerRow, int, int]:
    macs = 0
    oh, ow = h, w
    for conv in block.convs:
        oh, ow, m = _conv(conv, oh, ow, block.name)
        macs += m
    if block.downsample_conv is not None:
        _, _, m = _conv(block.downsample_conv, h, w, block.name)
        macs += m
    params, buffers, names = _count(block.modules)
    return LayerRow(block.name, (block.out_channels, oh, ow), params, buffers, macs, names), oh, ow


def layer_table(spec: ResNetSpec, input_shape: tuple[int, int, int]) -> LayerTable:
    """The analytic table for `spec` on one (C, H, W) input."""
    c, h, w = (int(v) for v in input_shape)
    if c != spec.in_channels:
        raise InputTooSmall(f"input has {c} channels but {spec.name} takes {spec.in_channels}")
    if h < 1 or w < 1:
        raise InputTooSmall(f"input height and width must be >= 1, got {h}x{w}")
    p: Plan = plan(spec)
    rows: list[LayerRow] = []

    stem = p.stem
    h, w, macs = _conv(stem.conv, h, w, "stem")
    if stem.pool is not None:
        ph, pw = stem.pool.out_size(h), stem.pool.out_size(w)
        if ph < 1 or pw < 1:
            raise InputTooSmall(f"input too small: it collapses at stem (maxpool: {h}x{w} -> {ph}x{pw})")
        h, w = ph, pw
    params, buffers, names = _count([m for m in (stem.input_bn, stem.conv, stem.bn) if m])
    rows.append(LayerRow("stem", (stem.conv.out_channels, h, w), params, buffers, macs, names))

    for block in p.blocks:
        row, h, w = _block_row(block, h, w)
        rows.append(row)

    if p.head is not None:
        channels = p.blocks[-1].out_channels
        if p.head.post_bn is not None:
            params, buffers, names = _count([p.head.post_bn])
            rows.append(LayerRow("post_bn", (channels, h, w), params, buffers, 0, names))
        rows.append(LayerRow("avgpool", (channels, 1, 1), 0, 0, 0))
        fc: Linear | None = p.head.fc
        if fc is not None:
            params, buffers, names = _count([fc])
            rows.append(LayerRow("fc", (fc.out_features, 1, 1), params, buffers, fc.in_features * fc.out_features,
                                 names))
    return LayerTable(spec.name, (c, int(input_shape[1]), int(input_shape[2])), tuple(rows))


def feature_info(spec: ResNetSpec) -> list[dict[str, Any]]:
    """What each feature of a feature extractor is (timm's feature_info): index, row, channels, reduction.

    ``reduction`` is the stride product from the input to that row (4 for an ImageNet stem's output,
    32 after the last stage of a ResNet-50), independent of the input size. A spec without ``features``
    describes every row a feature extractor could return (0 = the stem, then each stage).
    """
    p = plan(spec.replace(features=(), num_classes=0) if not spec.features else spec)
    stem = p.stem
    reduction = stem.conv.stride * (stem.pool.stride if stem.pool is not None else 1)
    info = [{"index": 0, "row": "stem", "channels": stem.conv.out_channels, "reduction": reduction}]
    for i, blocks in enumerate(p.stages, start=1):
        for block in blocks:
            reduction *= block.stride
        info.append({"index": i, "row": blocks[-1].name, "channels": blocks[-1].out_channels,
                     "reduction": reduction})
    wanted = spec.features or tuple(range(len(info)))
    return [info[i] for i in wanted]


def param_count(spec: ResNetSpec) -> int:
    """Trainable parameters (independent of the input size)."""
    return sum(_numel(s) for s in plan(spec).param_shapes().values())


def buffer_count(spec: ResNetSpec) -> int:
    """BN running statistics (mean and variance), counted apart from parameters."""
    return sum(_numel(s) for s in plan(spec).buffer_shapes().values())
