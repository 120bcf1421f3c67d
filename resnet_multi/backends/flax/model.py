"""The spec lowered to Flax NNX (``flax.nnx.Module``), computing in NHWC.

The book (Dive into Deep Learning) writes its JAX ResNet with Flax Linen; we
use NNX, the API Flax recommends for new code: modules are ordinary Python
objects that own their variables, like torch's nn.Module.

Every layer comes from ``resnet_multi.arch.plan.plan(spec)``, so geometry and names
are the core's, not re-derived here. Attribute paths are the canonical names
(``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``,
``post_bn``, ``fc``); only the variable names differ (``kernel``, ``scale``,
``mean``, ``var``), see weights.py. Devices are JAX's: 'cpu:0', 'gpu:N'
(and 'cpu:N' where the host is split into several devices).

Numerics: padding is explicit everywhere, symmetric or, where the spec asks,
TensorFlow's 'same' computed by hand (SameConv; never Flax's 'SAME' keyword); the max-pool pads with -inf or zeros as the spec
says; BN momentum is converted (Flax's momentum = 1 - the spec's PyTorch one);
BN running_var follows the spec: Flax's own nnx.BatchNorm updates it with the
biased batch variance ('biased'); the small subclass below uses the unbiased
n/(n-1) one for 'unbiased' (PyTorch). Convs and matmuls run at HIGHEST
precision, so there is no TF32 on GPUs.

Compilation: the stem, every block and the head are each one ``nnx.jit``
program (tree mode, ``graph=False``: less per-call overhead). Identical
blocks (most of a stage, and the same stage in deeper presets) share a
program, so a ResNet-152 compiles about ten small programs in seconds rather
than one large one in tens of seconds. Called inside an outer ``nnx.jit`` (a
training step) they become part of the outer program.
"""

from __future__ import annotations

from functools import partial
from typing import Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from resnet_multi.arch.plan import BlockPlan, Conv, Norm, Pool, plan, same_pads
from resnet_multi.arch.shapes import feature_info
from resnet_multi.arch.spec import BatchNorm as BNSpec
from resnet_multi.arch.spec import ResNetSpec
from resnet_multi.backends import common
from resnet_multi.weights.canonical import init_weights

from .weights import from_canonical

FRAMEWORK = "flax"

# Parity is checked in fp32: no TF32 (or bf16 passes) in matmuls and convs on GPUs.
jax.config.update("jax_default_matmul_precision", "highest")
PRECISION = jax.lax.Precision.HIGHEST


# -- device handling --------------------------------------------------------------------------


def _gpus() -> list[jax.Device]:
    try:
        return jax.devices("gpu")
    except RuntimeError:  # no GPU backend (CPU-only jaxlib, or no CUDA device)
        return []


def jax_device(device: str = "auto") -> jax.Device:
    """A device string (common.parse_device's forms, and 'cpu:N' for JAX's host devices) -> the jax.Device."""
    cpus = jax.devices("cpu")
    kind, index = common.parse_device(device, len(_gpus()), f"JAX {jax.__version__}",
                                      hint=f"devices: {', '.join(str(d) for d in jax.devices())}",
                                      cpu_count=len(cpus))
    return (_gpus() if kind == "gpu" else cpus)[index]


def device_name(dev: jax.Device) -> str:
    """A jax.Device -> 'cpu:0', 'gpu:1', ...: this backend's device strings."""
    return f"{dev.platform}:{dev.id}"


def resolve_device(device: str = "auto") -> str:
    return device_name(jax_device(device))


def devices() -> list[str]:
    """Every device JAX sees: the host's CPU device(s), then the GPUs."""
    return [device_name(d) for d in [*jax.devices("cpu"), *_gpus()]]


# -- layers: every choice from the plan, nothing from a Flax default -------------------------

# Flax's initializers would draw weights that build() overwrites with the core's: start from zeros.
ZEROS = nnx.initializers.zeros_init()


class SameConv(nnx.Conv):
    """nnx.Conv padded as TensorFlow's 'same', by hand: jnp.pad with plan.same_pads of each input's size
    (static under jit), then an unpadded conv. Never Flax's padding='SAME'."""

    def __call__(self, x):
        k, s = self.kernel_size[0], self.strides[0]
        x = jnp.pad(x, ((0, 0), same_pads(x.shape[1], k, s), same_pads(x.shape[2], k, s), (0, 0)))  # NHWC
        return super().__call__(x)


