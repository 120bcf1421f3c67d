"""The PyTorch lowering: a ResNetSpec as a torch.nn.Module.

The model mirrors torchvision.models.ResNet, so its state_dict keys ARE the
canonical names (conv1.weight, layer1.0.downsample.0.weight, fc.bias, ...),
plus BN's num_batches_tracked buffers, which are not canonical. torch
computes in NCHW, the canonical layout: nothing is transposed anywhere.

Every geometric choice comes from resnet_multi.arch.plan.plan(spec); every
numerics choice from the spec (BN eps and momentum: torch's own convention,
so they pass through unchanged). Padding is explicit: symmetric, or TensorFlow's
'same' where the spec asks (SameConv2d, SameMaxPool2d pad each input by its size).

BN running variance: nn.BatchNorm2d updates running_var with the unbiased
batch variance, which is the spec's 'unbiased'. For 'biased' (Keras/Flax)
a small subclass, BatchNorm below, updates it with the biased one.

The layout of the file is the one every backend shares (docs/backends.md):
device handling, the layers, stem, block, stage, head, build, then the
functions of the backend contract.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from resnet_multi.arch.plan import BlockPlan, Conv, HeadPlan, Linear, Norm, Pool, StemPlan, plan, same_pads
from resnet_multi.arch.shapes import feature_info
from resnet_multi.arch.spec import BatchNorm as BNSpec
from resnet_multi.arch.spec import ResNetSpec
from resnet_multi.backends.common import leaf_name, parse_device
from resnet_multi.weights.canonical import init_weights

from .weights import from_canonical, from_numpy, is_canonical, to_numpy

FRAMEWORK = "torch"


# -- device handling ---------------------------------------------------------------


def resolve_device(device: str = "auto") -> str:
    """'auto' | 'cpu' | 'gpu' | 'gpu:N' (also 'cuda[:N]') -> a torch device string: 'cpu' or 'cuda:N'."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    kind, index = parse_device(device, count, f"torch {torch.__version__}",
                               hint="needs a CUDA build of torch and a CUDA GPU")
    return "cpu" if kind == "cpu" else f"cuda:{index}"


def devices() -> list[str]:
    """The devices torch sees here, spelled as resolve_device returns them."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["cpu", *(f"cuda:{i}" for i in range(count))]


def fp32_only() -> None:
    """Turn TF32 off: on Ampere+ it silently rounds matmul/conv inputs to 10 mantissa bits; fp32 means fp32."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


# -- layers -------------------------------------------------------------------------------


class BatchNorm(nn.BatchNorm2d):
    """nn.BatchNorm2d that can update running_var with the biased batch variance.

    Normalisation always uses the biased variance (as every framework does);
    only the running-statistics update differs between conventions.
    """

    def __init__(self, channels: int, eps: float, momentum: float, affine: bool, biased_running_var: bool):
        super().__init__(channels, eps=eps, momentum=momentum, affine=affine)
        self.biased_running_var = biased_running_var

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.biased_running_var):
            return super().forward(x)  # native: eval, or training with the unbiased update
        with torch.no_grad():
            var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
            self.running_mean.lerp_(mean, self.momentum)  # (1 - m) * running + m * batch
            self.running_var.lerp_(var, self.momentum)
            self.num_batches_tracked.add_(1)
        # Normalise with batch statistics; passing no running stats leaves them to the update above.
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", running_var=biased" if self.biased_running_var else "")


