"""The inference fast path in PyTorch: a folded model, channels_last, compiled by Inductor.

``for_inference`` (faces.py) folds the BNs into the convs (resnet_multi.weights.fold) and
builds the folded spec with model.build; ``fast`` here adds what PyTorch itself offers
for inference, measured on CPU (docs/benchmarks.md):

- channels_last for the weights and the input: oneDNN's and cuDNN's fastest conv layout;
- torch.compile with Inductor's ``freezing``: the weights become constants, so it can
  pre-pack them for oneDNN and fuse conv + bias + ReLU (+ the residual add);
- no autograd at all (inference_mode) when the model is called.

The result is an nn.Module (``InferenceModel``) computing what the plain model computes in
eval mode; it is for inference only (training it would train the folded net).
"""

from __future__ import annotations

import torch
from torch import nn

from .model import ResNet


class InferenceModel(nn.Module):
    """A folded ResNet run by its compiled forward; ``rows`` (the layer table) runs it eagerly."""

    def __init__(self, net: ResNet, compile: bool = True):
        super().__init__()
        self.net = net.eval().to(memory_format=torch.channels_last)
        self.spec = net.spec
        self.output_rows = net.output_rows
        self.practice = ["folded BN", "channels_last", "inference_mode"]
        run = self.net
        if compile:
            # Inductor's freezing, as its global setting: passed as torch.compile(options=...) it did not
            # take effect here (ResNet-50 at 35 against 68 img/s). It changes only no-grad compilations.
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            run = torch.compile(self.net)
            self.practice.append("torch.compile(freezing)")
        object.__setattr__(self, "run", run)  # not a submodule: its weights are net's, named once
        self.eval()

    def forward(self, x: torch.Tensor):
        with torch.inference_mode():
            return self.run(x.contiguous(memory_format=torch.channels_last))

    def rows(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net.rows(x.contiguous(memory_format=torch.channels_last))

    def train(self, mode: bool = True):
        if mode:
            raise ValueError("an inference model (for_inference) does not train; train the model it came from")
        return super().train(False)


def fast(net: ResNet, compile: bool = True) -> InferenceModel:
    return InferenceModel(net, compile=compile)
