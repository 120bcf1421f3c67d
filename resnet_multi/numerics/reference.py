"""The NumPy float64 forward pass: the oracle that defines what the spec computes.

Reads a spec and a canonical state, never a framework. Every backend is
checked against it layer by layer; if each matches the oracle, they match
each other.

Eval mode normalises with the running statistics. Train mode normalises
with the batch mean and the biased batch variance, and returns the running
statistics updated by the spec's convention:
``running = (1 - momentum) * running + momentum * batch`` with the biased or
unbiased (n / (n - 1)) batch variance as ``spec.bn.running_var`` says.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from resnet_multi.arch.plan import BlockPlan, Conv, Norm, plan, same_pads
from resnet_multi.arch.spec import ResNetSpec


def conv2d(x: np.ndarray, conv: Conv, state: Mapping[str, np.ndarray]) -> np.ndarray:
    """Grouped 2-D convolution, NCHW, zero padding: symmetric, or 'same' (conv.pads, from the input size)."""
    w = np.asarray(state[f"{conv.name}.weight"], dtype=np.float64)
    s, k, g = conv.stride, conv.kernel, conv.groups
    pads = ((0, 0), (0, 0), conv.pads(x.shape[2]), conv.pads(x.shape[3]))
    if any(map(any, pads)):
        x = np.pad(x, pads)
    n, c = x.shape[:2]
    oh = (x.shape[2] - k) // s + 1
    ow = (x.shape[3] - k) // s + 1
    # windows: (N, C, OH, OW, k, k); strided view, no copy until the contraction
    win = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, : oh * s : s, : ow * s : s]
    cg, og = c // g, conv.out_channels // g
    outs = []
    for i in range(g):
        wi = w[i * og:(i + 1) * og]  # (og, cg, k, k)
        part = np.tensordot(win[:, i * cg:(i + 1) * cg], wi, axes=([1, 4, 5], [1, 2, 3]))  # (N, OH, OW, og)
        outs.append(part)
    y = np.concatenate(outs, axis=3).transpose(0, 3, 1, 2)
    if conv.bias:
        y = y + np.asarray(state[f"{conv.name}.bias"], dtype=np.float64)[None, :, None, None]
    return np.ascontiguousarray(y)


def batch_norm(x: np.ndarray, norm: Norm, spec: ResNetSpec, state: Mapping[str, np.ndarray],
               train: bool, new_state: dict[str, np.ndarray]) -> np.ndarray:
    name, bn = norm.name, spec.bn
    if norm.affine:
        gamma = np.asarray(state[f"{name}.weight"], dtype=np.float64)
        beta = np.asarray(state[f"{name}.bias"], dtype=np.float64)
    else:
        gamma, beta = np.ones(norm.channels), np.zeros(norm.channels)
    if train:
        mean = x.mean(axis=(0, 2, 3))
        var = x.var(axis=(0, 2, 3))  # biased: what every framework normalises with
        count = x.shape[0] * x.shape[2] * x.shape[3]
        update_var = var * count / max(count - 1, 1) if bn.running_var == "unbiased" else var
        m = bn.momentum
        new_state[f"{name}.running_mean"] = (1 - m) * np.asarray(state[f"{name}.running_mean"], np.float64) + m * mean
        new_state[f"{name}.running_var"] = (1 - m) * np.asarray(state[f"{name}.running_var"], np.float64) + m * update_var
    else:
        mean = np.asarray(state[f"{name}.running_mean"], dtype=np.float64)
        var = np.asarray(state[f"{name}.running_var"], dtype=np.float64)
    scale = gamma / np.sqrt(var + bn.eps)
    return x * scale[None, :, None, None] + (beta - mean * scale)[None, :, None, None]


def max_pool(x: np.ndarray, kernel: int, stride: int, padding: int, pad_value: str, same: bool = False) -> np.ndarray:
    """Max-pool, NCHW, padded with -inf (the true max) or zeros: ``padding`` on every side, or
    TensorFlow's 'same' widths (``same``; TF's own 'same' pool ignores the padded cells: -inf)."""
    fill = -np.inf if pad_value == "neg_inf" else 0.0
    pads = [same_pads(n, kernel, stride) if same else (padding, padding) for n in x.shape[2:]]
    x = np.pad(x, ((0, 0), (0, 0), *pads), constant_values=fill)
    oh = (x.shape[2] - kernel) // stride + 1
    ow = (x.shape[3] - kernel) // stride + 1
    win = sliding_window_view(x, (kernel, kernel), axis=(2, 3))[:, :, : oh * stride : stride, : ow * stride : stride]
    return win.max(axis=(4, 5))


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _block(x, block: BlockPlan, spec, state, train, new_state):
    bn = lambda y, norm: batch_norm(y, norm, spec, state, train, new_state)  # noqa: E731
    if block.preact:
        pre = relu(bn(x, block.preact_bn))
        y = pre
        for i, conv in enumerate(block.convs):
            y = conv2d(y, conv, state)
            if i < len(block.norms):  # a folded block has none (the ReLU stays)
                y = bn(y, block.norms[i])
            if i < len(block.convs) - 1:
                y = relu(y)
        shortcut_in = pre
    else:
        y = x
        for i, conv in enumerate(block.convs):
            y = conv2d(y, conv, state)
            if i < len(block.norms):  # a folded block has none
                y = bn(y, block.norms[i])
            if i < len(block.convs) - 1:
                y = relu(y)
        shortcut_in = x
    if block.shortcut in ("conv", "conv_bn"):
        identity = conv2d(shortcut_in, block.downsample_conv, state)
        if block.downsample_bn is not None:
            identity = bn(identity, block.downsample_bn)
    elif block.shortcut == "subsample":
        identity = x[:, :, :: block.stride, :: block.stride]
    else:
        identity = x
    out = y + identity
    return out if block.preact else relu(out)


def run(spec: ResNetSpec, state: Mapping[str, np.ndarray], x: np.ndarray,
        train: bool = False) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every layer-table row's output (float64), and the state after the pass.

    Rows: 'stem', 'layerI.J', ['post_bn'], 'avgpool' (N, C), 'fc' (N, classes); no 'fc' with
    num_classes 0, and a feature extractor's rows end at its last feature.
    The returned state equals the input one in eval mode; in train mode its
    running statistics are updated.
    """
    p = plan(spec)
    new_state: dict[str, np.ndarray] = {k: np.asarray(v, dtype=np.float64) for k, v in state.items()}
    acts: dict[str, np.ndarray] = {}
    y = np.asarray(x, dtype=np.float64)
    if p.stem.input_bn is not None:  # no ReLU after it: it only standardises the data
        y = batch_norm(y, p.stem.input_bn, spec, state, train, new_state)
    y = conv2d(y, p.stem.conv, state)
    if p.stem.bn is not None:
        y = batch_norm(y, p.stem.bn, spec, state, train, new_state)
    if p.stem.relu:
        y = relu(y)
    if p.stem.pool is not None:
        pool = p.stem.pool
        y = max_pool(y, pool.kernel, pool.stride, pool.padding, pool.pad_value, same=pool.same)
    acts["stem"] = y
    for block in p.blocks:
        y = _block(y, block, spec, state, train, new_state)
        acts[block.name] = y
    if p.head is None:  # a feature extractor: its rows end at its last feature
        return acts, new_state
    if p.head.post_bn is not None:
        y = relu(batch_norm(y, p.head.post_bn, spec, state, train, new_state))
        acts["post_bn"] = y
    pooled = y.mean(axis=(2, 3))
    acts["avgpool"] = pooled
    if p.head.fc is not None:
        w = np.asarray(state["fc.weight"], dtype=np.float64)
        b = np.asarray(state["fc.bias"], dtype=np.float64)
        acts["fc"] = pooled @ w.T + b
    return acts, new_state


def activations(spec: ResNetSpec, state: Mapping[str, np.ndarray], x: np.ndarray,
                train: bool = False) -> dict[str, np.ndarray]:
    return run(spec, state, x, train)[0]


def forward(spec: ResNetSpec, state: Mapping[str, np.ndarray], x: np.ndarray, train: bool = False):
    """What the network returns: logits, pooled features (num_classes 0), or a feature extractor's list of maps."""
    acts = run(spec, state, x, train)[0]
    rows = plan(spec).output_rows
    return [acts[r] for r in rows] if spec.features else acts[rows[0]]
