"""Timed inference and training steps with TensorFlow's own best practice.

- inference: the plain model's forward pass is tf.function(jit_compile=True), XLA,
  compiled once for the batch's shape (in the warm-up); for_inference's model brings its
  own function (infer.py);
- training: the step ``resnet-multi train`` runs (train.TrainStep, a plain tf.function
  graph: on CPU XLA's step was about 2x slower than the graph's oneDNN kernels);
- channels_last (NHWC), TensorFlow's native layout, for the model and the input
  (the model is NHWC throughout; the NCHW batch is transposed once, outside the timing);
- inference with training=False (BN uses its moving statistics, nothing recorded);
- bf16 / fp16: Keras's mixed-precision policies ('mixed_bfloat16', 'mixed_float16';
  variables stay fp32), fp16 training with keras.optimizers.LossScaleOptimizer (train.py);
- on GPU: tf.test.experimental.sync_devices() before a timing stops, and the peak
  memory from tf.config.experimental.get_memory_info. TF32 stays off (model.py).

``compile`` is accepted for the common signature and changes nothing here: what is
compiled, and how, is chosen above.

The benchmark leaves the model as it found it: after a training benchmark its
weights and moving statistics are restored (the SGD steps are timed, then undone).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from resnet_multi.backends.common import check_mode, conv_gflops
from resnet_multi.timing import time_callable

from .model import device_of, resolve_device
from .train import TrainStep, dtype_policy, layer_policy


def _sync(device: str):
    if device.startswith("GPU"):
        return lambda _: tf.test.experimental.sync_devices()  # GPU kernels run asynchronously
    return lambda _: None  # a CPU tf.function call returns when its work is done


def benchmark(model: keras.Model, x, mode: str = "infer", precision: str = "fp32", repeats: int = 5,
              warmup: int = 2, compile: bool = False, xla: bool = True) -> dict[str, Any]:
    """Time `repeats` forward passes (mode 'infer') or SGD steps (mode 'train') on the batch x (NCHW numpy).

    xla=False: a plain model's inference as a plain tf.function graph instead of XLA's program."""
    check_mode(mode)
    policy = dtype_policy(precision)
    device = device_of(model)
    gpu = device.startswith("GPU")
    x_np = np.ascontiguousarray(np.asarray(x, dtype=np.float32).transpose(0, 2, 3, 1))  # NCHW -> NHWC
    batch = x_np.shape[0]

    infer = getattr(model, "infer", None) if policy is None else None  # for_inference's function (fp32)
    if hasattr(model, "infer") and mode != "infer":
        raise ValueError("an inference model (for_inference) times inference only; time training on the plain model")
    if infer is not None:
        practice = list(model.practice)
    elif mode == "infer":
        practice = ["XLA (tf.function jit_compile=True)" if xla else "tf.function graph", "NHWC"]
    else:  # measured on CPU: XLA's step about 2x slower than the plain graph's oneDNN kernels
        practice = ["tf.function graph (train's step)", "NHWC"]
    practice.append("training=False" if mode == "infer" else "GradientTape SGD step")
    if policy is not None:
        practice.append(f"keras policy {policy}" + ("+LossScaleOptimizer" if mode == "train" and precision == "fp16"
                                                     else ""))

    # A copy on the host, so that it does not count in the device's peak memory.
    saved = [v.numpy() for v in model.weights] if mode == "train" else None
    try:
        with tf.device(device):
            # The input goes to the device once, outside the timing.
            xt = tf.constant(x_np)
            if mode == "infer":
                forward = infer or tf.function(lambda images: model(images, training=False), jit_compile=xla)

                def run():
                    with layer_policy(model, policy):  # read while the function traces (the warm-up)
                        return forward(xt)
            else:
                labels = tf.constant(np.arange(batch, dtype=np.int64) % model.output_shape[-1])
                step = TrainStep(model, lr=0.01, precision=precision)  # the step `train` runs (no XLA)

                def run():
                    return step.run(xt, labels)

        if gpu:
            tf.test.experimental.sync_devices()
            tf.config.experimental.reset_memory_stats(device)
        result = time_callable(run, _sync(device), batch, repeats=repeats, warmup=warmup)
        if gpu:
            result["peak_memory_mb"] = tf.config.experimental.get_memory_info(device)["peak"] / 2**20
    finally:
        if saved is not None:
            for variable, value in zip(model.weights, saved):
                variable.assign(value)
    result.update(mode=mode, precision=precision, practice=", ".join(practice), device=device)
    return result


# -- the framework's own ResNet-50, for benchmarks/vs_native.py ------------------------------

NATIVE = "keras.applications.ResNet50"
NATIVE_PRESET = "resnet50_v1"


def benchmark_native(x, mode: str = "infer", precision: str = "fp32", repeats: int = 5, warmup: int = 2,
                     compile: bool = False, device: str = "cpu", num_classes: int = 1000) -> dict[str, Any]:
    """keras.applications.ResNet50 (random init, logits out), timed by exactly the same code path as ours."""
    size = tuple(np.shape(x)[2:]) + (np.shape(x)[1],)  # NCHW batch -> the (H, W, C) input shape
    with tf.device(resolve_device(device)):
        model = keras.applications.ResNet50(weights=None, input_shape=size, classes=num_classes,
                                            classifier_activation=None)  # logits, as our models return
    if mode == "train":  # the plain graph, as train's step
        return benchmark(model, x, mode=mode, precision=precision, repeats=repeats, warmup=warmup, compile=compile)
    # Inference as its users run it at its best: XLA or the plain graph, whichever is faster here.
    runs = [benchmark(model, x, mode=mode, precision=precision, repeats=repeats, warmup=warmup, xla=xla)
            for xla in (True, False)]
    best = max(runs, key=lambda r: r["images_per_s"])
    best["practice"] = "the faster of XLA and the plain graph: " + best["practice"]
    return best


# -- the machine's conv throughput, the ceiling for benchmarks/vs_native.py --------------------


def conv_throughput(shape: tuple[int, int, int, int] = (8, 256, 28, 28), repeats: int = 10,
                    device: str = "cpu") -> dict[str, Any]:
    """One 3x3 conv, C -> C channels, stride 1, the way this framework runs its fastest (NHWC in a
    tf.function graph): GFLOP/s (2 x multiply-adds per second) at the best of ``repeats``."""
    n, c, h, w = shape
    dev = resolve_device(device)
    with tf.device(dev):
        x = tf.random.normal((n, h, w, c))
        kernel = tf.random.normal((3, 3, c, c))
        run = tf.function(lambda: tf.nn.conv2d(x, kernel, 1, "SAME"))
        result = time_callable(run, _sync(dev), n, repeats=repeats, warmup=2)
    return {"shape": list(shape), "gflops": conv_gflops(shape, result["min_s"]),
            "practice": "tf.nn.conv2d, NHWC, tf.function"}
