"""Timed inference and training steps with JAX's own best practice.

- every timed call is one compiled XLA program, the whole forward pass or
  the whole SGD step (train.sgd_step), model.py's per-block programs inlined;
- Flax's pattern for hot loops: nnx.split the model (and the optimizer)
  once, jax.jit a pure function of the state, carry the state from call to
  call. nnx.jit would flatten the model on every call (about 3 ms for a
  ResNet-50 on this project's CPU machine, 36 ms in graph mode), which is
  Python time on top of the device time being measured;
- the training step donates the carried state (donate_argnums), so XLA
  updates the weights and the momentum in place;
- NHWC, the layout XLA's convolutions want on GPUs and CPUs;
- bf16 / fp16: Flax's mixed precision, the layers' compute dtype with fp32
  parameters (train.py); fp16 training adds dynamic loss scaling;
- jax.block_until_ready before a timing stops (dispatch is asynchronous);
- on a GPU, the peak memory from device.memory_stats() (JAX cannot reset it,
  so it is the process's peak up to the end of this benchmark).

fp32 means fp32: model.py sets jax_default_matmul_precision to 'highest', so
no TF32 on GPUs, for ours and theirs alike. There is nothing more to do for
compile=True: XLA compiles every program anyway (the practice string says so).
Both functions take every backend's arguments; a mode other than 'infer' or
'train' is refused by common.check_mode.

The benchmark leaves the model as it found it: its mode and, after a training
benchmark, its weights and running statistics (the steps are timed, then undone).

benchmark_native times the architecture of Flax's own ImageNet example
ResNet-50 (flax/examples/imagenet/models.py, Linen), written out below, with
exactly the same practice: jax.jit of module.apply, donated params, BN
statistics and optimizer state in the training step.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen, nnx
from flax.traverse_util import flatten_dict

from resnet_multi.backends import common
from resnet_multi.timing import time_callable
from resnet_multi.weights.layouts import from_channels_last

from .model import device_name, jax_device, mode_view, model_device, to_nhwc
from .train import GROWTH_INTERVAL, INIT_SCALE, TrainStep, compute_dtype, pure_step, sgd
from .weights import CANONICAL_SUFFIX

NATIVE = "Flax ImageNet example ResNet50 (Linen), re-implemented"
NATIVE_PRESET = "resnet50"
LR = 0.01


def _apply(graphdef, state, x):
    return nnx.merge(graphdef, state)(x)


def _peak_memory(device: jax.Device, result: dict[str, Any]) -> None:
    stats = device.memory_stats() if device.platform == "gpu" else None  # the CPU client reports nothing
    if stats and "peak_bytes_in_use" in stats:
        result["peak_memory_mb"] = stats["peak_bytes_in_use"] / 2**20


def _labels(batch: int, num_classes: int, device: jax.Device) -> jax.Array:
    return jax.device_put(np.arange(batch, dtype=np.int32) % num_classes, device)


def _practice(mode: str, precision: str, parts: list[str], compile: bool) -> str:
    if compile:
        parts = [*parts, "compile=True: nothing more, XLA compiles every program"]
    parts = [*parts, "NHWC", "block_until_ready"]
    if precision != "fp32":
        parts.append(f"compute dtype {precision}, fp32 params"
                     + (", dynamic loss scaling" if mode == "train" and precision == "fp16" else ""))
    return ", ".join(parts)


def benchmark(model, x, mode: str = "infer", precision: str = "fp32", repeats: int = 5, warmup: int = 2,
              compile: bool = False) -> dict[str, Any]:
    """Time `repeats` forward passes (mode 'infer') or SGD steps (mode 'train') on the batch x (NCHW numpy)."""
    common.check_mode(mode)
    dtype = compute_dtype(precision)
    device = model_device(model)
    xd = to_nhwc(x, device)  # on the device once, outside the timing
    batch = xd.shape[0]
    saved = None
    try:
        infer = getattr(model, "infer", None)  # for_inference's model: its one program (fp32)
        if infer is not None and mode != "infer":
            raise ValueError("an inference model (for_inference) times inference only; time training on the "
                             "plain model")
        if infer is not None and dtype is None:
            run = lambda: infer(xd)  # noqa: E731
            parts = list(model.practice)
        elif mode == "infer":
            graphdef, state = nnx.split(mode_view(model, train=False, dtype=dtype), graph=False)
            forward = jax.jit(partial(_apply, graphdef))
            run: Callable[[], Any] = lambda: forward(state, xd)  # noqa: E731
            parts = ["nnx.split + jax.jit forward"]
        else:
            # A copy on the host, so that it does not count in the device's peak memory.
            saved = jax.device_get(nnx.state(model))
            step = TrainStep(model, lr=LR, precision=precision)
            graphdef, state = nnx.split((step.view, step.optimizer, step.scaler), graph=False)
            sgd_step = jax.jit(pure_step(graphdef), donate_argnums=0)
            labels = _labels(batch, model.spec.num_classes, device)
            carry = [state]

            def run():
                carry[0], loss = sgd_step(carry[0], xd, labels)  # the donated buffers are gone: carry the new ones
                return loss

            parts = ["nnx.split + jax.jit SGD step (train.sgd_step)", "donated buffers"]
        result = time_callable(run, jax.block_until_ready, batch, repeats=repeats, warmup=warmup)
        _peak_memory(device, result)
    finally:
        if saved is not None:  # undo the timed steps
            nnx.update(model, jax.device_put(saved, device))
    result.update(mode=mode, precision=precision, practice=_practice(mode, precision, parts, compile),
                  device=device_name(device))
    return result


# -- theirs: the architecture of Flax's ImageNet example ResNet-50 (Linen) ---------------------------
#
# ResNet v1.5 (the 3x3 conv strides), convs without bias and with Flax's default 'SAME' padding (the
# stem conv pads 3 on every side), BN momentum 0.9 (Flax's convention) and eps 1e-5, the last BN of
# every block zero-initialised, a projection (1x1 conv + BN) wherever the shape changes, a 'SAME'
# 3x3/2 max-pool, global mean, a biased Dense. Only the variable names are ours.


class LinenBottleneck(linen.Module):
    width: int
    stride: int
    train: bool
    dtype: Any = jnp.float32

    @linen.compact
    def __call__(self, x):
        conv = partial(linen.Conv, use_bias=False, dtype=self.dtype)
        norm = partial(linen.BatchNorm, use_running_average=not self.train, momentum=0.9, epsilon=1e-5,
                       dtype=self.dtype)
        strides = (self.stride, self.stride)
        y = linen.relu(norm(name="bn_a")(conv(self.width, (1, 1), name="conv_a")(x)))
        y = linen.relu(norm(name="bn_b")(conv(self.width, (3, 3), strides, name="conv_b")(y)))
        y = conv(4 * self.width, (1, 1), name="conv_c")(y)
        y = norm(name="bn_c", scale_init=linen.initializers.zeros_init())(y)
        if x.shape != y.shape:
            x = norm(name="bn_proj")(conv(4 * self.width, (1, 1), strides, name="conv_proj")(x))
        return linen.relu(x + y)


class LinenResNet50(linen.Module):
    num_classes: int = 1000
    dtype: Any = jnp.float32
    depths: tuple[int, ...] = (3, 4, 6, 3)
    num_filters: int = 64  # the example's name for the first stage's width

    @linen.compact
    def __call__(self, x, train: bool = False):
        x = linen.Conv(self.num_filters, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False, dtype=self.dtype,
                       name="stem_conv")(x)
        x = linen.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                            name="stem_bn")(x)
        x = linen.max_pool(linen.relu(x), (3, 3), strides=(2, 2), padding="SAME")
        for i, depth in enumerate(self.depths):
            for j in range(depth):
                x = LinenBottleneck(self.num_filters * 2**i, 2 if i > 0 and j == 0 else 1, train, self.dtype,
                                    name=f"stage{i + 1}_block{j}")(x)
        x = linen.Dense(self.num_classes, dtype=self.dtype, name="head")(x.mean(axis=(1, 2)))
        return jnp.asarray(x, self.dtype)


_NATIVE_MODULES = {"stem_conv": "conv1", "stem_bn": "bn1", "head": "fc", "conv_a": "conv1", "bn_a": "bn1",
                   "conv_b": "conv2", "bn_b": "bn2", "conv_c": "conv3", "bn_c": "bn3", "conv_proj": "downsample.0",
                   "bn_proj": "downsample.1"}


def native_to_canonical(variables) -> dict[str, np.ndarray]:
    """LinenResNet50's variables ({'params', 'batch_stats'}) -> the canonical state of our resnet50."""
    out = {}
    for collection in ("params", "batch_stats"):
        for path, value in flatten_dict(dict(variables[collection])).items():
            *modules, leaf = path
            names = [f"layer{m[len('stage'):].replace('_block', '.')}" if m.startswith("stage")
                     else _NATIVE_MODULES[m] for m in modules]
            value = from_channels_last(np.asarray(value, np.float32))
            out[".".join([*names, CANONICAL_SUFFIX[leaf]])] = np.ascontiguousarray(value)
    return out


