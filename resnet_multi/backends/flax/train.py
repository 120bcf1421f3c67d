"""One training step in Flax NNX: mean softmax cross-entropy, optax SGD.

The textbook NNX step, written once (sgd_step):

    def train_step(model, optimizer, x, labels):
        loss, grads = nnx.value_and_grad(cross_entropy)(model, x, labels)
        optimizer.update(model, grads)
        return loss

compiled once per input shape with Flax's pattern for hot loops: TrainStep
splits the model and the optimizer once (tree mode, ``graph=False``) and runs
sgd_step under jax.jit as a pure function of their arrays (pure_step,
flat_step), writing the new arrays back into the same Variables. So there is
no NNX traversal of the model per call (nnx.jit's took 7-9 ms of each step on
the 2-core CPU, against 2 ms for this), and bench.py times this same program.

``model`` is a view of the user's model (``nnx.view``) with BN in training
mode: it shares the model's variables, so the new weights and the running
statistics (updated by the spec's convention, see model.BatchNorm) land in
the model itself, whose own mode is left as it was. The model's and the
optimizer's buffers are donated, so XLA updates them in place instead of
keeping two copies.

On CPU the view's convs with at most 2x2 output pixels are one matmul of
patches by the kernel (small_output_conv): XLA:CPU's convolution is 10-30x
slower there (layer3 and layer4 of a 32x32 input). The result is the same
sum in another order: it agrees with lax's conv to float32 rounding.

SGD follows torch.optim.SGD exactly: weight decay added to the gradient
(optax.add_decayed_weights), the momentum buffer b = momentum * b + g
(optax.sgd's trace, no dampening, no Nesterov), then w -= lr * b. Weight decay
applies to every parameter, BN's and biases included, as plain torch SGD.

Mixed precision is Flax's own: the layers get ``dtype=bf16`` (or fp16), the
compute dtype, while the parameters, their gradients and the optimizer stay
fp32 (``param_dtype``); BN statistics are computed in fp32 and the loss too.
fp16 also scales the loss dynamically, as torch.amp.GradScaler does (start
2**16, halve and skip the step on inf/nan gradients, double after 2000 good
steps); bf16 has fp32's exponent range and needs none. Any other precision
is a PrecisionUnavailable.

Optimizer state has the names every backend uses ('momentum.<canonical
name>', backends.common) and the canonical layout.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_multi.backends import common
from resnet_multi.errors import DeviceUnavailable, PrecisionUnavailable
from resnet_multi.weights.canonical import WeightsError
from resnet_multi.weights.layouts import from_channels_last, to_channels_last

from .model import mode_view, model_device, to_nhwc
from .weights import canonical_name

PRECISIONS = {"fp32": None, "bf16": jnp.bfloat16, "fp16": jnp.float16}
# torch.amp.GradScaler's defaults
INIT_SCALE, GROWTH_INTERVAL = 2.0**16, 2000


def compute_dtype(precision: str):
    """The compute dtype for `precision` (None: plain fp32), or PrecisionUnavailable."""
    return PRECISIONS[common.check_precision(precision, PRECISIONS, "flax")]


@functools.lru_cache(maxsize=None)
def sgd(lr: float, momentum: float = 0.0, weight_decay: float = 0.0, skip_nonfinite: bool = False
        ) -> optax.GradientTransformation:
    """torch.optim.SGD (no dampening, no Nesterov) as an optax chain; skip_nonfinite for fp16 loss scaling.

    One object per set of hyperparameters: the optimizer is part of what nnx.jit
    compiles for, so two steps with the same settings share one program.
    """
    tx = optax.chain(optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
                     optax.sgd(lr, momentum=momentum or None))
    # optax.apply_if_finite: a step with inf/nan gradients changes nothing (skip, never give up)
    return optax.apply_if_finite(tx, max_consecutive_errors=2**31 - 1) if skip_nonfinite else tx


def cross_entropy(model, x, labels):
    logits = model(x).astype(jnp.float32)  # the loss in fp32 whatever the compute dtype
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


class LossScale(nnx.Module):
    """Dynamic loss scaling for fp16, with torch.amp.GradScaler's schedule."""

    def __init__(self):
        self.scale = nnx.Variable(jnp.asarray(INIT_SCALE, jnp.float32))
        self.good_steps = nnx.Variable(jnp.asarray(0, jnp.int32))

    def update(self, finite):
        grow = finite & (self.good_steps[...] + 1 >= GROWTH_INTERVAL)
        self.scale[...] = jnp.where(finite, jnp.where(grow, 2.0, 1.0), 0.5) * self.scale[...]
        self.good_steps[...] = jnp.where(finite & ~grow, self.good_steps[...] + 1, 0)


