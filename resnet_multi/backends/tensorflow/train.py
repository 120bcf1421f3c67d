"""One training step in TensorFlow/Keras 3: mean softmax cross-entropy, SGD with torch.optim.SGD semantics.

The custom-training-loop idiom of the Keras guides, written once:

    @tf.function                                   # jit_compile=True: XLA (the bench)
    def step(x, labels):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)       # BN: batch statistics, moving ones updated
            loss = loss_fn(labels, logits)         # mean sparse softmax cross-entropy, fp32
            scaled = optimizer.scale_loss(loss)    # fp16: LossScaleOptimizer's dynamic scale
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss                                # the loss before the update

The optimizer is keras.optimizers.SGD with one method changed (TorchSGD):
Keras keeps a velocity v = momentum * v - lr * g and decouples weight decay;
torch.optim.SGD adds weight decay to the gradient, keeps the buffer
b = momentum * b + g and steps w -= lr * b (no dampening, no Nesterov). Its
momentum variables therefore hold torch's buffers, which optimizer_state()
returns under canonical names ("momentum.layer1.0.conv1.weight", PyTorch
layout): a checkpoint written by any backend resumes in any other, exactly.
Weight decay applies to every trainable variable, BN's and biases included,
as plain torch.optim.SGD does.

BN in training mode follows the spec (model.py): Keras momentum = 1 - spec
momentum, the moving variance updated with the biased or unbiased batch
variance as spec.bn.running_var says.

Mixed precision is Keras's: the layers run under the 'mixed_bfloat16' or
'mixed_float16' dtype policy (compute in 16 bits, variables, gradients, BN
statistics and the optimizer in fp32), and fp16 wraps the optimizer in
keras.optimizers.LossScaleOptimizer. The model was built in fp32 and stays
so for forward(): the policy is set on its layers only while the step
traces its graph (a tf.function traces once), then restored.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Mapping

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from resnet_multi.backends.common import MOMENTUM_PREFIX, check_momentum_state, check_precision, momentum_shapes
from resnet_multi.weights.canonical import WeightsError
from resnet_multi.weights.layouts import from_channels_last, to_channels_last

from .model import device_of
from .weights import variables

PRECISIONS = {"fp32": None, "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}  # -> Keras dtype policy


def dtype_policy(precision: str) -> str | None:
    """The Keras mixed-precision policy for `precision` (None: plain fp32), or PrecisionUnavailable."""
    return PRECISIONS[check_precision(precision, PRECISIONS, "tensorflow")]


@contextmanager
def layer_policy(model: keras.Model, policy: str | None):
    """Run the model's layers under a Keras dtype policy for the duration (None: leave them as they are)."""
    if policy is None:
        yield
        return
    saved = [(layer, layer.dtype_policy) for layer in model.layers
             if not isinstance(layer, keras.layers.InputLayer)]
    try:
        for layer, _ in saved:
            layer.dtype_policy = policy
        yield
    finally:
        for layer, old in saved:
            layer.dtype_policy = old


class TorchSGD(keras.optimizers.SGD):
    """keras.optimizers.SGD with torch.optim.SGD's update: coupled weight decay, buffer b, w -= lr * b.

    The first step leaves b = g (+ weight decay), as torch does: the buffers start at zero.
    """

    def __init__(self, learning_rate: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=float(momentum), **kwargs)
        # Not Keras's `weight_decay`, which the base class would apply decoupled (AdamW style).
        self.coupled_weight_decay = float(weight_decay)

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        if self.coupled_weight_decay:
            g = ops.add(g, ops.multiply(variable, ops.cast(self.coupled_weight_decay, variable.dtype)))
        if self.momentum != 0:
            b = self.buffer(variable)
            self.assign(b, ops.add(ops.multiply(b, ops.cast(self.momentum, variable.dtype)), g))
            g = b
        self.assign_sub(variable, ops.multiply(g, lr))

    def buffer(self, variable) -> keras.Variable:
        """The momentum buffer b of one of the variables the optimizer was built with."""
        return self.momentums[self._get_variable_index(variable)]

    def get_config(self):
        return {**super().get_config(), "weight_decay": self.coupled_weight_decay}