def _random_variables(net: LinenResNet50, image_shape, seed: int = 0) -> dict:
    """Random variables of the right shapes, drawn by NumPy: Flax's own initializers compiled under
    jax.jit take 10 s and more here (eager, 30 s), and the values do not change the timing."""
    shapes = jax.eval_shape(partial(net.init, train=False), jax.random.key(0), jnp.zeros((1, *image_shape)))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":  # He-normal
            return rng.normal(0.0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
        return np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _linen_train_step(net: LinenResNet50, tx: optax.GradientTransformation, scaled: bool):
    """The functional SGD step on (params, batch_stats, opt_state[, loss scale]); the same loss as train.py."""

    def step(params, batch_stats, opt_state, scale, x, labels):
        def loss_fn(p):
            logits, new = net.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                    mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()
            return (loss * scale[0] if scaled else loss), (loss, new["batch_stats"])

        (_, (loss, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        if scaled:  # fp16: as train.LossScale, torch.amp.GradScaler's schedule
            grads = jax.tree.map(lambda g: g / scale[0], grads)
            finite = jnp.all(jnp.asarray([jnp.isfinite(g).all() for g in jax.tree.leaves(grads)]))
            grow = finite & (scale[1] + 1 >= GROWTH_INTERVAL)
            scale = jnp.stack([jnp.where(finite, jnp.where(grow, 2.0, 1.0), 0.5) * scale[0],
                               jnp.where(finite & ~grow, scale[1] + 1, 0)])
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, scale, loss

    return step


def benchmark_native(x, mode: str = "infer", precision: str = "fp32", repeats: int = 5, warmup: int = 2,
                     compile: bool = False, device: str = "cpu", num_classes: int = 1000) -> dict[str, Any]:
    """Flax's ImageNet-example ResNet-50 (Linen), timed with exactly the same practice as benchmark()."""
    common.check_mode(mode)
    dtype = compute_dtype(precision)
    dev = jax_device(device)
    net = LinenResNet50(num_classes=num_classes, dtype=dtype or jnp.float32)
    xd = to_nhwc(x, dev)
    batch = xd.shape[0]
    variables = jax.device_put(_random_variables(net, xd.shape[1:]), dev)
    if mode == "infer":
        apply = jax.jit(partial(net.apply, train=False))
        run: Callable[[], Any] = lambda: apply(variables, xd)  # noqa: E731
        parts = ["jax.jit forward"]
    else:
        tx = sgd(LR, skip_nonfinite=precision == "fp16")
        scale = np.asarray([INIT_SCALE if precision == "fp16" else 1.0, 0.0], np.float32)
        # Every array committed to the device, so that the second call does not compile the step again.
        carry = jax.device_put([variables["params"], variables["batch_stats"], tx.init(variables["params"]), scale],
                               dev)
        step = jax.jit(_linen_train_step(net, tx, precision == "fp16"), donate_argnums=(0, 1, 2, 3))
        labels = _labels(batch, num_classes, dev)

        def run():
            out = step(*carry, xd, labels)  # the donated buffers are gone: carry the new ones
            carry[:] = out[:4]
            return out[4]

        parts = ["jax.jit SGD step", "donated buffers"]
    result = time_callable(run, jax.block_until_ready, batch, repeats=repeats, warmup=warmup)
    _peak_memory(dev, result)
    result.update(mode=mode, precision=precision, practice=_practice(mode, precision, parts, compile),
                  device=device_name(dev))
    return result


# -- the machine's conv throughput, the ceiling for benchmarks/vs_native.py --------------------


def conv_throughput(shape: tuple[int, int, int, int] = (8, 256, 28, 28), repeats: int = 10,
                    device: str = "cpu") -> dict[str, Any]:
    """One 3x3 conv, C -> C channels, stride 1, the way this framework runs its fastest (NHWC, jit):
    GFLOP/s (2 x multiply-adds per second) at the best of ``repeats``."""
    n, c, h, w = shape
    dev = jax_device(device)
    x = jax.device_put(np.random.default_rng(0).standard_normal((n, h, w, c)).astype(np.float32), dev)
    kernel = jax.device_put(np.random.default_rng(1).standard_normal((3, 3, c, c)).astype(np.float32), dev)
    conv = jax.jit(lambda a, k: jax.lax.conv_general_dilated(a, k, (1, 1), "SAME",
                                                             dimension_numbers=("NHWC", "HWIO", "NHWC")))
    result = time_callable(lambda: conv(x, kernel), jax.block_until_ready, n, repeats=repeats, warmup=2)
    return {"shape": list(shape), "gflops": common.conv_gflops(shape, result["min_s"]),
            "practice": "lax.conv_general_dilated, NHWC, jit"}
