"""The MXNet (Gluon) lowering: one ResNetSpec -> a hybridizable gluon.HybridBlock.

Layout is NCHW, MXNet's native one, so activations need no transposes and
Gluon's weight layout is PyTorch's (conv (O, I/groups, kH, kW), Dense (out, in)).
Every geometry choice comes from resnet_multi.arch.plan.plan(spec); every
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

The block structure fixes the names in our own .params files (``stem.conv1.weight``,
``layer1.0.bn1.gamma``, ``fc.bias``; see files.py), so attribute names are part
of the file format.
"""

from __future__ import annotations

import contextlib
import os
from typing import Mapping

import numpy as np

# TF32 off before any CUDA library starts (parity is fp32): cuDNN and cuBLAS
# honour NVIDIA_TF32_OVERRIDE; MXNet's own switch keeps tensor cores out of
# its convolutions. setdefault: a user's explicit choice wins.
os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")
os.environ.setdefault("MXNET_CUDA_ALLOW_TENSOR_CORE", "0")

import mxnet as mx  # noqa: E402
from mxnet import autograd, nd  # noqa: E402
from mxnet.gluon import HybridBlock, nn  # noqa: E402

from resnet_multi.arch.plan import BlockPlan, Conv, HeadPlan, Norm, Pool, StemPlan, plan, same_pads  # noqa: E402
from resnet_multi.arch.shapes import feature_info  # noqa: E402
from resnet_multi.arch.spec import ResNetSpec  # noqa: E402
from resnet_multi.backends import common  # noqa: E402
from resnet_multi.weights.canonical import init_weights  # noqa: E402

from .weights import from_canonical  # noqa: E402

FRAMEWORK = "mxnet"


# -- device handling -------------------------------------------------------------

# A CPU-only wheel sees no GPU at all, whatever the machine has.
GPU_HINT = 'a GPU needs the mxnet-cu* build: pip install "resnet-multi[mxnet-gpu]"'


def resolve_device(device: str = "auto") -> str:
    """'auto' | 'cpu' | 'gpu' | 'gpu:N' (also 'cpu:0', 'cuda[:N]') -> 'cpu' or 'gpu:N' ('auto' prefers a GPU)."""
    kind, index = common.parse_device(device, mx.context.num_gpus(), f"MXNet {mx.__version__}", GPU_HINT)
    return "cpu" if kind == "cpu" else f"gpu:{index}"


def devices() -> list[str]:
    """The devices MXNet sees here: 'cpu', then 'gpu:0', 'gpu:1', ..."""
    return ["cpu"] + [f"gpu:{i}" for i in range(mx.context.num_gpus())]


def context(device: str = "auto") -> mx.Context:
    """Any accepted device string -> the mx.Context it names."""
    name = resolve_device(device)
    return mx.cpu() if name == "cpu" else mx.gpu(int(name.partition(":")[2]))


def device_name(ctx: mx.Context) -> str:
    """An mx.Context in resolve_device's spelling: 'cpu' or 'gpu:N'."""
    return "cpu" if ctx.device_type == "cpu" else f"gpu:{ctx.device_id}"


# -- layers: conv, batch norm and the stem pool from plan records ----------------------


def same_window(F, x, kernel: int, stride: int, mode: str, op):
    """``op`` (an unpadded conv or pool, this kernel and stride) on x padded as TensorFlow's 'same'.

    The widths depend on the input size (plan.same_pads), which a hybridized graph does not
    know when it is built; so the graph pads by the widest the size can ask for, shifts each
    spatial axis left by what this size does not need (a ``take`` with indices computed from
    ``shape_array``, still one static graph), runs ``op`` unpadded and keeps the ceil(n / s)
    outputs 'same' has. ``mode``: 'constant' (zeros) or 'edge', which for a max-pool is -inf
    padding: every window holds the edge pixel it would repeat.
    """
    widest = [max(w) for w in zip(*(same_pads(n, kernel, stride) for n in range(stride, 2 * stride)))]
    before_max, after_max = widest
    xp = F.pad(x, mode=mode, pad_width=(0, 0, 0, 0, before_max, after_max, before_max, after_max))
    size = F.cast(F.shape_array(x), "float32")
    for axis in (2, 3):
        n = F.slice_axis(size, axis=0, begin=axis, end=axis + 1)
        out = F.floor((n + (stride - 1)) / stride)
        before = F.floor(F.relu((out - 1) * stride + kernel - n) / 2)
        index = F.broadcast_add(F.contrib.arange_like(xp, axis=axis), before_max - before)
        xp = F.take(xp, index, axis=axis, mode="clip")
    y = op(xp)
    kept = F.slice(x, begin=(None,) * 4, end=(None,) * 4, step=(1, 1, stride, stride))  # ceil(n / s) a side
    return F.slice_like(y, kept, axes=(2, 3))


