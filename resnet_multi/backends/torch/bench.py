"""Timed inference and training steps with PyTorch's own best practice.

- inference: channels_last (NHWC in memory) for the model's 4-D tensors and the input,
  cuDNN's and oneDNN's fastest convolution kernels use it; for_inference's model (infer.py)
  brings its own layout and compilation;
- training: the step ``resnet-multi train`` runs (train.TrainStep) in the layout it picks
  for the device (channels_last on CUDA, NCHW on CPU, where it is faster);
- torch.inference_mode() for inference (no autograd bookkeeping at all);
- torch.autocast for bf16 / fp16 (weights stay fp32, see train.py);
- torch.compile(model) when compile=True;
- on CUDA: cudnn.benchmark (pick the fastest kernel for these fixed shapes),
  torch.cuda.synchronize() before a timing stops, and the peak memory from
  torch.cuda.max_memory_allocated(). TF32 stays off (fp32 means fp32).

The benchmark leaves the model as it found it: its memory format, its
train/eval mode and, after a training benchmark, its weights, running
statistics and BN counters (the SGD steps are timed, then undone).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from resnet_multi.arch.presets import get
from resnet_multi.backends.common import check_mode, conv_gflops
from resnet_multi.timing import time_callable

from .infer import InferenceModel
from .model import fp32_only, resolve_device
from .train import TrainStep, autocast_dtype, train_memory_format


def _sync(device: torch.device):
    if device.type == "cuda":
        return lambda _: torch.cuda.synchronize(device)
    return lambda _: None  # CPU ops are synchronous


def benchmark(model: torch.nn.Module, x, mode: str = "infer", precision: str = "fp32", repeats: int = 5,
              warmup: int = 2, compile: bool = False) -> dict[str, Any]:
    """Time `repeats` forward passes (mode 'infer') or SGD steps (mode 'train') on the batch x (NCHW numpy)."""
    check_mode(mode)
    device = next(model.parameters()).device
    dtype = autocast_dtype(precision, device)
    cuda = device.type == "cuda"
    x_np = np.ascontiguousarray(x, dtype=np.float32)
    batch = x_np.shape[0]

    fast = isinstance(model, InferenceModel)  # for_inference's model: its layout and compilation are set
    if fast and mode != "infer":
        raise ValueError("an inference model (for_inference) times inference only; time training on the plain model")
    # Inference: channels_last; training: the layout train's step uses on this device (train.py).
    layout = torch.channels_last if mode == "infer" else train_memory_format(device)
    practice = list(model.practice) if fast else ["channels_last" if layout == torch.channels_last else "NCHW"]
    if not fast:
        practice.append("inference_mode" if mode == "infer" else "torch.optim.SGD step (train's TrainStep)")
    if dtype is not None:
        practice.append(f"autocast({precision})" + ("+GradScaler" if mode == "train" and precision == "fp16" else ""))
    if compile and not fast:
        practice.append("torch.compile")
    if cuda:
        practice.append("cudnn.benchmark")

    was_training = model.training
    # A copy on the host, so that it does not count in the device's peak memory.
    saved = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()} if mode == "train" else None
    old_benchmark = torch.backends.cudnn.benchmark
    if not fast:
        model.to(memory_format=layout)
    try:
        if cuda:
            torch.backends.cudnn.benchmark = True
        # The input goes to the device once, outside the timing.
        xt = torch.from_numpy(x_np).to(device).contiguous(memory_format=layout)
        forward = torch.compile(model) if compile and not fast else model
        if mode == "infer":
            model.eval()

            def run():
                with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    return forward(xt)
        else:
            labels = (torch.arange(batch, device=device) % model.spec.num_classes).long()
            step = TrainStep(model, lr=0.01, precision=precision)
            step.forward = forward

            def run():
                return step.run(xt, labels)

        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        result = time_callable(run, _sync(device), batch, repeats=repeats, warmup=warmup)
        if cuda:
            result["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    finally:
        torch.backends.cudnn.benchmark = old_benchmark
        if not fast:
            model.to(memory_format=torch.contiguous_format)
        if saved is not None:
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    v.copy_(saved[k])
        model.train(was_training)
    result.update(mode=mode, precision=precision, practice=", ".join(practice), device=str(device))
    return result


# -- the framework's own ResNet-50, for benchmarks/vs_native.py ------------------------------

NATIVE = "torchvision.models.resnet50"
NATIVE_PRESET = "resnet50"


def benchmark_native(x, mode: str = "infer", precision: str = "fp32", repeats: int = 5, warmup: int = 2,
                     compile: bool = False, device: str = "cpu", num_classes: int = 1000) -> dict[str, Any]:
    """torchvision's ResNet-50, timed by exactly the same code path as ours."""
    import torchvision  # only here: the rest of the backend runs without it

    dev = resolve_device(device)
    if dev.startswith("cuda"):
        fp32_only()  # as build() does for ours: both sides run true fp32
    model = torchvision.models.resnet50(weights=None, num_classes=num_classes).to(dev).eval()
    model.spec = get(NATIVE_PRESET)  # same architecture and names: the train step needs only the class count
    return benchmark(model, x, mode=mode, precision=precision, repeats=repeats, warmup=warmup, compile=compile)


# -- the machine's conv throughput, the ceiling for benchmarks/vs_native.py --------------------


def conv_throughput(shape: tuple[int, int, int, int] = (8, 256, 28, 28), repeats: int = 10,
                    device: str = "cpu") -> dict[str, Any]:
    """One 3x3 conv, C -> C channels, stride 1, the way this framework runs its fastest (channels_last,
    inference_mode): GFLOP/s (2 x multiply-adds per second) at the best of ``repeats``."""
    dev = torch.device(resolve_device(device))
    n, c, h, w = shape
    x = torch.randn(shape, device=dev).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c, c, 3, 3, device=dev).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        result = time_callable(lambda: torch.nn.functional.conv2d(x, weight, padding=1), _sync(dev), n,
                               repeats=repeats, warmup=2)
    return {"shape": list(shape), "gflops": conv_gflops(shape, result["min_s"]),
            "practice": "F.conv2d, channels_last"}