class TrainStep:
    """step(x, labels) -> loss before the update; the model's variables and the optimizer change in place.

    jit_compile=True compiles the step with XLA (the bench does); training leaves it off, so the
    last, smaller batch of an epoch needs no recompilation.
    """

    def __init__(self, model: keras.Model, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 precision: str = "fp32", jit_compile: bool = False):
        self.model = model
        self.precision = precision
        self.policy = dtype_policy(precision)
        self.device = device_of(model)
        self.momentum = float(momentum)
        self.variables = list(model.trainable_variables)
        with tf.device(self.device):
            self.sgd = TorchSGD(learning_rate=lr, momentum=momentum, weight_decay=weight_decay)
            self.sgd.build(self.variables)  # momentum buffers exist from the start, zero
            # fp16 needs its loss scaled so that small gradients survive; bf16 has fp32's exponent range.
            self.optimizer = (keras.optimizers.LossScaleOptimizer(self.sgd) if precision == "fp16" else self.sgd)
            if self.optimizer is not self.sgd:
                self.optimizer.build(self.variables)
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)  # mean over the batch
        self.has_buffers = False  # torch's SGD has no buffers before its first step
        signature = [tf.TensorSpec((None, None, None, model.input_shape[-1]), tf.float32),
                     tf.TensorSpec((None,), tf.int64)]
        self._step = tf.function(self._graph, input_signature=signature, jit_compile=jit_compile)

    def _graph(self, x, labels):
        with tf.GradientTape() as tape:
            logits = self.model(x, training=True)
            loss = self.loss_fn(labels, ops.cast(logits, "float32"))
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, self.variables)
        self.optimizer.apply(grads, self.variables)
        return loss

    def run(self, x: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        """One step on NHWC tensors already on the device; returns the loss as a tensor (no host copy)."""
        with tf.device(self.device), layer_policy(self.model, self.policy):
            loss = self._step(x, labels)
        self.has_buffers = self.momentum != 0
        return loss

    def __call__(self, x, labels) -> float:
        """x: float32 NCHW numpy, labels: int64 (N,) numpy -> the mean cross-entropy before the update."""
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32).transpose(0, 2, 3, 1))  # NCHW -> NHWC
        with tf.device(self.device):
            x, labels = tf.constant(x), tf.constant(np.asarray(labels, dtype=np.int64))
        return float(self.run(x, labels))


# -- optimizer state with canonical names -------------------------------------------------


def _buffers(step: TrainStep) -> dict[str, keras.Variable]:
    """Canonical parameter name -> its momentum buffer (in Keras's layout, as the parameter)."""
    name_of = {variable.path: name for name, variable in variables(step.model).items()}
    return {name_of[variable.path]: step.sgd.buffer(variable) for variable in step.variables}


def optimizer_state(step: TrainStep) -> dict[str, np.ndarray]:
    """'momentum.<canonical name>' -> float32 numpy momentum buffer (torch's b), PyTorch layout.

    Empty with momentum 0 (SGD keeps no buffers) and before the first step
    (as torch: its buffers are created by the first step).
    """
    if not step.has_buffers:
        return {}
    return {MOMENTUM_PREFIX + name: np.ascontiguousarray(from_channels_last(np.asarray(buffer.numpy(), np.float32)))
            for name, buffer in _buffers(step).items()}


def load_optimizer_state(step: TrainStep, state: Mapping[str, np.ndarray]) -> None:
    """Set the momentum buffers from optimizer_state()'s dict: all or nothing.

    An empty dict clears the buffers (a fresh optimizer); otherwise every
    trainable parameter needs its buffer, with the parameter's shape.
    """
    spec = step.model.spec
    check_momentum_state(spec, state, step.momentum)
    if step.momentum == 0:  # plain SGD keeps no buffers
        return
    want = momentum_shapes(spec)
    buffers = _buffers(step)
    if set(want) != {MOMENTUM_PREFIX + k for k in buffers}:  # the model disagrees with its spec: a bug here
        raise WeightsError(f"Keras model of {spec.name} has trainable variables outside its spec")
    for name, buffer in buffers.items():
        if state:
            value = to_channels_last(np.asarray(state[MOMENTUM_PREFIX + name], dtype=np.float32))
            buffer.assign(np.ascontiguousarray(value))
        else:
            buffer.assign(np.zeros(buffer.shape, dtype=np.float32))
    step.has_buffers = bool(state)


# -- data parallel: tf.distribute.MirroredStrategy ---------------------------------------------------------------


