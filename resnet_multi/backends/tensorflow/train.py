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

from resnet_multi.arch.plan import plan
from resnet_multi.errors import UserError
from resnet_multi.weights.canonical import WeightsError, check_tensors

from . import weights as native
from .model import device_of

PRECISIONS = {"fp32": None, "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
MOMENTUM_PREFIX = "momentum."


class PrecisionUnavailable(UserError, ValueError):
    """A precision that is unknown to this backend."""


def dtype_policy(precision: str) -> str | None:
    """The Keras mixed-precision policy for `precision` (None: plain fp32), or PrecisionUnavailable."""
    if precision not in PRECISIONS:
        raise PrecisionUnavailable(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


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
            b = self.momentums[self._get_variable_index(variable)]
            self.assign(b, ops.add(ops.multiply(b, ops.cast(self.momentum, variable.dtype)), g))
            g = b
        self.assign_sub(variable, ops.multiply(g, lr))

    def get_config(self):
        return {**super().get_config(), "weight_decay": self.coupled_weight_decay}


class TrainStep:
    """step(x, labels) -> loss before the update; the model's variables and the optimizer change in place."""

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


def make_train_step(model: keras.Model, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                    precision: str = "fp32", jit_compile: bool = False) -> TrainStep:
    """The contract's step. jit_compile=True compiles it with XLA (the bench does; training needs no
    recompilation for the last, smaller batch of an epoch without it)."""
    return TrainStep(model, lr=lr, momentum=momentum, weight_decay=weight_decay, precision=precision,
                     jit_compile=jit_compile)


# -- optimizer state with canonical names -------------------------------------------------


def _buffers(step: TrainStep) -> dict[str, tuple[keras.Variable, object, object]]:
    """Canonical parameter name -> (its momentum buffer, to canonical layout, from canonical layout)."""
    by_path = {variable.path: (name, to_canon, from_canon)
               for name, variable, to_canon, from_canon in native._variables(step.model)}
    out = {}
    for variable in step.variables:
        name, to_canon, from_canon = by_path[variable.path]
        out[name] = (step.sgd.momentums[step.sgd._get_variable_index(variable)], to_canon, from_canon)
    return out


def optimizer_state(step: TrainStep) -> dict[str, np.ndarray]:
    """'momentum.<canonical name>' -> float32 numpy momentum buffer (torch's b), PyTorch layout.

    Empty with momentum 0 (SGD keeps no buffers) and before the first step
    (as torch: its buffers are created by the first step).
    """
    if not step.has_buffers:
        return {}
    out = {}
    for name, (buffer, to_canon, _) in _buffers(step).items():
        value = np.asarray(buffer.numpy(), dtype=np.float32)
        out[MOMENTUM_PREFIX + name] = np.ascontiguousarray(to_canon(value) if to_canon else value)
    return out


def load_optimizer_state(step: TrainStep, state: Mapping[str, np.ndarray]) -> None:
    """Set the momentum buffers from optimizer_state()'s dict: all or nothing.

    An empty dict clears the buffers (a fresh optimizer); otherwise every
    trainable parameter needs its buffer, with the parameter's shape.
    """
    spec = step.model.spec
    if step.momentum == 0:  # plain SGD keeps no buffers
        if state:
            raise WeightsError(f"optimizer state holds {len(state)} momentum buffers, but this step has "
                               f"momentum 0; nothing loaded")
        return
    want = {MOMENTUM_PREFIX + k: tuple(v) for k, v in plan(spec).param_shapes().items()}
    buffers = _buffers(step)
    if set(want) != {MOMENTUM_PREFIX + k for k in buffers}:  # the model disagrees with its spec: a bug here
        raise WeightsError(f"Keras model of {spec.name} has trainable variables outside its spec")
    if state:
        check_tensors(want, state, f"optimizer state does not fit {spec.name}")
    for name, (buffer, _, from_canon) in buffers.items():
        if state:
            value = np.asarray(state[MOMENTUM_PREFIX + name], dtype=np.float32)
            buffer.assign(np.ascontiguousarray(from_canon(value) if from_canon else value))
        else:
            buffer.assign(np.zeros(buffer.shape, dtype=np.float32))
    step.has_buffers = bool(state)