class SameConv2d(nn.Conv2d):
    """nn.Conv2d padded as TensorFlow's 'same': explicit zero pads from each input's size (plan.same_pads)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        (top, bottom), (left, right) = (same_pads(n, k, s) for n in x.shape[2:])
        return super().forward(F.pad(x, (left, right, top, bottom)))


def conv(c: Conv) -> nn.Conv2d:
    """A plan Conv record as nn.Conv2d (explicit padding: symmetric, or 'same'; groups and bias from the plan)."""
    if c.same:
        return SameConv2d(c.in_channels, c.out_channels, c.kernel, stride=c.stride, padding=0,
                          groups=c.groups, bias=c.bias)
    return nn.Conv2d(c.in_channels, c.out_channels, c.kernel, stride=c.stride, padding=c.padding,
                     groups=c.groups, bias=c.bias)


def batch_norm(n: Norm, bn: BNSpec) -> nn.BatchNorm2d:
    """The spec's BN for a plan Norm record: torch's own for 'unbiased', BatchNorm for 'biased'."""
    # The spec's momentum is torch's convention: it passes through unchanged.
    if bn.running_var == "biased":
        return BatchNorm(n.channels, bn.eps, bn.momentum, n.affine, biased_running_var=True)
    return nn.BatchNorm2d(n.channels, eps=bn.eps, momentum=bn.momentum, affine=n.affine)


class SameMaxPool2d(nn.MaxPool2d):
    """The max-pool with TensorFlow's 'same' widths (from each input's size), padded with -inf or zeros."""

    def __init__(self, pool: Pool):
        super().__init__(pool.kernel, stride=pool.stride, padding=0)
        self.fill = -float("inf") if pool.pad_value == "neg_inf" else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (top, bottom), (left, right) = (same_pads(n, self.kernel_size, self.stride) for n in x.shape[2:])
        return super().forward(F.pad(x, (left, right, top, bottom), value=self.fill))


def max_pool(pool: Pool) -> nn.Module:
    """The stem's 3x3/2 max-pool, padded by 1 on every side (or as 'same' does)."""
    if pool.same:
        return SameMaxPool2d(pool)
    if pool.pad_value == "neg_inf":
        return nn.MaxPool2d(3, stride=2, padding=1)  # torch pads max-pools with -inf: the true max
    # keras.applications: ZeroPadding2D then an unpadded pool; differs when inputs can be negative.
    return nn.Sequential(nn.ZeroPad2d(1), nn.MaxPool2d(3, stride=2, padding=0))


# -- stem ------------------------------------------------------------------------------


def stem(record: StemPlan, bn: BNSpec) -> dict[str, nn.Module]:
    """[input_bn ->] conv1 [-> bn1 -> relu] [-> maxpool], kept at the model's top level like torchvision."""
    layers: dict[str, nn.Module] = {}
    if record.input_bn is not None:  # Gluon v2: an affine-free BN standardising the raw data (no ReLU)
        layers["input_bn"] = batch_norm(record.input_bn, bn)
    layers["conv1"] = conv(record.conv)
    if record.bn is not None:
        layers["bn1"] = batch_norm(record.bn, bn)
    if record.pool is not None:
        layers["maxpool"] = max_pool(record.pool)
    return layers


# -- block ------------------------------------------------------------------------------