def sgd_step(model, optimizer, scaler, x, labels):
    """The step's body: loss before the update, gradients, optimizer.update (model and optimizer in place)."""
    if scaler is None:
        loss, grads = nnx.value_and_grad(cross_entropy, graph=False)(model, x, labels)
        optimizer.update(model, grads)
        return loss

    def scaled(m):
        loss = cross_entropy(m, x, labels)
        return loss * scaler.scale[...], loss

    (_, loss), grads = nnx.value_and_grad(scaled, has_aux=True, graph=False)(model)
    grads = jax.tree.map(lambda g: g / scaler.scale[...], grads)
    finite = jnp.all(jnp.asarray([jnp.isfinite(g).all() for g in jax.tree.leaves(grads)]))
    optimizer.update(model, grads)  # optax.apply_if_finite: a step with inf/nan gradients changes nothing
    scaler.update(finite)
    return loss


# XLA:CPU's convolution is 10-30x slower than a matmul of the same size when the output is 2x2 or 1x1
# (d2l_resnet18 at 32x32: layer3 and layer4); from 3x3 up it is as fast or faster.
SMALL_OUTPUT = 4  # output pixels (H * W) up to which a conv is computed as one matmul


def small_output_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                      dimension_numbers=None, feature_group_count=1, precision=None, preferred_element_type=None,
                      **kwargs):
    """lax.conv_general_dilated (nnx.Conv's conv_general_dilated), as patches @ kernel for small outputs.

    Kernel taps that see only padding for every output pixel are left out: they add exact zeros. Anything
    else (strings for padding, dilation, groups, larger outputs, other layouts) is lax's own conv.
    """
    def lax_conv():
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count, precision=precision,
            preferred_element_type=preferred_element_type, **kwargs)

    if lhs.ndim != 4 or isinstance(padding, str) or feature_group_count != 1 or kwargs.get("out_sharding"):
        return lax_conv()
    dn = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if (tuple(dn.lhs_spec), tuple(dn.rhs_spec), tuple(dn.out_spec)) != ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2)) \
            or any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))):  # NHWC, HWIO, undilated only
        return lax_conv()
    n, h, w, c = lhs.shape
    kh, kw, _, out = rhs.shape
    (sh, sw), ((top, bottom), (left, right)) = window_strides, padding
    ho, wo = (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1
    if ho * wo > SMALL_OUTPUT or ho < 1 or wo < 1:
        return lax_conv()

    def live(tap, pad, size, stride, count):  # the tap reads a real pixel for some output position
        return any(pad <= tap + stride * i < pad + size for i in range(count))

    taps = [(i, j) for i in range(kh) if live(i, top, h, sh, ho) for j in range(kw) if live(j, left, w, sw, wo)]
    if not taps:  # every output pixel sees only padding
        return lax_conv()
    x = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
    patches = jnp.concatenate([x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] for i, j in taps], -1)
    kernel = jnp.concatenate([rhs[i, j] for i, j in taps], 0)  # (taps * C, O), the patches' order
    y = jax.lax.dot_general(patches.reshape(n * ho * wo, len(taps) * c), kernel, (((1,), (0,)), ((), ())),
                            precision=precision, preferred_element_type=preferred_element_type)
    return y.reshape(n, ho, wo, out)


