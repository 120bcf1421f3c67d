"""The TensorFlow lowering: a ResNetSpec as a Keras 3 functional keras.Model.

Built the way keras.applications builds its ResNets: functions on symbolic
tensors (stem, block, stage, head), explicit ZeroPadding2D before every
padded conv (SamePadding2D where the spec asks for TensorFlow's 'same', its
widths computed from the input size, never padding='same'), channels_last (NHWC, TensorFlow's fast layout on CPU). Every
Keras layer that holds weights is named with its canonical name (conv1, bn1,
layer1.0.conv1, layer1.0.downsample.0, fc; Keras forbids only '/'), so
``model.get_layer("layer1.0.downsample.0")`` finds it and weights.py maps
variables by layer name. Layers without weights get derived names
("layer1.0.conv2.pad", "layer1.0.bn1.relu", "layer1.0.add").

The model returns logits (the pooled features with num_classes 0; a feature
extractor, spec.features, returns the list of its NHWC maps). activations() runs the same graph (same layers, same
variables) with every layer-table row as a named output, the usual Keras
feature-extraction model, traced once per mode (model.row_functions).

Every geometric choice comes from resnet_multi.arch.plan.plan(spec); every
numerics choice from the spec. BN: Keras writes momentum the other way round
(moving = momentum * moving + (1 - momentum) * batch), so Keras momentum is
1 - spec.bn.momentum; epsilon passes through. Keras updates moving_variance
with the biased batch variance (spec running_var='biased'); for 'unbiased'
(PyTorch's n / (n - 1)) the small BatchNorm subclass below does the update
itself. Both normalise with the biased batch variance, like the reference.

Keras conv kernels are (kH, kW, I/groups, O); weights.py converts to and from
the canonical PyTorch layout (resnet_multi.weights.layouts).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from functools import partial  # noqa: E402
from typing import Mapping  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers, ops  # noqa: E402

from resnet_multi.arch.plan import BlockPlan, Conv, HeadPlan, Norm, Pool, StemPlan, plan, same_pads  # noqa: E402
from resnet_multi.arch.shapes import feature_info  # noqa: E402
from resnet_multi.arch.spec import ResNetSpec  # noqa: E402
from resnet_multi.backends import common  # noqa: E402
from resnet_multi.errors import BackendUnavailable  # noqa: E402
from resnet_multi.weights.canonical import init_weights  # noqa: E402

from . import weights  # noqa: E402

FRAMEWORK = "tensorflow"

if keras.backend.backend() != "tensorflow":  # keras was imported before us with another backend
    raise BackendUnavailable(f"the tensorflow backend needs Keras on TensorFlow, but Keras runs on "
                             f"{keras.backend.backend()!r}; unset KERAS_BACKEND or set it to 'tensorflow'")

# TF32 (Ampere+) silently rounds matmul/conv inputs to 10 mantissa bits; parity is checked in fp32.
tf.config.experimental.enable_tensor_float_32_execution(False)
for _gpu in tf.config.list_physical_devices("GPU"):
    try:  # share the GPU with other frameworks instead of reserving all of its memory up front
        tf.config.experimental.set_memory_growth(_gpu, True)
    except RuntimeError:  # the GPU was already initialised by someone else: leave it as it is
        pass


# -- device handling -------------------------------------------------------------------

GPU_HINT = 'a GPU build: pip install "tensorflow[and-cuda]"'


def resolve_device(device: str = "auto") -> str:
    """'auto' | 'cpu' | 'gpu' (also 'gpu:N', 'cuda', 'cuda:N') -> a TensorFlow device string ('CPU:0', 'GPU:0')."""
    # TensorFlow's own spellings ('/device:GPU:0', '/GPU:0') are accepted too.
    name = str(device).strip().lower().removeprefix("/").removeprefix("device:")
    kind, index = common.parse_device(name, len(tf.config.list_physical_devices("GPU")),
                                      f"TensorFlow {tf.__version__}", GPU_HINT)
    return f"{kind.upper()}:{index}"


def devices() -> list[str]:
    """The devices TensorFlow sees here: 'CPU:0', then 'GPU:0', 'GPU:1', ..."""
    return [f"{kind}:{i}" for kind in ("CPU", "GPU") for i in range(len(tf.config.list_physical_devices(kind)))]


# -- layers ----------------------------------------------------------------------------


class BatchNorm(layers.BatchNormalization):
    """keras BatchNormalization that can update moving_variance the PyTorch way.

    Keras's own update uses the biased batch variance. With
    ``unbiased_running_var`` the training-mode update uses n / (n - 1) times
    it (n = N * H * W values per channel), as torch does; normalisation
    still uses the biased one. Inference is Keras's own code path.
    """

    def __init__(self, *, unbiased_running_var: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.unbiased_running_var = unbiased_running_var

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable and self.unbiased_running_var) or mask is not None:
            return super().call(inputs, training=training, mask=mask)
        # Statistics in float32 whatever the compute dtype, as Keras's own BN does under mixed precision.
        inputs = ops.cast(inputs, "float32")
        # NHWC: every axis but the channels; synchronized (data parallel, --sync-bn): over every replica's batch
        mean, variance = ops.moments(inputs, axes=[0, 1, 2], synchronized=self.synchronized)
        count = ops.cast(ops.size(inputs) // inputs.shape[self.axis], inputs.dtype)
        if self.synchronized and tf.distribute.has_strategy():  # the replicas' slices are the same size
            count = count * tf.distribute.get_strategy().num_replicas_in_sync
        unbiased = variance * count / ops.maximum(count - 1.0, 1.0)  # n = 1 would divide by zero
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + unbiased * (1.0 - self.momentum))
        outputs = ops.batch_normalization(inputs, mean, variance, axis=self.axis, offset=self.beta,
                                          scale=self.gamma, epsilon=self.epsilon)
        return ops.cast(outputs, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "unbiased_running_var": self.unbiased_running_var}


# Framework details fixed once: NHWC, float32 whatever Keras's global dtype policy says,
# zero initializers (build() loads the core's seeded weights over them).
NHWC, FP32 = "channels_last", "float32"
Conv2D = partial(layers.Conv2D, padding="valid", data_format=NHWC, dtype=FP32,
                 kernel_initializer="zeros", bias_initializer="zeros")
ZeroPadding2D = partial(layers.ZeroPadding2D, data_format=NHWC, dtype=FP32)
MaxPooling2D = partial(layers.MaxPooling2D, padding="valid", data_format=NHWC, dtype=FP32)
GlobalAveragePooling2D = partial(layers.GlobalAveragePooling2D, data_format=NHWC, dtype=FP32)
Dense = partial(layers.Dense, dtype=FP32, kernel_initializer="zeros", bias_initializer="zeros")
ReLU = partial(layers.ReLU, dtype=FP32)
Add = partial(layers.Add, dtype=FP32)


class SamePadding2D(layers.Layer):
    """TensorFlow's 'same' padding made explicit: widths from each input's (dynamic) size, as
    plan.same_pads computes them (the odd pixel after), filled with ``fill`` (0, or -inf for a pool)."""

    def __init__(self, kernel: int, stride: int, fill: float = 0.0, **kwargs):
        super().__init__(dtype=FP32, **kwargs)
        self.kernel, self.stride, self.fill = kernel, stride, fill

    def widths(self, n):
        out = (n + self.stride - 1) // self.stride
        total = tf.maximum((out - 1) * self.stride + self.kernel - n, 0)
        return tf.stack([total // 2, total - total // 2])

    def call(self, x):
        shape = tf.shape(x)  # NHWC
        zero = tf.zeros(2, tf.int32)
        return tf.pad(x, tf.stack([zero, self.widths(shape[1]), self.widths(shape[2]), zero]),
                      constant_values=self.fill)

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        size = (lambda d: None if d is None else d + sum(same_pads(d, self.kernel, self.stride)))
        return (n, size(h), size(w), c)

    def get_config(self):
        config = {k: v for k, v in super().get_config().items() if k != "dtype"}
        return {**config, "kernel": self.kernel, "stride": self.stride, "fill": self.fill}


def conv(x, c: Conv):
    """Explicit zero padding (symmetric, or 'same' by hand: SamePadding2D), then a 'valid' conv."""
    padding = "valid"
    if c.stride == 1 and c.kernel % 2 and c.padding == c.kernel // 2 or c.kernel == 1 and c.padding == 0:
        # Unstrided, k // 2 on every side: exactly what Keras's 'same' pads; TensorFlow's graph
        # optimizer then fuses the conv with its bias, BN and ReLU (an explicit Pad op blocks that).
        padding = "same"
    elif c.same:  # never Keras's padding='same' when strided: the widths are computed here, as the plan says
        x = SamePadding2D(c.kernel, c.stride, name=f"{c.name}.pad")(x)
    elif c.padding:
        x = ZeroPadding2D(c.padding, name=f"{c.name}.pad")(x)
    return Conv2D(c.out_channels, c.kernel, strides=c.stride, padding=padding, groups=c.groups, use_bias=c.bias,
                  name=c.name)(x)


def batch_norm(x, n: Norm, spec: ResNetSpec, relu: bool = False):
    """The spec's BN on x [then ReLU]: Keras momentum = 1 - spec momentum; eps as is."""
    # An affine-free norm (the stem's input_bn) has no gamma/beta: running statistics only.
    x = BatchNorm(axis=-1, momentum=1.0 - spec.bn.momentum, epsilon=spec.bn.eps,
                  unbiased_running_var=spec.bn.running_var == "unbiased", center=n.affine, scale=n.affine,
                  dtype=FP32, name=n.name)(x)
    return ReLU(name=f"{n.name}.relu")(x) if relu else x


