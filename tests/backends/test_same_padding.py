"""TensorFlow's 'same' padding (spec.same_padding), lowered by hand in every backend: the book's TF and JAX tabs.

'same' pads asymmetrically only where a size is even, so every check runs at an odd size (33: odd at
every 'same' layer) and an even one (32: even at every one, every 'same' pad asymmetric). One built
model must be exact at each size in turn: MXNet's hybridized graph and TensorFlow's traced function
are built before any size is known.
"""

from __future__ import annotations

import numpy as np
import pytest

from resnet_multi.arch.plan import Conv
from resnet_multi.numerics import reference
from resnet_multi.numerics.parity import parity_report, seeded_input

from .native_helpers import model, tiny, tol

SIZES = [pytest.param((1, 33, 33), id="odd33"), pytest.param((1, 32, 32), id="even32")]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", ["d2l_resnet18_tf", "d2l_resnet18_jax"])
def test_book_tabs_eval_parity(backend, face, name, size):
    report = parity_report(name, backend, size, seed=1, mode="eval", batch=2, device="cpu")
    assert report["ok"], f"{backend} {name} {size}: {report['max_abs_diff']:.3g}, from {report['first_divergent_layer']}"


@pytest.mark.parametrize("size", SIZES)
def test_same_padding_train_parity(backend, face, size):
    # Batch 4: at 32x32 layer4 is 1x1, and BN over 2 values is ill-conditioned in fp32 (any padding).
    report = parity_report("d2l_resnet18_jax", backend, size, seed=2, mode="train", batch=4, device="cpu")
    assert report["ok"], f"{backend} {size}: {report['max_abs_diff']:.3g}; {report.get('running_stats')}"


def test_one_model_at_each_size_in_turn(backend, face):
    spec = tiny("d2l_resnet18_tf")
    net = model(face, spec, seed=4)
    from resnet_multi.weights.canonical import init_weights

    state = init_weights(spec, 4, perturb_bn=True)
    for size in [(9, 11), (10, 12), (8, 7), (9, 11)]:
        x = seeded_input((1, *size), 2, 0)
        want = reference.forward(spec, state, x)
        got = face.forward(net, x)
        assert got.shape == want.shape and np.abs(got - want).max() <= tol(want), (backend, size)


@pytest.mark.parametrize("size", [(8, 8), (9, 8)])
def test_reference_same_is_the_frameworks_own(backend, face, size):
    """The oracle's 'same' against the framework's own padding='same' (TensorFlow and JAX have one for stride 2)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, *size)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    want_conv = reference.conv2d(x.astype(np.float64), Conv("c", 3, 4, 3, 2, 1, 1, False, same=True), {"c.weight": w})
    want_pool = reference.max_pool(x.astype(np.float64), 3, 2, 1, "neg_inf", same=True)
    nhwc, hwio = x.transpose(0, 2, 3, 1), w.transpose(2, 3, 1, 0)
    if backend == "tensorflow":
        import tensorflow as tf

        conv = tf.nn.conv2d(nhwc, hwio, 2, "SAME").numpy()
        pool = tf.nn.max_pool2d(nhwc, 3, 2, "SAME").numpy()
    elif backend == "flax":
        import jax
        from flax import nnx

        conv = np.asarray(jax.lax.conv_general_dilated(nhwc, hwio, (2, 2), "SAME", dimension_numbers=(
            "NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST))
        pool = np.asarray(nnx.max_pool(nhwc, (3, 3), strides=(2, 2), padding="SAME"))
    else:
        pytest.skip(f"{backend} has no 'same' padding for strided convs to compare with")
    np.testing.assert_allclose(conv.transpose(0, 3, 1, 2), want_conv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pool.transpose(0, 3, 1, 2), want_pool, rtol=0, atol=0)


@pytest.mark.parametrize("size", SIZES)
def test_same_pool_filled_with_zeros(backend, face, size):
    """'same' widths with stem.pool_padding='zero' and no BN-ReLU before the pool (negative pool inputs)."""
    import dataclasses

    spec = tiny("d2l_resnet18_tf")
    spec = dataclasses.replace(spec, stem=dataclasses.replace(spec.stem, norm=False, pool_padding="zero"))
    report = parity_report(spec, backend, size, seed=3, mode="eval", batch=2, device="cpu")
    assert report["ok"], f"{backend} {size}: {report['max_abs_diff']:.3g} from {report['first_divergent_layer']}"