def pure_step(graphdef):
    """sgd_step as a pure function of split state, for jax.jit: (state, x, labels) -> (new state, loss).

    Flax's pattern for hot loops (used by bench.py): nnx.split once, carry the
    state through a jax.jit'd function, nnx.update at the end. It skips NNX's
    per-call flattening of the model (about 3 ms per call for a ResNet-50 here).
    """

    def run(state, x, labels):
        model, optimizer, scaler = nnx.merge(graphdef, state)
        loss = sgd_step(model, optimizer, scaler, x, labels)
        return nnx.state((model, optimizer, scaler), graph=False), loss

    return run


def flat_step(graphdef, treedef):
    """pure_step on the state's leaves: (list of arrays, x, labels) -> (new list in the same order, loss)."""
    step = pure_step(graphdef)

    def run(values, x, labels):
        state, loss = step(jax.tree.unflatten(treedef, values), x, labels)
        if jax.tree.structure(state) != treedef:  # at trace time only: the leaves must stay in order
            raise AssertionError("flax train step: the state changed structure")
        return jax.tree.leaves(state), loss

    return run


class TrainStep:
    """step(x, labels) -> loss before the update; the model and the optimizer change in place."""

    def __init__(self, model, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 precision: str = "fp32"):
        self.model = model
        self.precision = precision
        self.dtype = compute_dtype(precision)
        self.momentum = momentum
        self.view = mode_view(model, train=True, dtype=self.dtype)
        device = model_device(model)
        if device.platform == "cpu":  # another copy of the modules, the same variables (as mode_view)
            self.view = nnx.with_attributes(self.view, only=nnx.Conv, graph=False,
                                            conv_general_dilated=small_output_conv)
        tx = sgd(float(lr), float(momentum), float(weight_decay), skip_nonfinite=precision == "fp16")
        with jax.default_device(device):
            self.scaler = LossScale() if precision == "fp16" else None
            self.optimizer = nnx.Optimizer(self.view, tx, wrt=nnx.Param, graph=False)
        # Commit every optimizer array to the model's device: an uncommitted one (the step counter) would
        # make the second call compile the step again.
        for node in (self.optimizer, self.scaler):
            for _, var in nnx.to_flat_state(nnx.state(node, graph=False)) if node is not None else ():
                var.set_value(jax.device_put(var.get_value(), device))
        # Flax's hot-loop pattern: split once, jax.jit a pure function of the arrays (donated). The Variables
        # are kept, so each call reads and writes them directly: no NNX traversal of the model per step.
        graphdef, state = nnx.split((self.view, self.optimizer, self.scaler), graph=False)
        self.variables = jax.tree.leaves(state, is_leaf=lambda v: isinstance(v, nnx.Variable))
        self.program = jax.jit(flat_step(graphdef, jax.tree.structure(state)), donate_argnums=0)
        self.has_buffers = False  # as torch: no momentum buffers before the first step

    def run(self, x: jax.Array, labels: jax.Array) -> jax.Array:
        """One step on NHWC arrays already on the device; the loss as a device array (no host sync)."""
        self.has_buffers = True
        # The raw accessors: plain arrays, no hooks (get_value/set_value's copies cost ~5 ms a step for a ResNet-18).
        values, loss = self.program([var.get_raw_value() for var in self.variables], x, labels)
        for var, value in zip(self.variables, values):  # the same Variables: the model is current after each step
            var.set_raw_value(value)
        return loss

    def __call__(self, x, labels) -> float:
        """x: float32 NCHW numpy, labels: int (N,) numpy -> the mean cross-entropy before the update."""
        device = model_device(self.model)
        return float(self.run(to_nhwc(x, device), jax.device_put(np.asarray(labels, np.int32), device)))

    def traces(self) -> dict[str, nnx.Variable]:
        """Canonical parameter name -> the optimizer's momentum buffer (empty without momentum)."""
        out = {}
        for path, var in nnx.to_flat_state(nnx.state(self.optimizer.opt_state, graph=False)):
            if "trace" in path:
                param = path[path.index("trace") + 1:]
                out[canonical_name(param)] = var
        return out