def max_pool(x, pool: Pool):
    """The stem's max-pool, padded by hand with -inf or zeros (Keras has no -inf padding layer,
    and 'same' pooling would pad asymmetrically)."""
    p = pool.padding
    fill = -np.inf if pool.pad_value == "neg_inf" else 0.0
    if pool.same:  # TensorFlow's 'same' widths, filled as the spec says (TF's own 'same' pool: -inf)
        x = SamePadding2D(pool.kernel, pool.stride, fill, name=f"{pool.name}.pad")(x)
        return MaxPooling2D(pool.kernel, pool.stride, name=pool.name)(x)
    x = ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], constant_values=fill)
    return MaxPooling2D(pool.kernel, pool.stride, name=pool.name)(x)


# -- stem ------------------------------------------------------------------------------


def stem(x, s: StemPlan, spec: ResNetSpec):
    """[input_bn (affine-free, no ReLU)] conv1 [bn1-relu] [maxpool 3x3/2, padded by 1 with -inf or zeros]."""
    if s.input_bn is not None:
        x = batch_norm(x, s.input_bn, spec)
    x = conv(x, s.conv)
    if s.bn is not None:
        x = batch_norm(x, s.bn, spec)
    if s.relu:  # a folded stem keeps it without bn1
        x = ReLU(name="relu")(x)
    if s.pool is not None:
        x = max_pool(x, s.pool)
    return x