class DataParallel:
    """tf.distribute.MirroredStrategy over ``workers`` local devices (GPUs, or logical CPUs), one process.

    The model and the optimizer are built under the strategy's scope (mirrored variables); each step runs
    strategy.run on every replica's slice, Keras scales each replica's mean loss by 1 / replicas and the
    optimizer all-reduces (sums) the gradients, so every replica applies the global batch's gradient.
    --sync-bn: Keras BatchNormalization(synchronized=True), statistics all-reduced over the replicas.
    On CPU the devices are logical CPUs (tf.config.set_logical_device_configuration, before TF starts).
    """

    launcher = False  # one process drives every device
    processes, rank = 1, 0

    def __init__(self, workers: int, sync_bn: bool = False, device: str = "auto"):
        from resnet_multi.backends.common import parallel_device_kind
        from resnet_multi.errors import DeviceUnavailable

        self.workers, self.sync_bn = int(workers), bool(sync_bn)
        gpus = tf.config.list_physical_devices("GPU")
        kind = parallel_device_kind(device, len(gpus), f"TensorFlow {tf.__version__}")
        if kind == "cpu":
            cpu = tf.config.list_physical_devices("CPU")[0]
            try:
                tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()]
                                                           * self.workers)
            except RuntimeError:  # TensorFlow has started: its logical devices are what they are
                pass
        found = [d.name for d in tf.config.list_logical_devices("GPU" if kind == "gpu" else "CPU")]
        if len(found) < self.workers:
            raise DeviceUnavailable(f"{self.workers} workers need {self.workers} {kind} devices; TensorFlow sees "
                                    f"{len(found)} (logical CPUs must be set before TensorFlow starts)")
        self.devices = found[:self.workers]
        self.device = ",".join(self.devices)
        self.strategy = tf.distribute.MirroredStrategy(devices=self.devices)
        self.name = (f"tf.distribute.MirroredStrategy over {self.workers} devices"
                     + (" (Keras BatchNormalization synchronized=True)" if self.sync_bn else ""))

    def build(self, spec, device: str = "auto", seed: int = 0, state=None) -> keras.Model:
        from .model import build

        with self.strategy.scope():
            model = build(spec, device=self.devices[0], seed=seed, state=state)
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = self.sync_bn  # read at every call: statistics over all replicas
        return model

    def make_train_step(self, model, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                        precision: str = "fp32") -> "DistributedStep":
        with self.strategy.scope():
            return DistributedStep(model, self, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                   precision=precision)

    def gather(self, step) -> None:
        """Nothing to do: the model's variables are the mirrored ones (reads give the first replica's)."""

    def replica_spread(self, step: "DistributedStep") -> float:
        """The largest difference between two replicas' copies of any trainable variable."""
        worst = 0.0
        for variable in step.variables:
            copies = [np.asarray(v.numpy(), np.float64) for v in step.engine.strategy.experimental_local_results(
                getattr(variable, "value", variable))]
            worst = max([worst, *(float(np.abs(c - copies[0]).max(initial=0.0)) for c in copies)])
        return worst

    def close(self) -> None:
        """Nothing to release."""


class DistributedStep(TrainStep):
    """TrainStep under the engine's MirroredStrategy: step(global batch x, labels) -> its mean loss."""

    def __init__(self, model: keras.Model, engine: DataParallel, **kwargs):
        self.engine = engine
        super().__init__(model, **kwargs)
        self.device = engine.devices[0]
        self._distributed = tf.function(self.replicated)

    def replicated(self, x, labels):
        per_replica = self.engine.strategy.run(self._graph, args=(x, labels))  # each: its mean loss / replicas
        return self.engine.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def __call__(self, x, labels) -> float:
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32).transpose(0, 2, 3, 1))  # NCHW -> NHWC
        labels = np.asarray(labels, dtype=np.int64)
        share = len(labels) // self.engine.workers

        def part(context):  # replica k: the k-th contiguous slice of the global batch
            k = context.replica_id_in_sync_group
            return tf.constant(x[k * share:(k + 1) * share]), tf.constant(labels[k * share:(k + 1) * share])

        values = self.engine.strategy.experimental_distribute_values_from_function(part)
        with layer_policy(self.model, self.policy):
            loss = self._distributed(*values)
        self.has_buffers = self.momentum != 0
        return float(loss)
