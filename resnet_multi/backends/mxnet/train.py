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

Data parallel (`DataParallel`, docs/distributed.md): the textbook Gluon multi-device loop, with the
parameters on N contexts, one slice of the global batch each, and gluon.Trainer(kvstore='device',
update_on_kvstore=False) summing the gradients; --sync-bn swaps every BN for `SyncBatchNorm` below.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

from resnet_multi.backends.common import MOMENTUM_PREFIX, check_momentum_state, check_precision, dist_timeout_s
from resnet_multi.errors import DeviceUnavailable, UserError, WorkerFailed

from .model import BatchNorm, ResNet, context_of
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
        self.updaters, self.contexts = [self.updater], [self.ctx]  # one per context (DistributedStep: several)

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
    """'momentum.<canonical name>' -> float32 momentum buffer b (torch.optim.SGD's); with several contexts the
    first one's (they hold the same).

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
    buffers = {name: np.asarray(state[MOMENTUM_PREFIX + name], dtype=np.float32) for name in step.params} if state \
        else {}
    for updater, ctx in zip(step.updaters, step.contexts):  # every context's updater: the same buffers
        updater.states.clear()
        updater.states_synced.clear()
        for index, name in enumerate(buffers):
            updater.states[index] = nd.array(buffers[name], ctx=ctx, dtype="float32")
            updater.states_synced[index] = True




# -- data parallel: gluon.Trainer over N contexts, the gradients reduced by a kvstore ---------------------------



class Lockstep:
    """The contexts' training forward passes side by side: one Python thread per context, taking turns in
    MXNet's frontend (one at a time, ``turn``), meeting at every SyncBatchNorm to swap per-channel sums.

    A loop over the contexts cannot synchronise BN: context 0's layer needs context 1's sums before context 1
    has run that layer. The threads only push operators (MXNet runs them asynchronously, each context on its
    own engine worker); the sums are NDArrays, so nothing waits for a value here.
    """

    def __init__(self, contexts: list, timeout: float):
        self.contexts, self.timeout = list(contexts), timeout
        self.turn = threading.Lock()
        self.barrier = threading.Barrier(len(self.contexts), timeout=timeout)
        self.pool = ThreadPoolExecutor(len(self.contexts), thread_name_prefix="mxnet-context")
        self.local = threading.local()  # this thread's context index and meeting count
        self.posted: dict[tuple[int, int], nd.NDArray] = {}

    def active(self) -> bool:
        return getattr(self.local, "rank", None) is not None

    def run(self, fn) -> list:
        """[fn(0), ..., fn(N - 1)], each in its context's thread; a failure in one stops them all."""
        self.posted.clear()
        self.barrier.reset()
        futures = [self.pool.submit(self._work, fn, k) for k in range(len(self.contexts))]
        errors = [f.exception() for f in futures]
        first = next((e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)),
                     None)
        if first is not None:
            raise first
        if any(errors):
            raise WorkerFailed(f"mxnet: the {len(self.contexts)} contexts' forward passes did not meet at a "
                               f"synchronized BN within {self.timeout:g} s (RESNET_MULTI_DIST_TIMEOUT)")
        return [f.result() for f in futures]

    def _work(self, fn, k: int):
        self.local.rank, self.local.meetings = k, 0
        try:
            with self.turn:
                return fn(k)
        except BaseException:
            self.barrier.abort()  # the others stop waiting for this one
            raise
        finally:
            self.local.rank = None

    def share(self, value: nd.NDArray) -> list[nd.NDArray]:
        """Every context's ``value`` at this meeting, in context order."""
        k, meeting = self.local.rank, self.local.meetings
        self.local.meetings += 1
        self.posted[meeting, k] = value
        self.turn.release()
        try:
            self.barrier.wait()
        finally:
            self.turn.acquire()
        return [self.posted[meeting, j] for j in range(len(self.contexts))]

    def close(self) -> None:
        self.pool.shutdown(wait=False)


class SyncBatchNorm(BatchNorm):
    """model.BatchNorm over the global batch (--sync-bn): in a training step under Lockstep, the mean and the
    biased variance of all contexts' slices together, two passes as one process computes them, each sum
    reduced across contexts with NDArray copies (differentiable: the backward pass reduces the gradients of
    the statistics the same way); the running statistics updated from them in the forward pass by the spec's
    rule. Anywhere else (inference, a lone training call), model.BatchNorm itself.

    Not gluon.contrib.nn.SyncBatchNorm: on CPU contexts its backward deadlocks under MXNet's bulk execution,
    its variance is one pass (E[x^2] - E[x]^2), and it updates the running statistics in the backward pass
    with the biased variance (the spec's rule is the forward pass, usually unbiased).
    """

    lockstep: Lockstep | None = None

    def hybrid_forward(self, F, x, gamma, beta, running_mean, running_var):
        lockstep = self.lockstep
        if F is not nd or not autograd.is_training() or lockstep is None or not lockstep.active():
            return super().hybrid_forward(F, x, gamma, beta, running_mean, running_var)
        ctx, axes = x.ctx, (0, 2, 3)
        count = x.size // x.shape[1] * len(lockstep.contexts)  # the slices are the same size

        def global_sum(local):  # the same additions in the same order on every context: identical results
            return nd.add_n(*[part.as_in_context(ctx) for part in lockstep.share(local)])

        mean = global_sum(x.sum(axis=axes)) / count
        centered = nd.broadcast_sub(x, mean.reshape((1, -1, 1, 1)))
        var = global_sum(nd.square(centered).sum(axis=axes)) / count
        with autograd.pause():  # bookkeeping, not part of the differentiated computation
            unbiased = var * (count / max(count - 1, 1)) if self.running_var_rule == "unbiased" else var
            keep = self._kwargs["momentum"]  # Gluon's momentum: 1 - the spec's
            running_mean[:] = keep * running_mean + (1 - keep) * mean
            running_var[:] = keep * running_var + (1 - keep) * unbiased
        scale = nd.rsqrt(var + self._kwargs["eps"])
        if not self._kwargs["fix_gamma"]:
            scale = scale * gamma
        return nd.broadcast_add(nd.broadcast_mul(centered, scale.reshape((1, -1, 1, 1))), beta.reshape((1, -1, 1, 1)))


