"""The inference fast path in Flax NNX: a folded model, run as one jitted XLA program.

``for_inference`` (faces.py) folds the BNs into the convs (resnet_multi.weights.fold) and
builds the folded spec with model.build; ``fast`` here compiles its whole forward pass as
one program: the model is split once (nnx.split) and a pure function of its state goes
through jax.jit, so no call flattens the model again (model.py's per-block programs are
inlined into it). NHWC throughout, as XLA's convolutions want.

The result is the folded ResNet itself, with ``infer`` (NHWC array -> output) set:
model.forward and bench.py call it; the layer table (rows) still runs block by block.
"""

from __future__ import annotations

import jax
from flax import nnx

from .model import ResNet


def fast(net: ResNet, compile: bool = True) -> ResNet:
    graphdef, state = nnx.split(net)

    def apply(state, x):
        return nnx.merge(graphdef, state)(x)

    run = jax.jit(apply) if compile else apply
    net.infer = lambda x: run(state, x)  # the weights are constants of an inference model
    net.practice = ["folded BN", "nnx.split + jax.jit forward" if compile else "per-block jit"]
    return net