class Block(nn.Module):
    """One residual block, basic (3x3, 3x3) or bottleneck (1x1, grouped 3x3, 1x1).

    Post-activation (v1): conv1-bn1-relu-conv2-bn2[-relu-conv3-bn3] + shortcut, relu.
    Pre-activation (v2):  preact_bn-relu-conv1-bn1-relu-conv2[-bn2-relu-conv3] + shortcut, no relu;
    a projection shortcut reads the pre-activated input, identity/subsample the raw one.
    Which conv strides, the groups and the biases are already resolved in the plan.
    """

    def __init__(self, block: BlockPlan, bn: BNSpec):
        super().__init__()
        self.preact = block.preact
        self.stride = block.stride
        self.shortcut = block.shortcut  # 'identity' | 'subsample' | 'conv' | 'conv_bn'
        if block.preact_bn is not None:
            self.preact_bn = batch_norm(block.preact_bn, bn)
        self.conv_names = [leaf_name(c.name) for c in block.convs]
        self.norm_names = [leaf_name(n.name) for n in block.norms]
        for i, record in enumerate(block.convs):  # torchvision's order: conv1, bn1, conv2, bn2, ...
            self.add_module(self.conv_names[i], conv(record))
            if i < len(block.norms):
                self.add_module(self.norm_names[i], batch_norm(block.norms[i], bn))
        if block.downsample_conv is not None:  # downsample.0 = 1x1 conv, downsample.1 = its BN (conv_bn)
            parts = [conv(block.downsample_conv)]
            if block.downsample_bn is not None:
                parts.append(batch_norm(block.downsample_bn, bn))
            self.downsample = nn.Sequential(*parts)
        else:
            self.downsample = None
        # In place, as torchvision: no extra tensor per activation (memory traffic is
        # what bounds a CPU). Safe: each ReLU overwrites a BN or add output nothing else keeps.
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch_in = self.relu(self.preact_bn(x)) if self.preact else x
        out = branch_in
        last = len(self.conv_names) - 1
        for i, conv_name in enumerate(self.conv_names):
            out = getattr(self, conv_name)(out)
            if i < len(self.norm_names):  # pre-activation blocks have no BN after the last conv
                out = getattr(self, self.norm_names[i])(out)
            if i < last:
                out = self.relu(out)
        if self.downsample is not None:
            identity = self.downsample(branch_in)
        elif self.shortcut == "subsample":  # keep every stride-th pixel: a 1x1/stride identity
            identity = x[:, :, :: self.stride, :: self.stride]
        else:
            identity = x
        out += identity
        return out if self.preact else self.relu(out)


# -- stage ------------------------------------------------------------------------------


def stage(blocks: tuple[BlockPlan, ...], bn: BNSpec) -> nn.Sequential:
    """layerI: its blocks as layerI.0, layerI.1, ..."""
    return nn.Sequential(*(Block(b, bn) for b in blocks))


# -- head -------------------------------------------------------------------------------


def head(record: HeadPlan, bn: BNSpec) -> dict[str, nn.Module]:
    """[post_bn -> relu (pre-activation)] -> global average pool [-> fc (none for num_classes 0)]."""
    layers: dict[str, nn.Module] = {}
    if record.post_bn is not None:
        layers["post_bn"] = batch_norm(record.post_bn, bn)
    layers["avgpool"] = nn.AdaptiveAvgPool2d(1)
    fc: Linear | None = record.fc
    if fc is not None:
        layers["fc"] = nn.Linear(fc.in_features, fc.out_features)
    return layers


# -- build -------------------------------------------------------------------------------