# -- optimizer state with canonical names -------------------------------------------------


def optimizer_state(step: TrainStep) -> dict[str, np.ndarray]:
    """'momentum.<canonical name>' -> float32 numpy momentum buffer, PyTorch layout.

    Empty with momentum 0 (SGD keeps no buffers) or before the first step,
    as torch.optim.SGD: a zero buffer and no buffer give the same next step.
    """
    if not step.has_buffers:
        return {}
    return {common.MOMENTUM_PREFIX + name: np.ascontiguousarray(from_channels_last(np.asarray(var.get_value())),
                                                                dtype=np.float32)
            for name, var in step.traces().items()}


def load_optimizer_state(step: TrainStep, state: Mapping[str, np.ndarray]) -> None:
    """Set the momentum buffers from optimizer_state()'s dict: all or nothing.

    An empty dict clears the buffers (a fresh optimizer); otherwise every
    trainable parameter needs its buffer, with the parameter's shape.
    """
    want = common.momentum_shapes(step.model.spec)
    common.check_momentum_state(step.model.spec, state, step.momentum)
    traces = step.traces()
    if traces and set(traces) != {common.momentum_of(k) for k in want}:  # model vs its spec: a bug here
        raise WeightsError(f"flax model of {step.model.spec.name} has parameters outside its spec")
    prefix = common.MOMENTUM_PREFIX
    new = {name: (np.zeros(var.get_value().shape, np.float32) if not state else
                  np.ascontiguousarray(to_channels_last(np.asarray(state[prefix + name], np.float32))))
           for name, var in traces.items()}  # every conversion before any buffer changes
    for name, var in traces.items():
        var.set_value(jax.device_put(new[name], var.get_value().sharding))
    step.has_buffers = bool(state) and step.momentum != 0


# -- data parallel: the global batch sharded over a mesh of devices ------------------------------------------------


def local_step(graphdef):
    """One worker's step under jax.shard_map (no --sync-bn): BN over the worker's slice, the gradients and the
    running statistics averaged over the workers (jax.lax.pmean), the loss of the global batch."""

    def run(state, x, labels):
        model, optimizer, _ = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(cross_entropy, graph=False)(model, x, labels)
        optimizer.update(model, jax.lax.pmean(grads, "data"))
        nnx.update(model, jax.lax.pmean(nnx.state(model, nnx.BatchStat, graph=False), "data"))
        return nnx.state((model, optimizer, None), graph=False), jax.lax.pmean(loss, "data")

    return run


def cpu_devices_first(workers: int) -> None:
    """Ask XLA for `workers` host devices, which works only before JAX starts (nothing to do after)."""
    if jax.config.jax_num_cpu_devices < workers and "xla_force_host_platform_device_count" not in \
            os.environ.get("XLA_FLAGS", ""):
        with contextlib.suppress(RuntimeError):  # JAX has started: its devices are what they are
            jax.config.update("jax_num_cpu_devices", workers)