def conv(c: Conv, rngs: nnx.Rngs) -> nnx.Conv:
    if c.same:
        return SameConv(c.in_channels, c.out_channels, (c.kernel, c.kernel), strides=(c.stride, c.stride),
                        padding=((0, 0), (0, 0)), feature_group_count=c.groups, use_bias=c.bias,
                        kernel_init=ZEROS, precision=PRECISION, rngs=rngs)
    return nnx.Conv(c.in_channels, c.out_channels, (c.kernel, c.kernel), strides=(c.stride, c.stride),
                    padding=((c.padding, c.padding), (c.padding, c.padding)),  # symmetric, never 'SAME'
                    feature_group_count=c.groups, use_bias=c.bias, kernel_init=ZEROS, precision=PRECISION,
                    rngs=rngs)


class BatchNorm(nnx.BatchNorm):
    """nnx.BatchNorm with the spec's momentum and eps, and its running-variance convention.

    Flax's layer updates running var with the biased batch variance; for
    running_var='unbiased' (PyTorch) the training path below scales it by
    n/(n-1). Normalisation uses the biased one either way.
    """

    def __init__(self, n: Norm, bn: BNSpec, rngs: nnx.Rngs):
        super().__init__(n.channels, momentum=1.0 - bn.momentum, epsilon=bn.eps, use_running_average=True,
                         use_scale=n.affine, use_bias=n.affine,  # input_bn: running statistics only
                         use_fast_variance=False, rngs=rngs)  # two-pass variance, not E[x^2] - E[x]^2
        self.unbiased = bn.running_var == "unbiased"

    def __call__(self, x):
        if self.use_running_average or not self.unbiased:
            return super().__call__(x)
        axes = tuple(range(x.ndim - 1))  # NHWC: every axis but the channels
        n = x.size // x.shape[-1]
        out_dtype = self.dtype or x.dtype  # the compute dtype (bf16/fp16 in mixed precision, see train.py)
        x = x.astype(jnp.promote_types(out_dtype, jnp.float32))  # statistics in fp32 at least, as Flax's own layer
        mean = x.mean(axes)
        var = jnp.square(x - mean).mean(axes)
        m = self.momentum
        self.mean[...] = m * self.mean[...] + (1 - m) * mean
        self.var[...] = m * self.var[...] + (1 - m) * var * (n / max(n - 1, 1))  # as the reference does
        y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
        y = y if self.scale is None else y * self.scale[...] + self.bias[...]
        return y.astype(out_dtype)


def batch_norm(n: Norm | None, bn: BNSpec, rngs: nnx.Rngs) -> BatchNorm | None:
    """The spec's BN for a plan Norm record; None where the plan has none (so optional BNs read as one line)."""
    return BatchNorm(n, bn, rngs) if n is not None else None


def max_pool(x, pool: Pool):
    p, k, s = pool.padding, pool.kernel, pool.stride
    if pool.same:  # TensorFlow's 'same' widths from the (static) size, filled with -inf or zeros
        fill = -jnp.inf if pool.pad_value == "neg_inf" else 0.0
        x = jnp.pad(x, ((0, 0), same_pads(x.shape[1], k, s), same_pads(x.shape[2], k, s), (0, 0)),
                    constant_values=fill)
        return nnx.max_pool(x, (k, k), strides=(s, s), padding="VALID")
    if pool.pad_value == "zero":  # keras.applications: ZeroPadding2D, then an unpadded pool
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        return nnx.max_pool(x, (k, k), strides=(s, s), padding="VALID")
    return nnx.max_pool(x, (k, k), strides=(s, s), padding=((p, p), (p, p)))  # pads with -inf


# -- stem: [input_bn] conv1 [bn1-relu] [maxpool]; its layers are attributes of ResNet ---------


@partial(nnx.jit, static_argnames=("pool", "relu"), graph=False)  # plan records and flags, not arrays
def stem(x, input_bn: BatchNorm | None, conv1: nnx.Conv, bn1: BatchNorm | None, pool: Pool | None,
         relu: bool = True):
    if input_bn is not None:  # Gluon v2: standardises the data, no ReLU
        x = input_bn(x)
    x = conv1(x)
    if bn1 is not None:
        x = bn1(x)
    if relu:  # a folded stem keeps it without bn1
        x = nnx.relu(x)
    return max_pool(x, pool) if pool is not None else x


# -- block: basic or bottleneck, post- or pre-activation -------------------------------------