class DataParallel:
    """gluon.Trainer over ``workers`` contexts (mx.gpu(i), or mx.cpu(i) on CPU), one process.

    The model's parameters live on every context (the same values: Parameter.reset_ctx from one build); each
    context computes the loss of its slice, the kvstore ('device') sums the gradients and every context applies
    the same update with its own updater (update_on_kvstore=False; the optimizer is `SGD` above). --sync-bn:
    every BN becomes SyncBatchNorm and the contexts' forward passes run under Lockstep; without it each
    context's BN normalises its own slice and keeps its own running statistics (reads give the first's).
    """

    launcher = False  # one process drives every context
    processes, rank = 1, 0
    kvstore = "device"

    def __init__(self, workers: int, sync_bn: bool = False, device: str = "auto"):
        from resnet_multi.backends.common import parallel_device_kind

        self.workers, self.sync_bn = int(workers), bool(sync_bn)
        gpus = mx.context.num_gpus()
        kind = parallel_device_kind(device, gpus, f"MXNet {mx.__version__}")
        if kind == "gpu" and gpus < self.workers:
            raise DeviceUnavailable(f"{self.workers} workers need {self.workers} GPUs; MXNet sees {gpus}")
        self.contexts = [mx.gpu(i) if kind == "gpu" else mx.cpu(i) for i in range(self.workers)]
        self.device = ",".join(f"{c.device_type}:{c.device_id}" for c in self.contexts)
        self.lockstep = Lockstep(self.contexts, dist_timeout_s()) if self.sync_bn else None
        self.name = (f"mxnet gluon.Trainer, kvstore {self.kvstore} over {self.workers} contexts "
                     f"({', '.join(map(str, self.contexts))})"
                     + (", SyncBatchNorm (BN over the global batch)" if self.sync_bn else
                        ", BN over each context's slice"))
        # Reads without a context (Parameter.data(): weights.to_canonical) give the first context's copy.
        self.home = mx.Context(self.contexts[0])
        self.home.__enter__()

    def build(self, spec, device: str = "auto", seed: int = 0, state=None):
        from .model import build, device_name

        model = build(spec, device=device_name(self.contexts[0]), seed=seed, state=state)
        model.collect_params().reset_ctx(self.contexts)  # a copy of the same values on every context
        if self.sync_bn:
            def convert(block):
                if isinstance(block, BatchNorm):
                    block.__class__ = SyncBatchNorm
                    block.lockstep = self.lockstep
            model.apply(convert)
        return model

    def make_train_step(self, model, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                        precision: str = "fp32") -> "DistributedStep":
        return DistributedStep(model, self, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               precision=precision)

    def gather(self, step) -> None:
        """Nothing to do: every context holds the trained weights (reads give the first's)."""

    def replica_spread(self, step: "DistributedStep") -> float:
        """The largest difference between two contexts' copies of any trainable parameter."""
        worst = 0.0
        for param in step.params.values():
            copies = [a.asnumpy().astype(np.float64) for a in param.list_data()]
            worst = max([worst, *(float(np.abs(c - copies[0]).max(initial=0.0)) for c in copies)])
        return worst

    def close(self) -> None:
        if self.lockstep is not None:
            self.lockstep.close()
        if self.home is not None:
            self.home.__exit__(None, None, None)
            self.home = None


class DistributedStep(TrainStep):
    """TrainStep over the engine's contexts: step(global batch x, labels) -> the global batch's mean loss."""

    def __init__(self, model, engine: DataParallel, **kwargs):
        super().__init__(model, **kwargs)
        self.engine, self.contexts = engine, list(engine.contexts)
        # update_on_kvstore=False: the kvstore only sums gradients; each context's updater applies the same step.
        self.trainer = gluon.Trainer(list(self.params.values()), self.optimizer, kvstore=engine.kvstore,
                                     update_on_kvstore=False)
        self.updaters = self.trainer._updaters  # one per context, index i = self.params' i-th
        self.updater = self.updaters[0]

    def __call__(self, x, labels) -> float:
        x, labels = np.asarray(x, dtype=np.float32), np.asarray(labels)
        workers = len(self.contexts)
        share = len(labels) // workers  # context k: the k-th contiguous slice of the global batch
        xs = [nd.array(x[k * share:(k + 1) * share], ctx=c, dtype="float32") for k, c in enumerate(self.contexts)]
        ys = [nd.array(labels[k * share:(k + 1) * share], ctx=c, dtype="float32")
              for k, c in enumerate(self.contexts)]

        def forward(k: int) -> nd.NDArray:
            with autograd.record():
                return self.loss_fn(self.model(xs[k]), ys[k]).mean()

        lockstep = self.engine.lockstep
        losses = lockstep.run(forward) if lockstep is not None else [forward(k) for k in range(workers)]
        autograd.backward(losses)
        # The kvstore sums the contexts' gradients of their slices' mean losses: 1 / workers makes it the
        # gradient of the global batch's mean loss.
        self.trainer.step(workers)
        return float(np.mean([loss.asscalar() for loss in losses]))
