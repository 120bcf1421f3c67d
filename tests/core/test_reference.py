"""The NumPy oracle, checked against definitions written out the slow way."""

from __future__ import annotations

import numpy as np
import pytest

from resnet_multi.arch import presets
from resnet_multi.arch.plan import Conv, Norm
from resnet_multi.arch.spec import BatchNorm
from resnet_multi.numerics import reference
from resnet_multi.weights.canonical import init_weights


def naive_conv(x, w, b, stride, pad, groups):
    n, c, h, wd = x.shape
    o, cg, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.zeros((n, o, oh, ow))
    per_group = o // groups
    for i in range(n):
        for oc in range(o):
            g = oc // per_group
            for r in range(oh):
                for s in range(ow):
                    patch = xp[i, g * cg:(g + 1) * cg, r * stride:r * stride + k, s * stride:s * stride + k]
                    out[i, oc, r, s] = (patch * w[oc]).sum() + (b[oc] if b is not None else 0)
    return out


@pytest.mark.parametrize("cin,cout,k,stride,pad,groups,bias", [
    (3, 4, 3, 1, 1, 1, True), (4, 6, 3, 2, 1, 2, False), (2, 4, 7, 2, 3, 1, True), (4, 4, 1, 2, 0, 1, False),
])
def test_conv_matches_definition(cin, cout, k, stride, pad, groups, bias):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, cin, 9, 8))
    conv = Conv("c", cin, cout, k, stride, pad, groups, bias)
    state = {"c.weight": rng.standard_normal((cout, cin // groups, k, k)), "c.bias": rng.standard_normal(cout)}
    got = reference.conv2d(x, conv, state)
    want = naive_conv(x, state["c.weight"], state["c.bias"] if bias else None, stride, pad, groups)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_max_pool_padding_values():
    x = -np.ones((1, 1, 2, 2))
    assert reference.max_pool(x, 3, 2, 1, "neg_inf").max() == -1.0
    assert reference.max_pool(x, 3, 2, 1, "zero").max() == 0.0


def test_batch_norm_train_update_follows_the_convention():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 4, 5)) * 2 + 1
    norm = Norm("bn", 2)
    state = {"bn.weight": np.ones(2), "bn.bias": np.zeros(2), "bn.running_mean": np.zeros(2),
             "bn.running_var": np.ones(2)}
    spec = presets.get("resnet18").replace(bn=BatchNorm(eps=1e-5, momentum=0.25, running_var="unbiased"))
    new = {}
    y = reference.batch_norm(x, norm, spec, state, True, new)
    flat = x.transpose(1, 0, 2, 3).reshape(2, -1)
    np.testing.assert_allclose(new["bn.running_mean"], 0.25 * flat.mean(1))
    np.testing.assert_allclose(new["bn.running_var"], 0.75 + 0.25 * flat.var(1, ddof=1))
    np.testing.assert_allclose(y.transpose(1, 0, 2, 3).reshape(2, -1).std(1), 1, rtol=1e-4)
    biased = spec.replace(bn=BatchNorm(eps=1e-5, momentum=0.25, running_var="biased"))
    reference.batch_norm(x, norm, biased, state, True, new)
    np.testing.assert_allclose(new["bn.running_var"], 0.75 + 0.25 * flat.var(1))


def test_identity_blocks_pass_the_input_through_when_the_branch_is_zero():
    # With zero-init last BN every post-activation block is relu(0 + x) = x for x >= 0.
    spec = presets.get("resnet20").replace(zero_init_last_bn=True)
    state = init_weights(spec, seed=0)
    acts = reference.activations(spec, state, np.random.default_rng(0).standard_normal((1, 3, 8, 8)))
    np.testing.assert_array_equal(acts["layer1.1"], acts["layer1.0"])
    np.testing.assert_array_equal(acts["layer1.2"], acts["layer1.1"])


def test_rows_and_shapes_match_the_analytic_table():
    from resnet_multi.arch.shapes import layer_table

    for name in ("resnet50_v2", "d2l_resnext18", "resnet18"):
        spec = presets.get(name)
        shape = (spec.in_channels, 37, 41)
        acts = reference.activations(spec, init_weights(spec, 0), np.zeros((1, *shape)))
        table = layer_table(spec, shape)
        assert list(acts) == [r.name for r in table.layers]
        for row in table.layers:
            a = acts[row.name]
            got = tuple(a.shape[1:]) if a.ndim == 4 else (a.shape[1], 1, 1)
            assert got == row.output_shape, row.name


def test_eval_is_deterministic_and_train_updates_state():
    spec = presets.get("resnet20")
    state = init_weights(spec, seed=2, perturb_bn=True)
    x = np.random.default_rng(3).standard_normal((4, 3, 12, 12))
    a1, s1 = reference.run(spec, state, x)
    a2, _ = reference.run(spec, state, x)
    np.testing.assert_array_equal(a1["fc"], a2["fc"])
    assert all(np.array_equal(s1[k], state[k]) for k in state)
    _, s3 = reference.run(spec, state, x, train=True)
    assert not np.allclose(s3["bn1.running_mean"], state["bn1.running_mean"])