class DataParallel:
    """The global batch sharded over a jax.sharding.Mesh of ``workers`` devices (axis 'data'), one process.

    --sync-bn: the single-device step itself under jax.jit with the batch sharded and the state replicated
    (XLA's SPMD partitioner adds the all-reduces): BN's mean over the batch is the global batch's. Without it:
    the step under jax.shard_map, BN over each worker's slice, gradients and running statistics averaged
    with jax.lax.pmean. On CPU the devices are XLA's host devices (jax_num_cpu_devices, set here before JAX
    starts); on GPUs one per worker.
    """

    launcher = False  # one process drives every device
    processes, rank = 1, 0

    def __init__(self, workers: int, sync_bn: bool = False, device: str = "auto"):
        self.workers, self.sync_bn = int(workers), bool(sync_bn)
        cpu_devices_first(self.workers)
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:
            gpus = []
        kind = common.parallel_device_kind(device, len(gpus), f"JAX {jax.__version__}")
        found = gpus if kind == "gpu" else jax.devices("cpu")
        if len(found) < self.workers:
            hint = (f"; JAX had started before it could be asked for more: start with XLA_FLAGS="
                    f"--xla_force_host_platform_device_count={self.workers}" if kind == "cpu" else "")
            raise DeviceUnavailable(f"{self.workers} workers need {self.workers} {kind} devices; JAX sees "
                                    f"{len(found)}{hint}")
        self.devices = found[:self.workers]
        self.mesh = Mesh(np.array(self.devices), ("data",))
        self.device = ",".join(f"{d.platform}:{d.id}" for d in self.devices)
        self.name = (f"jax.jit over a {self.workers}-device Mesh, batch sharded"
                     + (" (BN over the global batch)" if self.sync_bn else
                        " (jax.shard_map: BN over each worker's slice, pmean)"))

    def build(self, spec, device: str = "auto", seed: int = 0, state=None):
        from .model import build

        return build(spec, device=f"{self.devices[0].platform}:{self.devices[0].id}", seed=seed, state=state)

    def make_train_step(self, model, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                        precision: str = "fp32") -> "DistributedStep":
        return DistributedStep(model, self, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               precision=precision)

    def gather(self, step: "DistributedStep") -> None:
        step.gather()

    def replica_spread(self, step: "DistributedStep") -> float:
        """The largest difference between two devices' copies of any replicated value (weights, statistics,
        momentum)."""
        worst = 0.0
        for leaf in jax.tree.leaves(step.state) if step.state is not None else ():
            copies = [np.asarray(s.data, np.float64) for s in leaf.addressable_shards]
            worst = max([worst, *(float(np.abs(c - copies[0]).max(initial=0.0)) for c in copies)])
        return worst

    def close(self) -> None:
        """Nothing to release."""


class DistributedStep(TrainStep):
    """TrainStep over the engine's mesh: step(global batch x, labels) -> the global batch's mean loss.

    Between gather() calls the model, the optimizer (and the loss scale) live as one replicated state
    (nnx.split, Flax's hot-loop pattern); gather() writes it back into the model and the optimizer.
    """

    def __init__(self, model, engine: DataParallel, **kwargs):
        super().__init__(model, **kwargs)
        if self.precision == "fp16" and not engine.sync_bn:
            raise PrecisionUnavailable("flax: fp16 with several workers needs --sync-bn "
                                              "(use bf16 or fp32 without it)")
        self.engine, self.state, self.home = engine, None, model_device(model)
        self.graphdef, _ = nnx.split((self.view, self.optimizer, self.scaler), graph=False)
        self.replicated = NamedSharding(engine.mesh, P())
        self.sharded = NamedSharding(engine.mesh, P("data"))
        if engine.sync_bn:
            program = pure_step(self.graphdef)
            self.program = jax.jit(program, in_shardings=(self.replicated, self.sharded, self.sharded),
                                   out_shardings=(self.replicated, self.replicated), donate_argnums=0)
        else:
            program = jax.shard_map(local_step(self.graphdef), mesh=engine.mesh, in_specs=(P(), P("data"), P("data")),
                                    out_specs=(P(), P()), check_vma=False)  # the pmeans are written out
            self.program = jax.jit(program, donate_argnums=0)

    def __call__(self, x, labels) -> float:
        if self.state is None:
            _, state = nnx.split((self.view, self.optimizer, self.scaler), graph=False)
            # Copies, never aliases: the state is donated to each step, the model's own arrays must stay.
            self.state = jax.device_put(state, self.replicated, may_alias=False)
        x = np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 2, 3, 1))
        xs, ys = jax.device_put(x, self.sharded), jax.device_put(np.asarray(labels, np.int32), self.sharded)
        self.state, loss = self.program(self.state, xs, ys)
        self.has_buffers = True
        return float(loss)

    def gather(self) -> None:
        """The model and the optimizer hold the trained state again (on the model's device)."""
        if self.state is not None:
            nnx.update((self.view, self.optimizer, self.scaler), jax.device_put(self.state, self.home))
            self.state = None