class ResNet(nn.Module):
    """torchvision's layout: [input_bn], conv1, [bn1], [maxpool], layer1..layerK, [post_bn], avgpool, [fc].

    It returns the logits; with num_classes 0 the pooled features (N, C); a feature extractor
    (spec.features) returns the list of its features' maps and has no head.
    """

    def __init__(self, spec: ResNetSpec):
        super().__init__()
        self.spec = spec
        p = plan(spec)
        for name, layer in stem(p.stem, spec.bn).items():
            self.add_module(name, layer)
        self.stage_names = [f"layer{i + 1}" for i in range(len(p.stages))]
        for name, blocks in zip(self.stage_names, p.stages):
            self.add_module(name, stage(blocks, spec.bn))
        for name, layer in (head(p.head, spec.bn) if p.head is not None else {}).items():
            self.add_module(name, layer)
        self.relu = nn.ReLU(inplace=False)
        self.stem_relu = p.stem.relu  # after conv1 [bn1] (a folded stem has no bn1 but keeps the ReLU)
        self.output_rows = p.output_rows
        self.feature_info = feature_info(spec) if spec.features else []

    def run_stem(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "input_bn"):
            x = self.input_bn(x)
        x = self.conv1(x)
        if hasattr(self, "bn1"):
            x = self.bn1(x)
        if self.stem_relu:
            x = self.relu(x)
        return self.maxpool(x) if hasattr(self, "maxpool") else x

    def rows(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The output of every layer-table row, in order."""
        out = {"stem": self.run_stem(x)}
        x = out["stem"]
        for stage_name in self.stage_names:
            for j, block in enumerate(getattr(self, stage_name)):
                x = out[f"{stage_name}.{j}"] = block(x)
        if hasattr(self, "post_bn"):
            x = out["post_bn"] = self.relu(self.post_bn(x))
        if hasattr(self, "avgpool"):
            x = out["avgpool"] = self.avgpool(x)
        if hasattr(self, "fc"):
            out["fc"] = self.fc(torch.flatten(x, 1))
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The map global pooling reads: the last stage's output (after post_bn-relu in pre-activation nets)."""
        x = self.run_stem(x)
        for stage_name in self.stage_names:
            x = getattr(self, stage_name)(x)
        return self.relu(self.post_bn(x)) if hasattr(self, "post_bn") else x

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.spec.features:
            rows = self.rows(x)
            return [rows[name] for name in self.output_rows]
        x = torch.flatten(self.avgpool(self.forward_features(x)), 1)
        return self.fc(x) if hasattr(self, "fc") else x


def build(spec: ResNetSpec, device: str = "auto", seed: int = 0,
          state: Mapping[str, np.ndarray] | None = None) -> ResNet:
    """The native model on `device`, in eval mode: canonical `state` if given, else the core's seeded weights."""
    dev = resolve_device(device)
    if dev.startswith("cuda"):
        fp32_only()
    # Build without torch's own init (the canonical weights overwrite every tensor anyway).
    with torch.device("meta"):
        model = ResNet(spec)
    model = model.to_empty(device=dev)
    for name, buf in model.named_buffers():
        if not is_canonical(name):  # BN's counters: start counting from zero
            buf.zero_()
    from_canonical(model, init_weights(spec, seed) if state is None else state)
    return model.eval()


# -- the contract -------------------------------------------------------------------------


def _input(model: ResNet, x) -> torch.Tensor:
    return from_numpy(x).to(device_of(model))


def activations(model: ResNet, x, train: bool = False) -> dict[str, np.ndarray]:
    """Every layer-table row's output (NCHW numpy). train=True: batch-statistics BN, running stats updated."""
    was_training = model.training
    model.train(train)
    try:
        with torch.no_grad():  # running-stat updates happen without autograd too
            rows = model.rows(_input(model, x))
    finally:
        model.train(was_training)
    return {name: to_numpy(t) for name, t in rows.items()}


def forward(model: ResNet, x, train: bool = False) -> np.ndarray | list[np.ndarray]:
    """The model's output as numpy: logits (N, classes), pooled features (N, C), or a feature extractor's maps."""
    was_training = model.training
    model.train(train)
    try:
        with torch.no_grad():
            out = model(_input(model, x))
    finally:
        model.train(was_training)
    return [to_numpy(t) for t in out] if isinstance(out, list) else to_numpy(out)


def _is_running_stat(name: str) -> bool:
    return name.endswith(("running_mean", "running_var"))  # num_batches_tracked is not a statistic


def _count(modules) -> tuple[int, int]:
    params = sum(t.numel() for m in modules for t in m.parameters() if t.requires_grad)
    buffers = sum(t.numel() for m in modules for n, t in m.named_buffers() if _is_running_stat(n))
    return params, buffers


def row_counts(model: ResNet) -> dict[str, tuple[int, int]]:
    """Row -> (trainable params, BN running-stat elements), counted from the module's own tensors."""
    stem_layers = [getattr(model, n) for n in ("input_bn", "conv1", "bn1") if hasattr(model, n)]
    counts = {"stem": _count(stem_layers)}
    for stage_name in model.stage_names:
        for j, block in enumerate(getattr(model, stage_name)):
            counts[f"{stage_name}.{j}"] = _count([block])
    for name in ("post_bn", "avgpool", "fc"):
        if hasattr(model, name):
            counts[name] = _count([getattr(model, name)])
    return counts


def device_of(model: ResNet) -> str:
    return str(next(model.parameters()).device)


def framework_version() -> str:
    return torch.__version__