# -- block -----------------------------------------------------------------------------


def block(x, b: BlockPlan, spec: ResNetSpec):
    """One residual block, basic or bottleneck (the plan lists its convs), post- or pre-activation.

    Post-activation: conv-bn per conv with a relu between, add the shortcut, relu.
    Pre-activation: preact_bn-relu, then conv[-bn-relu] per conv (the last
    conv has no BN), add the shortcut, no relu. A projection shortcut reads
    the pre-activated input; identity and subsample shortcuts the raw input.
    """
    if b.preact:
        y = shortcut_in = batch_norm(x, b.preact_bn, spec, relu=True)
    else:
        y = shortcut_in = x
    for i, c in enumerate(b.convs):
        y = conv(y, c)
        if i < len(b.norms):  # a folded block has none
            y = batch_norm(y, b.norms[i], spec)
        if i < len(b.convs) - 1:
            y = ReLU(name=f"{b.norms[i].name if i < len(b.norms) else c.name}.relu")(y)

    if b.shortcut in ("conv", "conv_bn"):
        shortcut = conv(shortcut_in, b.downsample_conv)
        if b.downsample_bn is not None:
            shortcut = batch_norm(shortcut, b.downsample_bn, spec)
    elif b.shortcut == "subsample":  # keep every stride-th pixel (keras.applications: a 1x1/s max-pool)
        shortcut = x[:, :: b.stride, :: b.stride, :]
    else:
        shortcut = x
    y = Add(name=f"{b.name}.add")([y, shortcut])
    return y if b.preact else ReLU(name=f"{b.name}.relu")(y)


# -- stage -----------------------------------------------------------------------------


def stage(x, blocks: tuple[BlockPlan, ...], spec: ResNetSpec, rows: dict):
    """A run of blocks (torchvision's layerN); each block's output is a layer-table row."""
    for b in blocks:
        x = rows[b.name] = block(x, b, spec)
    return x


# -- head ------------------------------------------------------------------------------


def head(x, h: HeadPlan, spec: ResNetSpec, rows: dict):
    """[post_bn-relu (pre-activation)] global average pool [-> fc (logits; none for num_classes 0)]."""
    if h.post_bn is not None:
        x = rows["post_bn"] = batch_norm(x, h.post_bn, spec, relu=True)
    x = rows["avgpool"] = GlobalAveragePooling2D(name="avgpool")(x)
    if h.fc is not None:
        x = rows["fc"] = Dense(h.fc.out_features, name=h.fc.name)(x)
    return x


# -- build -----------------------------------------------------------------------------


