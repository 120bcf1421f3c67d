"""Folding BN into the convs (weights/fold.py): the inference form computes the plain net's outputs.

The float64 reference runs both forms, so this is the algebra itself, for every preset (two small
stages each): the folded spec's plan has no BN right after a conv, its convs carry the biases, and
its logits equal the plain net's to float64 rounding.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from resnet_multi.arch import presets
from resnet_multi.arch.plan import Norm, plan
from resnet_multi.arch.spec import Stage, spec_from_dict
from resnet_multi.errors import SpecError
from resnet_multi.numerics import reference
from resnet_multi.weights.canonical import WeightsError, expected_shapes, init_weights
from resnet_multi.weights.fold import conv_norm_pairs, fold_state, folded_spec


def small(name):
    spec = presets.get(name)
    stages = ((Stage(1, 16, 1, 2, 4), Stage(1, 32, 2, 2, 4)) if spec.block == "bottleneck"
              else (Stage(1, 8, 1), Stage(1, 16, 2)))
    return dataclasses.replace(spec, stages=stages, num_classes=3, stem=dataclasses.replace(spec.stem, channels=8))


@pytest.mark.parametrize("name", presets.names())
def test_folded_net_computes_the_plain_nets_logits(name):
    spec = small(name)
    state = init_weights(spec, seed=1, perturb_bn=True)
    folded, fstate = fold_state(spec, state)
    x = np.random.default_rng(0).standard_normal((2, spec.in_channels, 11, 10))
    want = reference.forward(spec, state, x)
    np.testing.assert_allclose(reference.forward(folded, fstate, x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # The folded form: no BN right after a conv; every conv that had one now has a bias; nothing else changed.
    left = {m.name for m in plan(folded).modules() if isinstance(m, Norm)}
    removed = {norm for _, norm in conv_norm_pairs(spec)}
    assert left == {m.name for m in plan(spec).modules() if isinstance(m, Norm)} - removed
    assert all(f"{conv.name}.bias" in fstate for conv, _ in conv_norm_pairs(spec))
    assert set(fstate) == set(expected_shapes(folded))
    assert all(v.dtype == np.float32 for v in fstate.values())


def test_folding_is_the_bn_formula():
    """One conv and its BN by hand: W * gamma / sqrt(var + eps), (b - mean) * gamma / sqrt(var + eps) + beta."""
    spec = small("d2l_resnet18")  # its convs carry a bias of their own
    state = init_weights(spec, seed=2, perturb_bn=True)
    _, fstate = fold_state(spec, state)
    s = state["layer1.0.bn1.weight"].astype(np.float64) / np.sqrt(state["layer1.0.bn1.running_var"] + spec.bn.eps)
    np.testing.assert_allclose(fstate["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"] * s[:, None, None, None],
                               rtol=1e-6)
    bias = (state["layer1.0.conv1.bias"] - state["layer1.0.bn1.running_mean"]) * s + state["layer1.0.bn1.bias"]
    np.testing.assert_allclose(fstate["layer1.0.conv1.bias"], bias, rtol=1e-6, atol=1e-7)


def test_folded_spec_is_a_spec():
    """It round-trips through a file's dict, folding twice changes nothing, and zero-init is refused with it."""
    spec = folded_spec(small("resnet50_v2"))
    assert spec.folded_bn and folded_spec(spec) is spec
    assert spec_from_dict(spec.to_dict()) == spec
    state = init_weights(spec, seed=0)
    assert fold_state(spec, state)[0] is spec
    with pytest.raises(SpecError, match="zero_init_last_bn"):
        small("resnet50").replace(zero_init_last_bn=True, folded_bn=True)


def test_a_state_that_does_not_fit_is_refused():
    spec = small("resnet18")
    state = init_weights(spec, seed=0)
    del state["layer1.0.bn1.running_var"]
    with pytest.raises(WeightsError, match="running_var"):
        fold_state(spec, state)
