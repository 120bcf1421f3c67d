"""One training step in PyTorch: mean softmax cross-entropy, torch.optim.SGD.

The textbook loop, written once:

    optimizer.zero_grad(set_to_none=True)
    with autocast:                       # only for bf16 / fp16
        loss = F.cross_entropy(model(x), labels)
    loss.backward()
    optimizer.step()

The model is in train mode during the step, so BN normalises with batch
statistics and updates its running ones by the spec's convention (the model's
BN layers already follow spec.bn). SGD is torch.optim.SGD itself: weight decay
is added to the gradient, then the momentum buffer b = momentum * b + g, then
w -= lr * b (no dampening, no Nesterov). Weight decay applies to every
parameter, BN's and biases included, as plain torch.optim.SGD does.

Mixed precision: torch.autocast runs convs and matmuls in bf16 or fp16 while
the weights, their gradients and the optimizer stay fp32; fp16 also scales
the loss (torch.amp.GradScaler) so small gradients do not flush to zero.
bf16 works on CPU and CUDA, fp16 only on CUDA.

The optimizer state is exchanged under canonical names ('momentum.<name>',
see resnet_multi.backends.common), checked all or nothing.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from resnet_multi.backends.common import MOMENTUM_PREFIX, check_momentum_state, check_precision, momentum_shapes
from resnet_multi.errors import PrecisionUnavailable
from resnet_multi.weights.canonical import WeightsError

from .model import FRAMEWORK
from .weights import from_numpy, parameters, to_numpy

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device` (None: plain fp32), or PrecisionUnavailable."""
    check_precision(precision, PRECISIONS, FRAMEWORK)
    if precision == "fp16" and device.type != "cuda":
        raise PrecisionUnavailable("precision 'fp16' needs a CUDA GPU in the torch backend; "
                                   "on CPU use 'bf16' or 'fp32'")
    return PRECISIONS[precision]


class TrainStep:
    """step(x, labels) -> loss before the update; the model and the optimizer change in place."""

    def __init__(self, model: torch.nn.Module, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 precision: str = "fp32"):
        self.model = model
        self.device = next(model.parameters()).device
        self.precision = precision
        self.dtype = autocast_dtype(precision, self.device)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        # fp16 scales the loss so that small gradients survive; bf16 has fp32's exponent range and needs none.
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == "fp16" else None
        # What runs the forward pass: the model itself, or a torch.compile'd wrapper of it (bench).
        self.forward = model

    def run(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One step on tensors already on the device; returns the loss as a device tensor (no host sync)."""
        was_training = self.model.training
        self.model.train()  # batch statistics; running statistics updated by the spec's convention
        try:
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                logits = self.forward(x)
            loss = F.cross_entropy(logits.float(), labels)  # mean over the batch, in fp32
            if self.scaler is None:
                loss.backward()
                self.optimizer.step()
            else:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
        finally:
            self.model.train(was_training)
        return loss.detach()

    def __call__(self, x, labels) -> float:
        """x: float32 NCHW numpy, labels: int64 (N,) numpy -> the mean cross-entropy before the update."""
        x = from_numpy(x).to(self.device)
        labels = torch.as_tensor(np.asarray(labels, dtype=np.int64)).to(self.device)
        return float(self.run(x, labels))


# -- optimizer state with canonical names -------------------------------------------------


def optimizer_state(step: TrainStep) -> dict[str, np.ndarray]:
    """'momentum.<canonical name>' -> float32 numpy momentum buffer.

    Empty with momentum 0 (SGD keeps no buffers) or before the first step
    (torch creates each buffer on the first step as a copy of the gradient,
    which is what a zero buffer gives too).
    """
    out = {}
    for name, param in parameters(step.model).items():
        buf = step.optimizer.state.get(param, {}).get("momentum_buffer")
        if buf is not None:
            out[MOMENTUM_PREFIX + name] = to_numpy(buf)
    return out


def load_optimizer_state(step: TrainStep, state: Mapping[str, np.ndarray]) -> None:
    """Set the momentum buffers from optimizer_state()'s dict: all or nothing.

    An empty dict clears the buffers (a fresh optimizer); otherwise every
    trainable parameter needs its buffer, with the parameter's shape.
    """
    params = parameters(step.model)
    want = momentum_shapes(step.model.spec)
    if set(want) != {MOMENTUM_PREFIX + k for k in params}:  # the model disagrees with its spec: a bug here
        raise WeightsError(f"torch model of {step.model.spec.name} has parameters outside its spec")
    check_momentum_state(step.model.spec, state, step.optimizer.defaults["momentum"])
    with torch.no_grad():
        for name, param in params.items():
            if not state:
                step.optimizer.state.pop(param, None)
                continue
            buf = from_numpy(state[MOMENTUM_PREFIX + name])
            step.optimizer.state[param]["momentum_buffer"] = buf.to(param.device).clone()
