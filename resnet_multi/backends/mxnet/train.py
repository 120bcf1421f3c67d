"""One training step in MXNet Gluon: mean softmax cross-entropy, torch.optim.SGD's update as an MXNet optimizer.

The textbook Gluon loop, written once:

    with autograd.record():              # training mode: BN uses batch statistics
        loss = loss_fn(model(x), labels).mean()
    loss.backward()
    updater(i, param.grad(), param.data()) for every trainable parameter

BN updates its running statistics by the spec's convention during the
forward pass (see model.BatchNorm; training-mode calls run imperatively).

The optimizer is an mx.optimizer.Optimizer behind an mx.optimizer.Updater,
which is what gluon.Trainer runs on one device; holding the Updater gives its
per-parameter momentum states, which optimizer_state() exports. The optimizer
is `SGD` below, torch.optim.SGD's update written as an MXNet optimizer:

    d = grad + wd * w;   b = momentum * b + d;   w -= lr * b     (b = d on the first step)

MXNet's own mx.optimizer.SGD follows the same trajectory, but keeps the
momentum pre-multiplied by the learning rate (mom = -lr * b). The canonical
optimizer state is torch's b, and float32 cannot carry mom to b and back
exactly (about one value in ten comes back one ulp off, for any lr that is
not a power of two), so a resumed run would drift from an uninterrupted one.
Keeping b itself makes optimizer_state / load_optimizer_state exact. Weight
decay applies to every trainable parameter, BN's and biases included, as in
torch.optim.SGD (no per-name wd_mult rules here).

Precision: fp32 only; MXNet 1.9's mixed precision (contrib.amp) is not wired in.
"""

from __future__ import annotations

from typing import Mapping

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

from resnet_multi.backends.common import MOMENTUM_PREFIX, check_momentum_state, check_precision
from resnet_multi.errors import UserError

from .model import ResNet, context_of
from .weights import parameters

PRECISIONS = ("fp32",)


class SGD(mx.optimizer.Optimizer):
    """torch.optim.SGD as an MXNet optimizer: its state is torch's momentum buffer b (see the module doc)."""

    def __init__(self, momentum: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.momentum = float(momentum)

    def create_state(self, index, weight):
        return nd.zeros(weight.shape, weight.context, dtype=weight.dtype) if self.momentum else None

    def update(self, index, weight, grad, state):
        self._update_count(index)
        lr, wd = self._get_lr(index), self._get_wd(index)
        d = grad * self.rescale_grad if self.rescale_grad != 1.0 else grad
        if wd:
            d = d + wd * weight
        if state is not None:  # torch: buf.mul_(momentum).add_(d)
            state *= self.momentum
            state += d
            d = state
        weight -= lr * d


class TrainStep:
    """step(x, labels) -> loss before the update; the model and the optimizer change in place."""

    def __init__(self, model, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 precision: str = "fp32"):
        check_precision(precision, PRECISIONS, "mxnet")
        if not lr >= 0:
            raise UserError(f"lr must be >= 0, got {lr!r}")
        self.model, self.lr, self.precision = model, float(lr), precision
        # Trainable Parameters (running statistics have grad_req 'null'), by canonical name for
        # our models, by Gluon's name for any other block (bench's native ResNet).
        named = parameters(model) if isinstance(model, ResNet) else dict(model.collect_params().items())
        self.params = {name: p for name, p in named.items() if p.grad_req != "null"}
        # rescale_grad 1: the loss is already the batch mean.
        self.optimizer = SGD(learning_rate=lr, momentum=momentum, wd=weight_decay, rescale_grad=1.0)
        self.updater = mx.optimizer.get_updater(self.optimizer)
        self.loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        self.ctx = context_of(model)

    def run(self, x: nd.NDArray, labels: nd.NDArray) -> nd.NDArray:
        """One step on arrays already on the device; returns the loss as an NDArray (no host sync)."""
        with autograd.record():  # train mode: batch statistics, running ones updated by the spec's rule
            loss = self.loss_fn(self.model(x), labels).mean()
        loss.backward()
        for index, param in enumerate(self.params.values()):
            self.updater(index, param.grad(self.ctx), param.data(self.ctx))
        return loss

    def __call__(self, x, labels) -> float:
        """x: float32 NCHW numpy, labels: int (N,) numpy -> the mean cross-entropy before the update."""
        x = nd.array(np.asarray(x, dtype=np.float32), ctx=self.ctx, dtype="float32")
        labels = nd.array(np.asarray(labels), ctx=self.ctx, dtype="float32")  # Gluon's losses take float labels
        return float(self.run(x, labels).asscalar())


# -- optimizer state with canonical names -------------------------------------------------


def optimizer_state(step: TrainStep) -> dict[str, np.ndarray]:
    """'momentum.<canonical name>' -> float32 momentum buffer b (torch.optim.SGD's).

    Empty with momentum 0 (SGD keeps no state) or before the first step.
    """
    out = {}
    for index, name in enumerate(step.params):
        buffer = step.updater.states.get(index)
        if buffer is not None:
            out[MOMENTUM_PREFIX + name] = buffer.asnumpy().astype(np.float32)
    return out


def load_optimizer_state(step: TrainStep, state: Mapping[str, np.ndarray]) -> None:
    """Set the momentum states from optimizer_state()'s dict: all or nothing; an empty dict clears them."""
    check_momentum_state(step.model.spec, state, step.optimizer.momentum)
    step.updater.states.clear()
    step.updater.states_synced.clear()
    for index, name in enumerate(step.params):
        if state:
            buffer = np.asarray(state[MOMENTUM_PREFIX + name], dtype=np.float32)
            step.updater.states[index] = nd.array(buffer, ctx=step.ctx, dtype="float32")
            step.updater.states_synced[index] = True


# -- data parallel ------------------------------------------------------------------------------------------------


class DataParallel:
    """Not wired in yet: MXNet's engine would be gluon.Trainer with a kvstore ('device' over cpu(i)/gpu(i)
    contexts, 'dist_sync' across processes) and SyncBatchNorm (docs/distributed.md). A one-line error until then.
    """

    def __init__(self, workers: int, sync_bn: bool = False, device: str = "auto"):
        raise UserError(f"mxnet: data-parallel training (workers {workers}) is not available yet; "
                        f"train with --workers 1, or use the torch, flax or tensorflow backend")
