"""TensorFlow's 'same' padding in the spec (same_padding): the widths, the analytic shapes, the NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

from resnet_multi.arch import presets
from resnet_multi.arch.plan import Conv, plan, same_pads
from resnet_multi.arch.shapes import layer_table
from resnet_multi.arch.spec import ResNetSpec, SpecError, Stage, Stem, spec_from_dict
from resnet_multi.numerics import reference


def test_same_pads_are_tensorflows():
    # out = ceil(n / s); the total split with the odd pixel after (at 96 the stem conv pads 2 and 3).
    assert same_pads(96, 7, 2) == (2, 3) and same_pads(95, 7, 2) == (3, 3)
    assert same_pads(48, 3, 2) == (0, 1) and same_pads(49, 3, 2) == (1, 1)
    assert same_pads(10, 3, 1) == (1, 1) and same_pads(10, 1, 2) == (0, 0)
    assert same_pads(10, 3, 3) == (1, 1) and same_pads(11, 3, 3) == (0, 1) and same_pads(12, 3, 3) == (0, 0)
    for n in range(1, 40):
        for k, s in ((7, 2), (3, 2), (3, 3), (1, 2), (5, 4)):
            before, after = same_pads(n, k, s)
            assert (n + before + after - k) // s + 1 == -(-n // s), (n, k, s)


def _naive_same_conv(x, w, stride):
    k = w.shape[-1]
    (top, bottom), (left, right) = same_pads(x.shape[2], k, stride), same_pads(x.shape[3], k, stride)
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    oh, ow = -(-x.shape[2] // stride), -(-x.shape[3] // stride)
    out = np.zeros((x.shape[0], w.shape[0], oh, ow))
    for r in range(oh):
        for c in range(ow):
            patch = xp[:, :, r * stride:r * stride + k, c * stride:c * stride + k]
            out[:, :, r, c] = np.tensordot(patch, w, axes=([1, 2, 3], [1, 2, 3]))
    return out


@pytest.mark.parametrize("size", [(8, 8), (9, 9), (8, 11)])
@pytest.mark.parametrize("k,stride", [(7, 2), (3, 2)])
def test_reference_same_conv_matches_the_definition(size, k, stride):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, *size))
    conv = Conv("c", 3, 4, k, stride, k // 2, 1, False, same=True)
    state = {"c.weight": rng.standard_normal((4, 3, k, k))}
    got = reference.conv2d(x, conv, state)
    np.testing.assert_allclose(got, _naive_same_conv(x, state["c.weight"], stride), rtol=1e-12, atol=1e-12)
    if size[0] % 2 == 0:  # at an even size the window moves: not the symmetric conv
        assert not np.allclose(got, reference.conv2d(x, Conv("c", 3, 4, k, stride, k // 2, 1, False), state))


def test_reference_same_pool_pads_as_its_value_says():
    x = -np.ones((1, 1, 4, 4))
    x[0, 0, 3, 3] = -5.0
    # 4x4, 3x3/2 'same': pads (0, 1); the last window holds the -5 pixel and padding only.
    assert reference.max_pool(x, 3, 2, 1, "neg_inf", same=True).shape == (1, 1, 2, 2)
    assert reference.max_pool(x, 3, 2, 1, "neg_inf", same=True).max() == -1.0
    assert reference.max_pool(x, 3, 2, 1, "zero", same=True).max() == 0.0
    y = np.arange(16.0).reshape(1, 1, 4, 4)
    assert reference.max_pool(y, 3, 2, 1, "neg_inf", same=True)[0, 0].tolist() == [[10.0, 11.0], [14.0, 15.0]]
    assert reference.max_pool(y, 3, 2, 1, "neg_inf")[0, 0].tolist() == [[5.0, 7.0], [13.0, 15.0]]


def test_plan_marks_the_roles_and_shapes_stay_ceil():
    p = plan(presets.get("d2l_resnet18_tf"))
    assert p.stem.conv.same and p.stem.pool.same
    same = [c.name for b in p.blocks for c in (*b.convs, b.downsample_conv) if c is not None and c.same]
    assert same == ["layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"]  # only the strided 3x3 convs
    for size in (96, 95, 32, 33, 1, 2):
        table = layer_table(presets.get("d2l_resnet18_tf"), (1, size, size + 1))
        half = (lambda n: (n + 1) // 2)  # ceil(n / 2): 'same' at stride 2
        assert table.layers[0].output_shape[1:] == (half(half(size)), half(half(size + 1)))


def test_same_padding_field_validation_and_shorthands():
    stages = (Stage(1, 8, 1),)
    with pytest.raises(SpecError, match="^same_padding: must be one of"):
        ResNetSpec(name="x", stages=stages, same_padding=("stem",))
    with pytest.raises(SpecError, match="^same_padding: must be a list"):
        ResNetSpec(name="x", stages=stages, same_padding="strided")
    with pytest.raises(SpecError, match="^same_padding: a cifar stem has no max-pool"):
        ResNetSpec(name="x", stages=stages, stem=Stem(kind="cifar"), same_padding=("stem_pool",))
    spec = ResNetSpec(name="x", stages=stages, same_padding=["strided", "stem_conv"])
    assert spec.same_padding == ("stem_conv", "strided")  # normalised order: equal specs compare equal
    base = {"name": "x", "stages": [{"blocks": 1, "channels": 8}]}
    assert spec_from_dict({**base, "same_padding": "all"}).same_padding == ("stem_conv", "stem_pool", "strided")
    assert spec_from_dict({**base, "stem": {"kind": "cifar"}, "same_padding": "all"}).same_padding == (
        "stem_conv", "strided")
    assert spec_from_dict({**base, "same_padding": "none"}).same_padding == ()
    assert spec_from_dict(spec.to_dict()) == spec


def test_the_books_tensorflow_and_jax_tabs():
    tf, jax, torch = (presets.get(n) for n in ("d2l_resnet18_tf", "d2l_resnet18_jax", "d2l_resnet18"))
    assert tf.same_padding == jax.same_padding == ("stem_conv", "stem_pool", "strided")
    assert (tf.bn.eps, tf.bn.momentum, tf.bn.running_var) == (1e-3, 0.01, "biased")  # Keras: 0.99, 1e-3
    assert (jax.bn.eps, jax.bn.momentum, jax.bn.running_var) == (1e-5, 0.01, "biased")  # Flax: 0.99, 1e-5
    assert tf.replace(same_padding=(), bn=torch.bn, name=torch.name, description=torch.description) == torch
    # The book's layer_summary holds for every tab: 'same' keeps ceil(n / s) at 96.
    for spec in (tf, jax):
        shapes = [r.output_shape for r in layer_table(spec, (1, 96, 96)).layers]
        assert shapes == [r.output_shape for r in layer_table(torch, (1, 96, 96)).layers]
    assert presets.book_tabs("d2l_resnet18_jax")["TensorFlow"] == "d2l_resnet18_tf"
    assert presets.book_tabs("resnet18") is None