class SameConv2D(nn.Conv2D):
    """Gluon's Conv2D with TensorFlow's 'same' padding, exact at every input size (same_window)."""

    def __init__(self, c: Conv):
        super().__init__(c.out_channels, c.kernel, strides=c.stride, padding=0, groups=c.groups, use_bias=c.bias,
                         in_channels=c.in_channels, prefix=common.leaf_name(c.name) + "_")
        self.window = (c.kernel, c.stride)

    def hybrid_forward(self, F, x, weight, bias=None):
        conv2d = super().hybrid_forward
        return same_window(F, x, *self.window, "constant", lambda y: conv2d(F, y, weight, bias))


def conv(c: Conv) -> nn.Conv2D:
    """A Gluon Conv2D for a plan Conv record, named by its leaf ('conv1_')."""
    # Explicit padding: symmetric, or 'same' by hand (SameConv2D; never a 'same' keyword); groups for ResNeXt's 3x3.
    if c.same:
        return SameConv2D(c)
    return nn.Conv2D(c.out_channels, c.kernel, strides=c.stride, padding=c.padding, groups=c.groups,
                     use_bias=c.bias, in_channels=c.in_channels, prefix=common.leaf_name(c.name) + "_")


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
                         in_channels=norm.channels, prefix=common.leaf_name(norm.name) + "_")
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


def batch_norm(norm: Norm, spec: ResNetSpec) -> BatchNorm:
    """The spec's BN for a plan Norm record."""
    return BatchNorm(norm, spec)


def max_pool(pool: Pool) -> nn.MaxPool2D:
    """The stem's max-pool. MXNet's pads with -inf, the true max; zero padding
    (keras.applications' ZeroPadding2D) is an explicit pad before it (see Stem)."""
    unpadded = pool.same or pool.pad_value != "neg_inf"
    return nn.MaxPool2D(pool.kernel, pool.stride, 0 if unpadded else pool.padding)


# -- stem ----------------------------------------------------------------------------


class Stem(_ImperativeInTraining):
    """[input_bn ->] conv1 [-> bn1 -> ReLU] [-> 3x3/2 max-pool] (the 'stem' row)."""

    def __init__(self, s: StemPlan, spec: ResNetSpec, **kwargs):
        super().__init__(**kwargs)
        self.pool, self.relu = s.pool, s.relu  # a folded stem keeps its ReLU without bn1
        with self.name_scope():
            self.input_bn = batch_norm(s.input_bn, spec) if s.input_bn else None
            self.conv1 = conv(s.conv)
            self.bn1 = batch_norm(s.bn, spec) if s.bn else None
            if self.pool is not None:
                self.maxpool = max_pool(self.pool)

    def hybrid_forward(self, F, x):
        if self.input_bn is not None:  # standardises the data; no ReLU
            x = self.input_bn(x)
        x = self.conv1(x)
        if self.bn1 is not None:
            x = self.bn1(x)
        if self.relu:
            x = _relu(F, x)
        if self.pool is not None and self.pool.same:  # 'same' widths; 'edge' pads a max-pool as -inf does
            mode = "edge" if self.pool.pad_value == "neg_inf" else "constant"
            x = same_window(F, x, self.pool.kernel, self.pool.stride, mode, self.maxpool)
        elif self.pool is not None:
            if self.pool.pad_value == "zero":
                p = self.pool.padding
                x = F.pad(x, mode="constant", constant_value=0, pad_width=(0, 0, 0, 0, p, p, p, p))
            x = self.maxpool(x)
        return x


def stem(s: StemPlan, spec: ResNetSpec) -> Stem:
    """The 'stem' row; its layers are model.stem.input_bn, .conv1, .bn1."""
    return Stem(s, spec, prefix="stem_")


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
            self.preact_bn = batch_norm(block.preact_bn, spec) if block.preact_bn else None
            for record in block.convs:
                setattr(self, common.leaf_name(record.name), conv(record))
            for norm in block.norms:
                setattr(self, common.leaf_name(norm.name), batch_norm(norm, spec))
            self.downsample = None
            if block.downsample_conv is not None:  # 1x1 projection [+ BN]: downsample.0 [, downsample.1]
                self.downsample = Sequential(prefix="downsample_")
                with self.downsample.name_scope():
                    self.downsample.add(conv(block.downsample_conv))
                    if block.downsample_bn is not None:
                        self.downsample.add(batch_norm(block.downsample_bn, spec))

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


