"""The MXNet (Gluon) lowering: one ResNetSpec -> a hybridizable gluon.HybridBlock.

Layout is NCHW, MXNet's native one, so activations need no transposes and
Gluon's weight layout is PyTorch's (conv (O, I/groups, kH, kW), Dense (out, in)).
Every geometry choice comes from resnet_multi.plan.plan(spec); every
numerics choice from the spec, never from a Gluon default.

Batch norm, and why it is a small custom layer here: MXNet's own BatchNorm
operator updates its running statistics in the *backward* pass on CPU (a
forward pass in training mode changes nothing), always with the biased
batch variance, and differently on GPU (cuDNN's kernel updates them in the
forward pass). The spec asks for one rule on every device, applied in the
forward pass, with ``spec.bn.running_var`` choosing the variance. So
`BatchNorm` keeps Gluon's layer (gamma, beta, running_mean, running_var;
momentum and epsilon converted from the spec), lets the operator normalise
(batch statistics in training mode, running ones otherwise) with its own
update switched off, and applies the spec's update itself, in place, from
the batch mean and inverse std the operator returns. A cached (hybridized)
MXNet 1.x graph cannot write a state in its forward pass, so training-mode
calls run imperatively (see `_ImperativeInTraining`) while inference runs
the hybridized graph.

Inference vs training is MXNet's global autograd state (autograd.train_mode()
/ autograd.record()), not a property of the model: a built model runs in
inference mode unless the caller says otherwise.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

# TF32 off before any CUDA library starts (parity is fp32): cuDNN and cuBLAS
# honour NVIDIA_TF32_OVERRIDE; MXNet's own switch keeps tensor cores out of
# its convolutions. setdefault: a user's explicit choice wins.
os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")
os.environ.setdefault("MXNET_CUDA_ALLOW_TENSOR_CORE", "0")

import mxnet as mx  # noqa: E402
from mxnet import autograd, nd  # noqa: E402
from mxnet.gluon import HybridBlock, nn  # noqa: E402

from resnet_multi.arch.plan import BlockPlan, Conv, Norm, StemPlan, plan  # noqa: E402
from resnet_multi.arch.spec import ResNetSpec  # noqa: E402
from resnet_multi.errors import DeviceUnavailable  # noqa: E402
from resnet_multi.weights.canonical import init_weights  # noqa: E402

from .weights import from_canonical  # noqa: E402

FRAMEWORK = "mxnet"


# -- device handling -------------------------------------------------------------


def resolve_device(device: str = "auto") -> str:
    """'auto' | 'cpu' | 'gpu' | 'gpu:N' -> 'cpu' or 'gpu:N' ('auto' prefers the first GPU)."""
    name = str(device).strip().lower()
    gpus = mx.context.num_gpus()
    if name == "auto":
        return "gpu:0" if gpus else "cpu"
    if name in ("cpu", "cpu:0"):
        return "cpu"
    kind, _, index = name.partition(":")
    if kind in ("gpu", "cuda") and (index == "" or index.isdigit()):
        i = int(index or 0)
        if i >= gpus:
            raise DeviceUnavailable(f"device {device!r} asked for, but MXNet sees {gpus} GPU(s) "
                                    "(a GPU needs the mxnet-cu* build: pip install \"resnet-multi[mxnet-gpu]\")")
        return f"gpu:{i}"
    raise DeviceUnavailable(f"unknown device {device!r} for mxnet; use 'auto', 'cpu' or 'gpu'")


def _context(device: str) -> mx.Context:
    return mx.cpu() if device == "cpu" else mx.gpu(int(device.partition(":")[2] or 0))


# -- layers: conv and batch norm from plan records ----------------------------------


def _leaf(name: str) -> str:
    """The last part of a canonical name: 'layer1.0.conv1' -> 'conv1' (attribute and Gluon prefix)."""
    return name.rsplit(".", 1)[-1]


def _conv(conv: Conv) -> nn.Conv2D:
    # Explicit symmetric padding (never 'same'); groups for ResNeXt's 3x3.
    return nn.Conv2D(conv.out_channels, conv.kernel, strides=conv.stride, padding=conv.padding,
                     groups=conv.groups, use_bias=conv.bias, in_channels=conv.in_channels,
                     prefix=_leaf(conv.name) + "_")


def _relu(F, x):
    # The Activation op, not F.relu: oneDNN (MKLDNN) runs Activation in its own
    # memory layout; F.relu would force a layout conversion around every call.
    return F.Activation(x, act_type="relu")


class _ImperativeInTraining(HybridBlock):
    """Hybridized for inference; a training-mode call runs imperatively.

    The BN running-statistics update (see BatchNorm) is an in-place write,
    which a cached MXNet 1.x graph cannot make in its forward pass; so a
    training-mode call skips the cached graph and runs hybrid_forward on
    NDArrays, exactly as an unhybridized Gluon block does.
    """

    def forward(self, x, *args):
        if autograd.is_training() and isinstance(x, nd.NDArray):
            with x.ctx:  # what Gluon 1.9's HybridBlock.forward does when not hybridized
                params = {name: p.data(x.ctx) for name, p in self._reg_params.items()}
                return self.hybrid_forward(nd, x, *args, **params)
        return super().forward(x, *args)


class Sequential(_ImperativeInTraining, nn.HybridSequential):
    """HybridSequential whose training-mode calls reach its BNs imperatively."""


class BatchNorm(_ImperativeInTraining, nn.BatchNorm):
    """Gluon's BatchNorm, its running statistics updated by the spec's rule (see the module doc)."""

    def __init__(self, norm: Norm, spec: ResNetSpec):
        bn = spec.bn  # PyTorch's momentum convention; Gluon's is 1 - it
        # An affine-free BN (input_bn) keeps Gluon's frozen gamma = 1, beta = 0.
        super().__init__(momentum=1.0 - bn.momentum, epsilon=bn.eps, center=norm.affine, scale=norm.affine,
                         in_channels=norm.channels, prefix=_leaf(norm.name) + "_")
        self.running_var_rule = bn.running_var

    def hybrid_forward(self, F, x, gamma, beta, running_mean, running_var):
        kwargs = dict(self._kwargs, momentum=1.0)  # momentum=1: the operator's own update is off
        if F is nd and autograd.is_training():
            # The operator also returns the batch mean and inverse std it normalised with.
            out, mean, inv_std = F.BatchNorm(x, gamma, beta, running_mean, running_var, name="fwd",
                                             output_mean_var=True, **kwargs)
            self._update_running_stats(x, mean, inv_std, running_mean, running_var)
            return out
        return F.BatchNorm(x, gamma, beta, running_mean, running_var, name="fwd", **kwargs)

    def _update_running_stats(self, x, mean, inv_std, running_mean, running_var):
        """running = momentum * running + (1 - momentum) * batch statistic (Gluon's momentum), in place."""
        with autograd.pause():  # bookkeeping, not part of the differentiated computation
            var = 1.0 / nd.square(inv_std) - self._kwargs["eps"]  # the biased batch variance
            if self.running_var_rule == "unbiased":
                count = x.size // x.shape[1]  # N * H * W
                var = var * (count / max(count - 1, 1))
            momentum = self._kwargs["momentum"]
            running_mean[:] = momentum * running_mean + (1 - momentum) * mean
            running_var[:] = momentum * running_var + (1 - momentum) * var


# -- stem ----------------------------------------------------------------------------


class Stem(_ImperativeInTraining):
    """[input_bn ->] conv1 [-> bn1 -> ReLU] [-> 3x3/2 max-pool] (the 'stem' row)."""

    def __init__(self, stem: StemPlan, spec: ResNetSpec, **kwargs):
        super().__init__(**kwargs)
        self.pool = stem.pool
        with self.name_scope():
            self.input_bn = BatchNorm(stem.input_bn, spec) if stem.input_bn else None
            self.conv1 = _conv(stem.conv)
            self.bn1 = BatchNorm(stem.bn, spec) if stem.bn else None
            if self.pool is not None:
                # MXNet's max-pool pads with -inf, the true max; zero padding
                # (keras.applications' ZeroPadding2D) is an explicit pad first.
                pad = self.pool.padding if self.pool.pad_value == "neg_inf" else 0
                self.maxpool = nn.MaxPool2D(self.pool.kernel, self.pool.stride, pad)

    def hybrid_forward(self, F, x):
        if self.input_bn is not None:  # standardises the data; no ReLU
            x = self.input_bn(x)
        x = self.conv1(x)
        if self.bn1 is not None:
            x = _relu(F, self.bn1(x))
        if self.pool is not None:
            if self.pool.pad_value == "zero":
                p = self.pool.padding
                x = F.pad(x, mode="constant", constant_value=0, pad_width=(0, 0, 0, 0, p, p, p, p))
            x = self.maxpool(x)
        return x


# -- residual block (basic and bottleneck, post- and pre-activation) --------------------


class Block(_ImperativeInTraining):
    """One residual block, as BlockPlan resolves it.

    Post-activation: conv1-bn1-relu-conv2-bn2[-relu-conv3-bn3] + shortcut(x), relu.
    Pre-activation:  preact_bn-relu-conv1-bn1-relu-conv2[-bn2-relu-conv3] + shortcut,
    where a projection reads the pre-activated input and an identity or
    subsample reads x itself; no ReLU after the add.
    """

    def __init__(self, block: BlockPlan, spec: ResNetSpec, **kwargs):
        super().__init__(**kwargs)
        self.preact, self.shortcut, self.stride = block.preact, block.shortcut, block.stride
        self.depth = len(block.convs)
        with self.name_scope():
            self.preact_bn = BatchNorm(block.preact_bn, spec) if block.preact_bn else None
            for conv in block.convs:
                setattr(self, _leaf(conv.name), _conv(conv))
            for norm in block.norms:
                setattr(self, _leaf(norm.name), BatchNorm(norm, spec))
            self.downsample = None
            if block.downsample_conv is not None:  # 1x1 projection [+ BN]: downsample.0 [, downsample.1]
                self.downsample = Sequential(prefix="downsample_")
                with self.downsample.name_scope():
                    self.downsample.add(_conv(block.downsample_conv))
                    if block.downsample_bn is not None:
                        self.downsample.add(BatchNorm(block.downsample_bn, spec))

    def hybrid_forward(self, F, x):
        y = pre = _relu(F, self.preact_bn(x)) if self.preact else x
        for i in range(1, self.depth + 1):
            y = getattr(self, f"conv{i}")(y)
            norm = getattr(self, f"bn{i}", None)  # a pre-activation block ends in a bare conv
            if norm is not None:
                y = norm(y)
            if i < self.depth:
                y = _relu(F, y)
        if self.downsample is not None:
            identity = self.downsample(pre)
        elif self.shortcut == "subsample":  # x[:, :, ::s, ::s]
            identity = F.slice(x, begin=(None,) * 4, end=(None,) * 4, step=(1, 1, self.stride, self.stride))
        else:
            identity = x
        out = y + identity
        return out if self.preact else _relu(F, out)


# -- stage ---------------------------------------------------------------------------------


def _stage(index: int, blocks: tuple[BlockPlan, ...], spec: ResNetSpec) -> Sequential:
    """layerI: the stage's blocks in order (layerI[J] is block 'layerI.J')."""
    stage = Sequential(prefix=f"layer{index}_")
    with stage.name_scope():
        for j, block in enumerate(blocks):
            stage.add(Block(block, spec, prefix=f"{j}_"))
    return stage


# -- head and the whole network ---------------------------------------------------------


class ResNet(_ImperativeInTraining):
    """stem -> layer1..layerK -> [post_bn -> ReLU] -> global average pool -> fc."""

    def __init__(self, spec: ResNetSpec, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec
        p = plan(spec)
        self.num_stages = len(p.stages)
        with self.name_scope():
            self.stem = Stem(p.stem, spec, prefix="stem_")
            for i, blocks in enumerate(p.stages, start=1):
                setattr(self, f"layer{i}", _stage(i, blocks, spec))
            # Pre-activation nets end with BN + ReLU before pooling.
            self.post_bn = BatchNorm(p.head.post_bn, spec) if p.head.post_bn else None
            self.post_relu = nn.Activation("relu") if p.head.post_bn else None
            self.avgpool = nn.GlobalAvgPool2D()
            self.fc = nn.Dense(p.head.fc.out_features, in_units=p.head.fc.in_features, prefix="fc_")

    def rows(self) -> list[tuple[str, tuple[HybridBlock, ...]]]:
        """The layer table's rows in order: (row name, the blocks that compute it)."""
        rows = [("stem", (self.stem,))]
        for i in range(1, self.num_stages + 1):
            rows += [(f"layer{i}.{j}", (block,)) for j, block in enumerate(getattr(self, f"layer{i}"))]
        if self.post_bn is not None:
            rows.append(("post_bn", (self.post_bn, self.post_relu)))
        return rows + [("avgpool", (self.avgpool,)), ("fc", (self.fc,))]

    def hybrid_forward(self, F, x):
        for _, blocks in self.rows():
            for block in blocks:
                x = block(x)
        return x


def build(spec: ResNetSpec, device: str = "auto", seed: int = 0) -> ResNet:
    """The hybridized Gluon model on `device`, holding the spec's seeded canonical weights."""
    model = ResNet(spec)
    # Zeros are placeholders (cheaper than random draws): every value is replaced next.
    model.initialize(mx.init.Zero(), ctx=_context(resolve_device(device)))
    from_canonical(model, init_weights(spec, seed))
    model.hybridize(static_alloc=True, static_shape=True)
    return model


# -- the contract functions -------------------------------------------------------------


def _mode(train: bool):
    return autograd.train_mode() if train else contextlib.nullcontext()  # inference is MXNet's default


def _input(model: ResNet, x) -> nd.NDArray:
    return nd.array(np.asarray(x, dtype=np.float32), ctx=_model_context(model), dtype="float32")


def activations(model: ResNet, x, train: bool = False) -> dict[str, np.ndarray]:
    """Every layer-table row's output as numpy (NCHW; 'avgpool' (N, C, 1, 1), 'fc' (N, classes)).

    Each row's blocks run as their own hybridized graphs (imperatively in
    training mode), so the intermediate outputs exist. train=True normalises
    with batch statistics and updates the running ones, once per BN, as one
    training forward pass does.
    """
    y = _input(model, x)
    outputs = {}
    with _mode(train):
        for name, blocks in model.rows():
            for block in blocks:
                y = block(y)
            outputs[name] = y
    return {name: out.asnumpy() for name, out in outputs.items()}


def forward(model: ResNet, x, train: bool = False) -> np.ndarray:
    """Logits (N, classes) from one call of the whole model (its hybridized graph in inference)."""
    with _mode(train):
        logits = model(_input(model, x))
    return logits.asnumpy()


def row_counts(model: ResNet) -> dict[str, tuple[int, int]]:
    """Row -> (trainable parameters, BN running statistics), from Gluon's Parameters.

    Trainable: grad_req != 'null'. Buffers: the BN layers' running_mean and
    running_var. An affine-free BN's frozen gamma/beta are neither.
    """
    stats = set()
    model.apply(lambda b: stats.update((b.running_mean.name, b.running_var.name))
                if isinstance(b, nn.BatchNorm) else None)
    counts = {}
    for name, blocks in model.rows():
        params = buffers = 0
        for block in blocks:
            for param in block.collect_params().values():
                size = int(np.prod(param.shape))
                if param.grad_req != "null":
                    params += size
                elif param.name in stats:
                    buffers += size
        counts[name] = (params, buffers)
    return counts


def _model_context(model: ResNet) -> mx.Context:
    return model.fc.weight.list_ctx()[0]


def device_of(model: ResNet) -> str:
    ctx = _model_context(model)
    return "cpu" if ctx.device_type == "cpu" else f"gpu:{ctx.device_id}"


def framework_version() -> str:
    return mx.__version__