class Block(nnx.Module):
    """One residual block (the order is in plan.BlockPlan's docstring).

    Residual branch: conv1-bn1-relu-conv2-bn2[-relu-conv3-bn3]; a
    pre-activation block starts with preact_bn-relu and has no BN after its
    last conv. Shortcut: identity, every stride-th pixel ('subsample'), or
    downsample = [1x1/s conv, BN] (or the conv alone).
    """

    def __init__(self, p: BlockPlan, bn: BNSpec, rngs: nnx.Rngs):
        convs = [conv(c, rngs) for c in p.convs]
        norms = [batch_norm(n, bn, rngs) for n in p.norms] + [None] * (len(p.convs) - len(p.norms))
        self.preact_bn = batch_norm(p.preact_bn, bn, rngs)
        self.conv1, self.bn1 = convs[0], norms[0]
        self.conv2, self.bn2 = convs[1], norms[1]
        self.conv3, self.bn3 = (convs[2], norms[2]) if len(convs) == 3 else (None, None)
        # nnx.List names its layers downsample.0 (the conv) and downsample.1 (the BN of 'conv_bn')
        self.downsample = nnx.List([conv(p.downsample_conv, rngs)]
                                   + ([batch_norm(p.downsample_bn, bn, rngs)] if p.downsample_bn else [])
                                   ) if p.downsample_conv else None
        self.stride = p.stride

    def residual(self, x):
        layers = [(c, n) for c, n in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3))
                  if c is not None]
        for i, (c, n) in enumerate(layers):
            x = c(x) if n is None else n(c(x))
            if i < len(layers) - 1:
                x = nnx.relu(x)
        return x

    def shortcut(self, x):
        if self.downsample is None:
            return x[:, :: self.stride, :: self.stride, :]  # identity, or 'subsample' when strided
        for layer in self.downsample:
            x = layer(x)
        return x

    @nnx.jit(graph=False)  # one program per block structure and input shape, shared by identical blocks
    def __call__(self, x):
        if self.preact_bn is None:  # post-activation (v1): ReLU after the add
            return nnx.relu(self.residual(x) + self.shortcut(x))
        pre = nnx.relu(self.preact_bn(x))  # pre-activation (v2): no ReLU after the add
        # A projection reads the pre-activated input; an identity/subsample reads the raw block input.
        return self.residual(pre) + self.shortcut(pre if self.downsample is not None else x)


# -- stage: a run of blocks, named layerI.J ----------------------------------------------------


def stage(blocks: tuple[BlockPlan, ...], bn: BNSpec, rngs: nnx.Rngs) -> nnx.List:
    return nnx.List([Block(b, bn, rngs) for b in blocks])


# -- head: [post_bn-relu] - global average pool - [fc] -----------------------------------------


def global_avg_pool(x):
    return x.mean(axis=(1, 2))  # NHWC -> (N, C)


@nnx.jit(graph=False)
def head(x, post_bn: BatchNorm | None, fc: nnx.Linear | None):
    """(post_bn's output or None, pooled (N, C), logits or None: no fc for num_classes 0)."""
    post = nnx.relu(post_bn(x)) if post_bn is not None else None
    pooled = global_avg_pool(x if post is None else post)
    return post, pooled, fc(pooled) if fc is not None else None


# -- build ---------------------------------------------------------------------------------------


class ResNet(nnx.Module):
    """[input_bn] conv1 [bn1] [maxpool] - layer1 ... layerK - [post_bn] - avgpool - [fc], NHWC.

    It returns the logits; with num_classes 0 the pooled features (N, C); a feature extractor
    (spec.features) returns the list of its features' NHWC maps and has no head.
    """

    def __init__(self, spec: ResNetSpec, rngs: nnx.Rngs):
        p = plan(spec)
        self.spec = spec
        # stem
        self.input_bn = batch_norm(p.stem.input_bn, spec.bn, rngs)
        self.conv1 = conv(p.stem.conv, rngs)
        self.bn1 = batch_norm(p.stem.bn, spec.bn, rngs)
        self.pool = p.stem.pool  # no variables: the plan's record
        self.stem_relu = p.stem.relu
        # stages: attributes layer1 ... layerK
        self.stage_names = tuple(f"layer{i + 1}" for i in range(len(p.stages)))
        for name, blocks in zip(self.stage_names, p.stages):
            setattr(self, name, stage(blocks, spec.bn, rngs))
        # head (none in a feature extractor; no fc for num_classes 0)
        self.has_head = p.head is not None
        self.post_bn = batch_norm(p.head.post_bn, spec.bn, rngs) if self.has_head else None
        fc = p.head.fc if self.has_head else None
        self.fc = None if fc is None else nnx.Linear(fc.in_features, fc.out_features, kernel_init=ZEROS,
                                                     precision=PRECISION, rngs=rngs)
        self.output_rows = p.output_rows
        self.feature_info = feature_info(spec) if spec.features else []

    def blocks(self):
        for name in self.stage_names:
            for j, block in enumerate(getattr(self, name)):
                yield f"{name}.{j}", block

    def rows(self, x) -> dict:
        """Every layer-table row's output, in order: NHWC, 'avgpool' (N, C), 'fc' the logits."""
        out = {"stem": (x := stem(x, self.input_bn, self.conv1, self.bn1, pool=self.pool, relu=self.stem_relu))}
        for name, block in self.blocks():
            out[name] = x = block(x)
        if not self.has_head:
            return out
        post, pooled, logits = head(x, self.post_bn, self.fc)
        if post is not None:
            out["post_bn"] = post
        out["avgpool"] = pooled
        if logits is not None:
            out["fc"] = logits
        return out

    def __call__(self, x):
        rows = self.rows(x)
        out = [rows[name] for name in self.output_rows]
        return out if self.spec.features else out[0]