def stage(index: int, blocks: tuple[BlockPlan, ...], spec: ResNetSpec) -> Sequential:
    """layerI: the stage's blocks in order (layerI[J] is block 'layerI.J')."""
    layers = Sequential(prefix=f"layer{index}_")
    with layers.name_scope():
        for j, block in enumerate(blocks):
            layers.add(Block(block, spec, prefix=f"{j}_"))
    return layers


# -- head ----------------------------------------------------------------------------------


def head(h: HeadPlan | None, spec: ResNetSpec) -> dict[str, HybridBlock | None]:
    """[post_bn -> ReLU] -> global average pool -> [fc], as ResNet's attributes by name.

    Pre-activation nets end with BN + ReLU before pooling; the others have
    post_bn = post_relu = None; num_classes 0 has fc = None, and a feature
    extractor (h None) no head at all. Called inside the model's name scope.
    """
    post_bn = h.post_bn if h is not None else None
    fc = h.fc if h is not None else None
    return {"post_bn": batch_norm(post_bn, spec) if post_bn else None,
            "post_relu": nn.Activation("relu") if post_bn else None,
            "avgpool": nn.GlobalAvgPool2D() if h is not None else None,
            "fc": nn.Dense(fc.out_features, in_units=fc.in_features, prefix="fc_") if fc is not None else None}


# -- build -----------------------------------------------------------------------------------


class ResNet(_ImperativeInTraining):
    """stem -> layer1..layerK -> [post_bn -> ReLU] -> global average pool -> [fc].

    It returns the logits; with num_classes 0 the pooled features (N, C); a feature extractor
    (spec.features) returns the list of its features' maps and has no head.
    """

    def __init__(self, spec: ResNetSpec, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec
        p = plan(spec)
        self.num_stages = len(p.stages)
        with self.name_scope():
            self.stem = stem(p.stem, spec)
            for i, blocks in enumerate(p.stages, start=1):
                setattr(self, f"layer{i}", stage(i, blocks, spec))
            for name, layer in head(p.head, spec).items():
                setattr(self, name, layer)
        self.output_rows = p.output_rows
        self.feature_info = feature_info(spec) if spec.features else []

    def rows(self) -> list[tuple[str, tuple[HybridBlock, ...]]]:
        """The layer table's rows in order: (row name, the blocks that compute it)."""
        rows = [("stem", (self.stem,))]
        for i in range(1, self.num_stages + 1):
            rows += [(f"layer{i}.{j}", (block,)) for j, block in enumerate(getattr(self, f"layer{i}"))]
        if self.post_bn is not None:
            rows.append(("post_bn", (self.post_bn, self.post_relu)))
        return rows + [(name, (getattr(self, name),)) for name in ("avgpool", "fc") if getattr(self, name)]

    def hybrid_forward(self, F, x):
        outputs = []
        for name, blocks in self.rows():
            for block in blocks:
                x = block(x)
            if name in self.output_rows:
                outputs.append(x)
        if self.spec.features:
            return outputs
        return x if self.fc is not None else F.flatten(x)  # num_classes 0: the pooled (N, C, 1, 1) as (N, C)


def build(spec: ResNetSpec, device: str = "auto", seed: int = 0,
          state: Mapping[str, np.ndarray] | None = None) -> ResNet:
    """The hybridized Gluon model on `device`, holding `state` (a canonical state) or the spec's seeded weights."""
    model = ResNet(spec)
    # Zeros are placeholders (cheaper than random draws): every value is replaced next.
    model.initialize(mx.init.Zero(), ctx=context(device))
    from_canonical(model, init_weights(spec, seed) if state is None else state)
    model.hybridize(static_alloc=True, static_shape=True)
    return model


# -- the contract ------------------------------------------------------------------------


def _mode(train: bool):
    return autograd.train_mode() if train else contextlib.nullcontext()  # inference is MXNet's default


def _input(model: ResNet, x) -> nd.NDArray:
    return nd.array(np.asarray(x, dtype=np.float32), ctx=context_of(model), dtype="float32")


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


def forward(model: ResNet, x, train: bool = False) -> np.ndarray | list[np.ndarray]:
    """The model's output from one call of the whole model (its hybridized graph in inference): logits
    (N, classes), pooled features (N, C), or a feature extractor's maps."""
    infer = getattr(model, "infer", None)  # an inference model's partitioned graph (infer.py)
    with _mode(train):
        out = infer(_input(model, x)) if infer is not None and not train else model(_input(model, x))
    return [a.asnumpy() for a in out] if isinstance(out, (list, tuple)) else out.asnumpy()


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


def context_of(model: HybridBlock) -> mx.Context:
    """Where a Gluon block's parameters live (ours or any other, such as bench's native model)."""
    return next(iter(model.collect_params().values())).list_ctx()[0]


def device_of(model: HybridBlock) -> str:
    return device_name(context_of(model))


def framework_version() -> str:
    return mx.__version__