def build(spec: ResNetSpec, device: str = "auto", seed: int = 0,
          state: Mapping[str, np.ndarray] | None = None) -> keras.Model:
    """The functional keras.Model for `spec` on `device`, loaded with `state` (a canonical state)
    when given, else with init_weights(spec, seed).

    Keras layers hold no train/eval flag: every call is inference unless it
    passes training=True, so the model is in inference mode as built.
    """
    device = resolve_device(device)
    p = plan(spec)
    with tf.device(device):  # variables live where they are created
        image = keras.Input(shape=(None, None, spec.in_channels), name="image", dtype=FP32)
        rows: dict = {}
        x = rows["stem"] = stem(image, p.stem, spec)
        for blocks in p.stages:
            x = stage(x, blocks, spec, rows)
        # Logits, pooled features (num_classes 0), or a feature extractor's list of NHWC maps.
        outputs = [rows[r] for r in p.output_rows] if spec.features else head(x, p.head, spec, rows)
        model = keras.Model(image, outputs, name=spec.name)
        # The same graph (same layers, same variables) with every layer-table row as an output.
        rows_model = keras.Model(image, rows, name=f"{spec.name}.rows")
    model.spec = spec
    model.row_names = tuple(rows)  # in model order: Keras may return dict outputs sorted by key
    model.output_rows = p.output_rows
    model.feature_info = feature_info(spec) if spec.features else []
    # One traced graph per mode for any batch and image size. Kept inside tf.functions, where
    # Keras's weight files do not look: a .weights.h5 holds the model's layers once.
    signature = [tf.TensorSpec((None, None, None, spec.in_channels), tf.float32)]
    model.row_functions = {train: tf.function(partial(rows_model, training=train), input_signature=signature)
                           for train in (False, True)}
    weights.from_canonical(model, init_weights(spec, seed) if state is None else state)
    return model


# -- the contract ----------------------------------------------------------------------


def activations(model: keras.Model, x: np.ndarray, train: bool = False) -> dict[str, np.ndarray]:
    """Every layer-table row's output as numpy: 4-D ones NCHW, 'avgpool' (N, C), 'fc' (N, classes).

    train=True: BN normalises with batch statistics and updates its moving ones.
    """
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32).transpose(0, 2, 3, 1))  # NCHW -> NHWC
    with tf.device(device_of(model)):
        out = model.row_functions[bool(train)](tf.constant(x))
    return {name: _to_nchw(out[name].numpy()) for name in model.row_names}


def _to_nchw(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2)) if a.ndim == 4 else a


def forward(model: keras.Model, x: np.ndarray, train: bool = False) -> np.ndarray | list[np.ndarray]:
    """The model's output as numpy: logits (N, classes), pooled features (N, C), or a feature extractor's maps."""
    infer = getattr(model, "infer", None)  # an inference model's one function (infer.py)
    if infer is not None and not train:
        with tf.device(device_of(model)):
            out = infer(tf.constant(np.ascontiguousarray(np.asarray(x, dtype=np.float32).transpose(0, 2, 3, 1))))
        return [_to_nchw(a.numpy()) for a in out] if isinstance(out, (list, tuple)) else _to_nchw(out.numpy())
    rows = activations(model, x, train=train)
    out = [rows[name] for name in model.output_rows]
    return out if model.spec.features else out[0]


def _row_of(layer_name: str) -> str:
    """The layer-table row a layer belongs to, from its canonical or derived name."""
    parts = layer_name.split(".")
    if parts[0].startswith("layer"):
        return ".".join(parts[:2])
    if parts[0] in ("post_bn", "avgpool", "fc"):
        return parts[0]
    return "stem"  # input_bn, conv1, bn1, relu, maxpool


def row_counts(model: keras.Model) -> dict[str, tuple[int, int]]:
    """Row -> (trainable params, BN moving statistics), counted from the layers' Keras variables."""
    counts = {name: [0, 0] for name in model.row_names}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        row = counts[_row_of(layer.name)]
        row[0] += sum(int(np.prod(v.shape)) for v in layer.trainable_weights)
        row[1] += sum(int(np.prod(v.shape)) for v in layer.non_trainable_weights)
    return {name: (params, buffers) for name, (params, buffers) in counts.items()}


def device_of(model: keras.Model) -> str:
    """Where the model's variables are, as 'CPU:0' / 'GPU:0'."""
    spec = tf.DeviceSpec.from_string(model.weights[0].value.device)
    return f"{spec.device_type}:{spec.device_index or 0}"


def framework_version() -> str:
    return f"{tf.__version__} (keras {keras.__version__})"