def build(spec: ResNetSpec, device: str = "auto", seed: int = 0, state: Mapping[str, np.ndarray] | None = None
          ) -> ResNet:
    """The NNX model on `device`, in inference mode: `state` (a canonical state) or the core's seeded weights."""
    with jax.default_device(jax_device(device)):  # every variable is created there
        model = ResNet(spec, rngs=nnx.Rngs(seed))
    from_canonical(model, init_weights(spec, seed) if state is None else state)
    return model


# -- the contract --------------------------------------------------------------------------------


def model_device(model: ResNet) -> jax.Device:
    """The jax.Device the model's variables live on."""
    return next(iter(model.conv1.kernel[...].devices()))


def mode_view(model: ResNet, train: bool, dtype=None) -> ResNet:
    """A view of `model` sharing its variables: BN in training or inference mode, layers computing in `dtype`.

    In training BN uses batch statistics and its running-stat updates land in
    `model`, whose own mode is left as it was. nnx.view copies the modules
    (not the variables), so the view's compute dtype leaves the model as it was.
    """
    # A folded post-activation net (for_inference) has no BN to set, and nnx.view refuses unused keys.
    has_bn = model.spec.preactivation or model.spec.stem.input_norm or not model.spec.folded_bn
    view = nnx.view(model, graph=False, **({"use_running_average": not train} if has_bn else {}))
    if dtype is not None:
        for _, module in nnx.iter_modules(view):
            if isinstance(module, (nnx.Conv, nnx.Linear, nnx.BatchNorm)):
                module.dtype = dtype  # param_dtype stays float32: Flax casts the weights per layer
    return view


def to_nhwc(x, device: jax.Device) -> jax.Array:
    """NCHW images (NumPy) -> an NHWC float32 array on `device`."""
    return jax.device_put(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 2, 3, 1)), device)


def activations(model: ResNet, x, train: bool = False) -> dict[str, np.ndarray]:
    rows = mode_view(model, train).rows(to_nhwc(x, model_device(model)))
    return {name: np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)) if a.ndim == 4 else np.asarray(a)
            for name, a in rows.items()}


def forward(model: ResNet, x, train: bool = False) -> np.ndarray | list[np.ndarray]:
    """The model's output as numpy: logits (N, classes), pooled features (N, C), or a feature extractor's maps."""
    infer = getattr(model, "infer", None)  # an inference model's one program (infer.py)
    run = infer if infer is not None and not train else mode_view(model, train)
    out = run(to_nhwc(x, model_device(model)))
    if isinstance(out, list):
        return [np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)) for a in out]
    return np.asarray(out)


def _row_of(path: tuple) -> str:
    first = str(path[0])  # conv1, layer1 (then the block's index), post_bn, fc, ...
    if first in ("input_bn", "conv1", "bn1"):
        return "stem"
    return f"{first}.{path[1]}" if first.startswith("layer") else first


def row_counts(model: ResNet) -> dict[str, tuple[int, int]]:
    """Row -> (trainable params, BN running stats), counted from the model's nnx.Param / nnx.BatchStat."""
    head = (["post_bn"] if model.post_bn is not None else []) + ["avgpool"] + (["fc"] if model.fc is not None else [])
    rows = ["stem", *(name for name, _ in model.blocks()), *(head if model.has_head else [])]
    counts = {row: [0, 0] for row in rows}
    for kind, col in ((nnx.Param, 0), (nnx.BatchStat, 1)):
        for path, var in nnx.to_flat_state(nnx.state(model, kind)):
            counts[_row_of(path)][col] += int(np.prod(var[...].shape))
    return {row: (params, buffers) for row, (params, buffers) in counts.items()}


def device_of(model: ResNet) -> str:
    return device_name(model_device(model))


def framework_version() -> str:
    return f"flax {flax.__version__} (jax {jax.__version__})"
