"""The inference fast path in MXNet (Gluon): a folded model, hybridized, partitioned for oneDNN.

``for_inference`` (faces.py) folds the BNs into the convs (resnet_multi.weights.fold) and
builds the folded spec with model.build (hybridized, static_alloc and static_shape).
``fast`` here adds MXNet's fused-subgraph backend for CPUs: on the first call,
``optimize_for(x, backend="MKLDNN")`` partitions the graph so that oneDNN runs each conv
with its bias, ReLU and residual add as one kernel. On a GPU (or an MXNet built without
oneDNN) the hybridized graph runs as it is.

The result is the folded ResNet itself, with ``infer`` (NDArray -> output) set: model.forward
and bench.py call it; the layer table (rows) still runs row by row.
"""

from __future__ import annotations

import mxnet as mx

from .model import ResNet, context_of

SUBGRAPH_BACKEND = "MKLDNN"  # MXNet 1.x's name for its oneDNN graph partitioner


def fused_backend(model: ResNet) -> str | None:
    cpu = context_of(model).device_type == "cpu"
    return SUBGRAPH_BACKEND if cpu and mx.runtime.Features().is_enabled("MKLDNN") else None


def fast(net: ResNet, compile: bool = True) -> ResNet:
    backend = fused_backend(net) if compile else None
    partitioned = []

    def infer(x):
        if backend is not None and not partitioned:  # needs an input: partitions on the first call
            net.optimize_for(x, backend=backend, static_alloc=True, static_shape=True)
            partitioned.append(True)
        return net(x)

    net.infer = infer
    net.practice = ["folded BN", "hybridize(static_alloc, static_shape)"]
    if backend is not None:
        net.practice.append(f"optimize_for(backend={backend!r})")
    return net
