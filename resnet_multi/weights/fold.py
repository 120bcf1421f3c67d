"""Fold each BN that directly follows a conv into that conv: the inference form of a net.

In eval mode a BN is an affine map per channel, y = gamma * (x - mean) / sqrt(var + eps) + beta,
and a conv is linear, so BN(conv(x; W, b)) = conv(x; W * s, (b - mean) * s + beta) with
s = gamma / sqrt(var + eps), exactly, whatever the padding (the BN acts after it). The folded
spec (``folded_bn``, arch.plan) drops those BNs and gives their convs a bias; this module
computes the folded weights from a canonical state, in float64, stored as float32.

What stays a BN: one a ReLU separates from the next conv (pre-activation ``preact_bn``, the
head's ``post_bn``), and the stem's ``input_bn`` (folding it into conv1 would change the
zero padding's value at the border).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from resnet_multi.arch.plan import Conv, plan
from resnet_multi.arch.spec import ResNetSpec
from resnet_multi.weights.canonical import check_state


def folded_spec(spec: ResNetSpec) -> ResNetSpec:
    """The same net in its inference form (a spec with ``folded_bn`` set)."""
    return spec if spec.folded_bn else spec.replace(folded_bn=True)


def conv_norm_pairs(spec: ResNetSpec) -> list[tuple[Conv, str]]:
    """(conv record, the name of the BN right after it) for every BN the folded form removes."""
    p = plan(spec)
    pairs = []
    if p.stem.bn is not None:
        pairs.append((p.stem.conv, p.stem.bn.name))
    for block in p.blocks:
        pairs.extend((c, n.name) for c, n in zip(block.convs, block.norms))
        if block.downsample_bn is not None:
            pairs.append((block.downsample_conv, block.downsample_bn.name))
    return pairs


def fold_state(spec: ResNetSpec, state: Mapping[str, np.ndarray]) -> tuple[ResNetSpec, dict[str, np.ndarray]]:
    """(folded spec, its canonical state) from a plain spec's canonical state; eps from spec.bn."""
    if spec.folded_bn:
        return spec, dict(check_state(spec, state))
    state = check_state(spec, state)
    out = {k: np.asarray(v, np.float64) for k, v in state.items()}
    for conv, norm in conv_norm_pairs(spec):
        gamma, beta = out.pop(f"{norm}.weight"), out.pop(f"{norm}.bias")
        mean, var = out.pop(f"{norm}.running_mean"), out.pop(f"{norm}.running_var")
        scale = gamma / np.sqrt(var + spec.bn.eps)
        bias = out.get(f"{conv.name}.bias", 0.0)
        out[f"{conv.name}.weight"] = out[f"{conv.name}.weight"] * scale[:, None, None, None]
        out[f"{conv.name}.bias"] = (bias - mean) * scale + beta
    target = folded_spec(spec)
    order = check_state(target, {k: v.astype(np.float32) for k, v in out.items()}, "folded weights")
    return target, dict(order)
