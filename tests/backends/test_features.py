"""Feature extraction in every backend: num_classes=0, features_only/out_indices, forward_features.

A backbone is the whole network's first part: its outputs must be the rows the float64 reference
computes for the whole network, on the whole network's weights, to the parity tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest

import resnet_multi
from resnet_multi.arch.plan import plan
from resnet_multi.arch.shapes import layer_table
from resnet_multi.errors import SpecError, UserError
from resnet_multi.numerics import reference
from resnet_multi.weights.canonical import expected_shapes, init_weights

from .native_helpers import tiny, tol

# Post-activation basic, pre-activation bottleneck with its final BN, and a stride in the last block.
PRESETS = ("resnet18", "gluon_resnet50_v2", "resnet50_v2")


def _whole(name):
    spec = tiny(name)
    return spec, init_weights(spec, seed=4, perturb_bn=True)


def _input(spec, size=(13, 12)):
    return np.random.default_rng(1).standard_normal((2, spec.in_channels, *size)).astype(np.float32)


@pytest.mark.parametrize("name", PRESETS)
def test_every_out_index_matches_the_reference(backend, face, name):
    """features_only: each chosen stage's map equals the whole network's row in the reference."""
    spec, state = _whole(name)
    x = _input(spec)
    rows = reference.activations(spec, state, x)
    every = tuple(range(len(spec.stages) + 1))  # 0 = the stem, then each stage
    model = resnet_multi.build(spec, backend=backend, device="cpu", state=state, features_only=True,
                               out_indices=every)
    maps = face.forward(model, x)
    assert isinstance(maps, list) and len(maps) == len(every)
    whole_plan = plan(spec)
    for index, got in zip(every, maps):
        want = rows["stem" if index == 0 else whole_plan.stages[index - 1][-1].name]
        assert got.shape == want.shape, index
        np.testing.assert_allclose(got, want, rtol=0, atol=tol(want), err_msg=f"out_index {index}")
    info = model.feature_info
    assert [f["index"] for f in info] == list(every)
    assert [f["channels"] for f in info] == [m.shape[1] for m in maps]


def test_default_out_indices_and_a_subset(backend, face):
    """The default is every stage; a subset stops at its last stage (no later stage, no head is built)."""
    spec, state = _whole("resnet18")
    x = _input(spec, size=(16, 16))
    model = resnet_multi.build(spec, backend=backend, device="cpu", state=state, features_only=True)
    assert [f["index"] for f in model.feature_info] == [1, 2]
    first = resnet_multi.build(spec, backend=backend, device="cpu", state=state, features_only=True,
                               out_indices=(1,))
    kept = face.to_canonical(first)
    assert set(kept) == set(expected_shapes(first.spec))
    assert not any(k.startswith(("layer2.", "fc.")) for k in kept)
    (only,) = face.forward(first, x)
    np.testing.assert_allclose(only, face.forward(model, x)[0], rtol=0, atol=tol(only))
    # The reduction is the stride product: on a 16x16 input it is exactly the input over the map's size.
    assert [16 // m.shape[2] for m in face.forward(model, x)] == [f["reduction"] for f in model.feature_info]


@pytest.mark.parametrize("name", PRESETS)
def test_num_classes_zero_returns_pooled_features(backend, face, name):
    spec, state = _whole(name)
    x = _input(spec)
    model = resnet_multi.build(spec, backend=backend, device="cpu", state=state, num_classes=0)
    pooled = face.forward(model, x)
    want = reference.activations(spec, state, x)["avgpool"]
    assert pooled.shape == want.shape == (2, spec.stages[-1].channels)
    np.testing.assert_allclose(pooled, want, rtol=0, atol=tol(want))
    assert not any(k.startswith("fc.") for k in face.to_canonical(model))
    table = layer_table(model.spec, (spec.in_channels, 13, 12))
    assert [r.name for r in table.layers][-1] == "avgpool"
    assert set(face.row_counts(model)) == {r.name for r in table.layers}


@pytest.mark.parametrize("name", ("resnet18", "gluon_resnet50_v2"))
def test_forward_features_is_what_the_pool_reads(backend, face, name):
    spec, state = _whole(name)
    x = _input(spec)
    model = face.build(spec, device="cpu", state=state)
    want = reference.activations(spec, state, x)[plan(spec).pooled_row]
    got = face.forward_features(model, x)
    assert got.ndim == 4
    np.testing.assert_allclose(got, want, rtol=0, atol=tol(want))
    np.testing.assert_allclose(got.mean(axis=(2, 3)), reference.activations(spec, state, x)["avgpool"],
                               rtol=0, atol=tol(want))


def test_new_head_keeps_the_rest(backend, face):
    """num_classes=K with weights: the fc is the seeded init of K classes, every other tensor the weights'."""
    spec, state = _whole("resnet18")
    model = resnet_multi.build(spec, backend=backend, device="cpu", state=state, num_classes=3, seed=8)
    got = face.to_canonical(model)
    fresh = init_weights(model.spec, seed=8)
    np.testing.assert_array_equal(got["fc.weight"], fresh["fc.weight"])
    assert got["fc.weight"].shape == (3, spec.stages[-1].channels)
    for k, v in state.items():
        if not k.startswith("fc."):
            np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_seeded_backbone_is_the_seeded_network_s_prefix(backend, face):
    spec = tiny("resnet18")
    backbone = face.to_canonical(resnet_multi.build(spec, backend=backend, device="cpu", seed=5, features_only=True,
                                                    out_indices=(1,)))
    whole = init_weights(spec, seed=5)
    assert backbone and all(np.array_equal(v, whole[k]) for k, v in backbone.items())


def test_bad_head_arguments(backend, face):
    spec = tiny("resnet18")
    with pytest.raises(UserError, match="out_indices needs features_only"):
        resnet_multi.build(spec, backend=backend, device="cpu", out_indices=(1,))
    with pytest.raises(SpecError, match=r"^out_indices: .*0 \(the stem\) to 2"):
        resnet_multi.build(spec, backend=backend, device="cpu", features_only=True, out_indices=(1, 3))
    with pytest.raises(SpecError, match="not both"):
        resnet_multi.build(spec, backend=backend, device="cpu", features_only=True, num_classes=4)
