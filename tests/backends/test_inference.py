"""The inference fast path (for_inference) in every backend: the plain model's eval output, faster.

Its BNs are folded into the convs and it runs the framework's fastest way (infer.py); what it
computes must still be what the float64 reference computes for the plain spec and weights, to
the parity tolerance, in every preset family, and the plain model must be left as it was.
"""

from __future__ import annotations

import numpy as np
import pytest

import resnet_multi
from resnet_multi.arch.plan import Norm, plan
from resnet_multi.numerics import reference
from resnet_multi.weights.canonical import init_weights

from .native_helpers import tiny, tol

# Post-activation basic and bottleneck (stride at the 1x1 and at the 3x3), pre-activation with a
# subsample shortcut, Gluon v2 (input BN), grouped (ResNeXt), the book's (biased convs, bare 1x1
# shortcut) and its TensorFlow tab ('same' padding), a CIFAR stem.
FAMILIES = ("resnet18", "resnet50_v1", "resnext50_32x4d", "resnet50_v2", "gluon_resnet18_v2",
            "d2l_resnet18", "d2l_resnet18_tf", "resnet20")


def _net(name, **changes):
    spec = tiny(name).replace(**changes)
    return spec, init_weights(spec, seed=3, perturb_bn=True)  # BN statistics far from 0 and 1


def _input(spec, n=2, size=(13, 12)):
    return np.random.default_rng(2).standard_normal((n, spec.in_channels, *size)).astype(np.float32)


@pytest.mark.parametrize("name", FAMILIES)
def test_folded_model_computes_the_references_logits(backend, face, name):
    spec, state = _net(name)
    x = _input(spec)
    want = reference.forward(spec, state, x)
    model = face.build(spec, device="cpu", state=state)
    fast = resnet_multi.for_inference(model, compile=False)
    left = {m.name.split(".")[-1] for m in plan(fast.spec).modules() if isinstance(m, Norm)}
    assert fast.spec.folded_bn and left <= {"input_bn", "preact_bn", "post_bn"}  # none right after a conv
    got = face.forward(fast, x)
    np.testing.assert_allclose(got, want, rtol=0, atol=tol(want))
    # The plain model is untouched: same weights, same output.
    after = face.to_canonical(model)
    assert all(np.array_equal(after[k], v) for k, v in state.items())
    np.testing.assert_allclose(face.forward(model, x), want, rtol=0, atol=tol(want))


@pytest.mark.parametrize("name", ("resnet18", "resnet50_v2"))
def test_compiled_fast_path_matches_and_takes_new_shapes(backend, face, name):
    """The compiled form (the default) on two batch and image sizes."""
    spec, state = _net(name)
    fast = resnet_multi.for_inference(face.build(spec, device="cpu", state=state))
    for x in (_input(spec), _input(spec, n=3, size=(16, 16))):
        want = reference.forward(spec, state, x)
        np.testing.assert_allclose(face.forward(fast, x), want, rtol=0, atol=tol(want))


def test_backbone_and_feature_extractor(backend, face):
    """num_classes 0 (pooled features) and features_only (a list of maps) fold too."""
    spec, state = _net("resnet50_v1")
    x = _input(spec)
    rows = reference.activations(spec, state, x)
    pooled = resnet_multi.build(spec, backend=backend, device="cpu", state=state, num_classes=0)
    got = face.forward(resnet_multi.for_inference(pooled, compile=False), x)
    np.testing.assert_allclose(got, rows["avgpool"].reshape(got.shape), rtol=0, atol=tol(rows["avgpool"]))
    maps = resnet_multi.build(spec, backend=backend, device="cpu", state=state, features_only=True)
    got = face.forward(resnet_multi.for_inference(maps, compile=False), x)
    names = [plan(spec).feature_row(i) for i in maps.spec.features]
    assert len(got) == len(names)
    for g, row in zip(got, names):
        np.testing.assert_allclose(g, rows[row], rtol=0, atol=tol(rows[row]), err_msg=row)
