"""Timed inference and training steps with MXNet Gluon's own best practice.

- hybridize(static_alloc=True, static_shape=True): one cached graph with
  memory planned once (build() does it; a native model gets it here);
- the input is placed on the device once, outside the timing, and the timing
  waits for MXNet's asynchronous engine to finish (mx.nd.waitall());
- a training step is train.py's SGD step (autograd.record, backward, and
  torch.optim.SGD's update as an mx.optimizer.Optimizer behind an Updater). Our model's training forward runs
  imperatively (its BN updates running statistics by the spec's rule in the
  forward pass, which a cached MXNet 1.x graph cannot do, see model.py); the
  native Gluon model trains through its cached graph, its BN updating in the
  backward pass. The difference is part of what vs_native measures.
- fp32 only (train.py has no mixed precision); compile=True changes nothing:
  hybridization is MXNet's compilation and is always on;
- on a GPU, "peak_memory_mb" is the device memory in use after the timed runs
  (mx.context.gpu_memory_info; MXNet's memory pool keeps its high-water mark).
  It is device-wide, CUDA context included, so it reads higher than torch's
  max_memory_allocated. On CPU MXNet reports nothing, and the key is absent.

The benchmark leaves the model as it found it: after a training benchmark its
parameters and running statistics are restored (the SGD steps are timed, then undone).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import nd
from mxnet.gluon.model_zoo import vision

from resnet_multi.arch import presets
from resnet_multi.backends.common import check_mode, check_precision, conv_gflops
from resnet_multi.timing import time_callable

from .model import context, context_of, device_of
from .train import PRECISIONS, TrainStep


def benchmark(model, x, mode: str = "infer", precision: str = "fp32", repeats: int = 5, warmup: int = 2,
              compile: bool = False) -> dict[str, Any]:
    """Time `repeats` forward passes (mode 'infer') or SGD steps (mode 'train') on the batch x (NCHW numpy)."""
    check_mode(mode)
    check_precision(precision, PRECISIONS, "mxnet")
    ctx = context_of(model)
    xt = nd.array(np.asarray(x, dtype=np.float32), ctx=ctx, dtype="float32")
    batch = xt.shape[0]
    infer = getattr(model, "infer", None)  # for_inference's model: its partitioned graph
    if infer is not None and mode != "infer":
        raise ValueError("an inference model (for_inference) times inference only; time training on the plain model")
    practice = list(model.practice) if infer is not None else ["hybridize(static_alloc, static_shape)"]
    saved = None
    if mode == "infer":
        def run():
            return infer(xt) if infer is not None else model(xt)
    else:
        # A copy on the host, so that the restore does not depend on device memory.
        saved = {name: p.data(ctx).asnumpy() for name, p in model.collect_params().items()}
        labels = nd.array(np.arange(batch) % model.spec.num_classes, ctx=ctx, dtype="float32")
        step = TrainStep(model, lr=0.01, precision=precision)
        practice.append("autograd.record + SGD step (mx.optimizer.Updater)")

        def run():
            return step.run(xt, labels)
    try:
        result = time_callable(run, lambda _: mx.nd.waitall(), batch, repeats=repeats, warmup=warmup)
    finally:
        if saved is not None:
            for name, p in model.collect_params().items():
                p.set_data(nd.array(saved[name], ctx=ctx, dtype=saved[name].dtype))
            mx.nd.waitall()
    if ctx.device_type == "gpu":
        # MXNet reports no allocator peak; gpu_memory_info gives the device's free and total
        # bytes. Its pooled allocator keeps what it once took, so the memory in use after the
        # timed runs is their high-water mark (device-wide: the CUDA context included).
        free, total = mx.context.gpu_memory_info(ctx.device_id)
        result["peak_memory_mb"] = (total - free) / 2**20
    result.update(mode=mode, precision=precision, practice=", ".join(practice), device=device_of(model))
    return result


# -- the framework's own ResNet-50, for benchmarks/vs_native.py ------------------------------

NATIVE = "mxnet.gluon.model_zoo.vision.resnet50_v1"
NATIVE_PRESET = "gluon_resnet50_v1"


def benchmark_native(x, mode: str = "infer", precision: str = "fp32", repeats: int = 5, warmup: int = 2,
                     compile: bool = False, device: str = "cpu", num_classes: int = 1000) -> dict[str, Any]:
    """Gluon's model-zoo ResNet-50 v1, timed by exactly the same code path as ours."""
    ctx = context(device)
    model = vision.resnet50_v1(classes=num_classes)
    model.initialize(mx.init.Xavier(), ctx=ctx)
    model(nd.zeros((1, *np.shape(x)[1:]), ctx=ctx))  # the zoo defers shapes to the first call
    model.hybridize(static_alloc=True, static_shape=True)
    # Same architecture; the train step reads only its class count (for the labels).
    model.spec = dataclasses.replace(presets.get(NATIVE_PRESET), num_classes=num_classes)
    return benchmark(model, x, mode=mode, precision=precision, repeats=repeats, warmup=warmup, compile=compile)


# -- the machine's conv throughput, the ceiling for benchmarks/vs_native.py --------------------


def conv_throughput(shape: tuple[int, int, int, int] = (8, 256, 28, 28), repeats: int = 10,
                    device: str = "cpu") -> dict[str, Any]:
    """One 3x3 conv, C -> C channels, stride 1, as MXNet runs it (NCHW, oneDNN on CPU): GFLOP/s
    (2 x multiply-adds per second) at the best of ``repeats``."""
    n, c, h, w = shape
    ctx = context(device)
    x = nd.random.normal(shape=shape, ctx=ctx)
    weight = nd.random.normal(shape=(c, c, 3, 3), ctx=ctx)
    run = lambda: nd.Convolution(x, weight, kernel=(3, 3), pad=(1, 1), num_filter=c, no_bias=True)  # noqa: E731
    result = time_callable(run, lambda _: mx.nd.waitall(), n, repeats=repeats, warmup=2)
    return {"shape": list(shape), "gflops": conv_gflops(shape, result["min_s"]),
            "practice": "nd.Convolution, NCHW"}
