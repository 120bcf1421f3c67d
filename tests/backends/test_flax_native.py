"""Tests only the flax backend has: its spellings, .msgpack files read by Flax, the Linen ResNet-50, NNX details.

What every backend promises (devices, build, file round trips, the SGD step,
the optimizer state, precisions, the bench) is tested once for all four in
test_contract.py; here is what needs JAX's or Flax's own API. Each test skips
unless the backend under test is flax (fixture ``flax_face``), so the file is
collected everywhere but runs (and must pass) only in the flax environment.
The tests reach a part's own names with ``flax_face.module("bench")`` and the
like. JAX and Flax are imported inside the tests, never at module level.

Flax ships no ResNet zoo; its own ResNet-50 is the ImageNet example's
(Linen), which bench.py writes out as LinenResNet50. The import test checks
that architecture against ours and the NumPy reference.
"""

from __future__ import annotations

import numpy as np
import pytest

from resnet_multi.arch import presets
from resnet_multi.errors import UserError
from resnet_multi.numerics import reference
from resnet_multi.run.convert import convert
from resnet_multi.weights.canonical import WeightsError, init_weights, load_state, save_state

from .native_helpers import batch, check_bench, model, only, tiny, tol

ODD_SIZE = (3, 13, 17)

flax_face = only("flax", "flax_face")


def _flax_load(path, spec, flax_face):
    """Flax's own API: msgpack_restore, then nnx.replace_by_pure_dict into a fresh model's state."""
    import jax
    import jax.numpy as jnp
    from flax import nnx, serialization

    net = flax_face.build(spec, device="cpu", seed=99)
    state = nnx.state(net)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, serialization.msgpack_restore(path.read_bytes())))
    nnx.update(net, state)
    return net


# -- Flax's own ResNet-50: the ImageNet example's architecture (Linen) ---------------------------------


def test_linen_example_import(flax_face, tmp_path):
    """LinenResNet50, random weights and BN statistics, saved with Flax's own serialization; mapped to
    canonical, our resnet50 and the NumPy reference give its logits. At 33x33 every 'SAME' pad of the
    example is symmetric, as ours; at 32x32 its stride-2 'SAME' pads bottom/right only and they differ."""
    import jax
    import jax.numpy as jnp
    from flax import serialization

    bench = flax_face.module("bench")
    net = bench.LinenResNet50(num_classes=1000)
    x = np.random.default_rng(1).standard_normal((1, 3, 33, 33)).astype(np.float32)
    shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 33, 33, 3)), train=False))
    rng = np.random.default_rng(0)
    ranges = {"scale": (0.5, 1.5), "bias": (-0.2, 0.2), "mean": (-0.2, 0.2), "var": (0.5, 2.0)}

    def draw(path, leaf):
        if path[-1].key == "kernel":  # He-normal, so the logits stay O(1) through 50 layers
            return rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
        return rng.uniform(*ranges[path[-1].key], leaf.shape).astype(np.float32)

    variables = jax.tree_util.tree_map_with_path(draw, shapes)
    src = tmp_path / "linen_resnet50.msgpack"
    src.write_bytes(serialization.msgpack_serialize(variables))  # Flax's own format for a Linen model
    variables = serialization.msgpack_restore(src.read_bytes())
    expected = np.asarray(net.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False))

    spec = presets.get("resnet50")
    state = bench.native_to_canonical(variables)
    canonical = save_state(state, tmp_path / "resnet50.safetensors", spec)  # checked against the spec
    state = load_state(canonical, spec)
    ours = flax_face.build(spec, device="cpu")
    flax_face.from_canonical(ours, state)
    limit = tol(expected)
    assert np.abs(flax_face.forward(ours, x) - expected).max() <= limit, "our flax resnet50 vs LinenResNet50"
    assert np.abs(reference.forward(spec, state, x) - expected).max() <= limit, "NumPy reference vs LinenResNet50"
    even = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    theirs = np.asarray(net.apply(variables, jnp.asarray(even.transpose(0, 2, 3, 1)), train=False))
    assert np.abs(reference.forward(spec, state, even) - theirs).max() > 100 * limit  # the 'SAME' padding trap


# -- our native files: .msgpack of the NNX state ----------------------------------------------------------


@pytest.mark.parametrize("name", ["gluon_resnet18_v2", "d2l_resnext18"])
def test_convert_from_and_to_msgpack(flax_face, name, tmp_path):
    """Import: our model's state saved with Flax's API -> convert -> canonical; a fresh model and the
    reference give the source's logits. Export: canonical -> convert -> .msgpack; Flax's API loads it."""
    from flax import nnx, serialization

    spec = tiny(name)
    source = model(flax_face, spec, seed=4)
    src = tmp_path / "ours.msgpack"
    src.write_bytes(serialization.msgpack_serialize(nnx.to_pure_dict(nnx.state(source))))
    dst = tmp_path / "ours.safetensors"
    convert(src, dst, arch=spec)
    state = load_state(dst, spec)
    x, _ = batch(spec, n=2, size=ODD_SIZE[1:], seed=1)
    expected = flax_face.forward(source, x)
    fresh = flax_face.build(spec, device="cpu", seed=7)
    flax_face.from_canonical(fresh, state)
    limit = tol(expected)
    assert np.abs(flax_face.forward(fresh, x) - expected).max() <= limit
    assert np.abs(reference.forward(spec, state, x) - expected).max() <= limit

    state = init_weights(spec, seed=2, perturb_bn=True)
    out = tmp_path / "export.msgpack"
    convert(save_state(state, tmp_path / "w.safetensors", spec), out, arch=spec)
    loaded = _flax_load(out, spec, flax_face)
    ref = reference.forward(spec, state, x)
    assert np.abs(flax_face.forward(loaded, x) - ref).max() <= tol(ref)


def _tree(spec, flax_face):
    from flax import nnx

    return nnx.to_pure_dict(nnx.state(model(flax_face, spec)))


def test_refuse_mismatched_file(flax_face, tmp_path):
    """Missing, unexpected and mis-shaped tensors are all listed, in canonical names, and nothing is returned."""
    from flax import serialization

    spec = tiny("resnet20")
    tree = _tree(spec, flax_face)
    del tree["fc"]["bias"]
    tree["extra"] = {"kernel": np.zeros(3, np.float32)}
    tree["conv1"]["kernel"] = np.zeros((5, 5, 3, 8), np.float32)
    path = tmp_path / "bad.msgpack"
    path.write_bytes(serialization.msgpack_serialize(tree))
    with pytest.raises(WeightsError) as info:
        flax_face.read_file(path, spec, "flax")
    text = str(info.value)
    for word in ("nothing loaded", "missing 1: fc.bias", "unexpected 1: extra/kernel", "mis-shaped 1: conv1.weight"):
        assert word in text, text
    with pytest.raises(UserError, match="nothing loaded"):  # convert refuses it whole too, and writes nothing
        convert(path, tmp_path / "out.safetensors", arch=spec)
    assert not (tmp_path / "out.safetensors").exists()


def test_refuse_foreign_msgpack(flax_face, tmp_path):
    """msgpack that holds no state (a list) or a non-array leaf: one line each naming the file, WeightsError.
    (Truncated, empty, text and missing files, and foreign formats: test_contract.py.)"""
    from flax import serialization

    spec = tiny("resnet20")
    tree = _tree(spec, flax_face)
    tree["fc"]["bias"] = "text"
    cases = {"list.msgpack": serialization.msgpack_serialize([1, 2]),
             "str.msgpack": serialization.msgpack_serialize(tree)}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(WeightsError) as info:
            flax_face.read_file(tmp_path / name, spec, "flax")
        text = str(info.value)
        assert "\n" not in text and name in text, text


# -- the training step: NNX's modes and dtypes ---------------------------------------------------------


def _norms(net):
    from flax import nnx

    return [m for _, m in nnx.iter_modules(net) if isinstance(m, nnx.BatchNorm)]


def test_step_leaves_the_model_in_inference_mode(flax_face):
    """The step trains a view of the model: its BatchNorms keep use_running_average (inference mode)."""
    spec = tiny("gluon_resnet18_v2")
    net = model(flax_face, spec, seed=5)
    flax_face.make_train_step(net, lr=0.05)(*batch(spec))
    assert all(bn.use_running_average for bn in _norms(net))


def test_mixed_precision_is_the_steps_view(flax_face):
    """bf16 layers are the step's view, not the model's; fp16 has a loss scale that stays at torch's
    GradScaler default while the gradients are finite. (That the losses follow fp32: test_contract.py.)"""
    spec = tiny("resnet20")
    x, labels = batch(spec, n=4, size=(8, 8), seed=9)
    net = model(flax_face, spec, seed=9)
    flax_face.make_train_step(net, precision="bf16")(x, labels)
    assert _norms(net) and all(bn.dtype is None for bn in _norms(net))
    step16 = flax_face.make_train_step(model(flax_face, spec, seed=9), precision="fp16")
    step16(x, labels)
    assert float(step16.scaler.scale[...]) == 2.0**16  # finite gradients: the scale stays


# -- the bench ---------------------------------------------------------------------------------------


def test_bench_donates_and_compiles(flax_face):
    """Only the training step donates its buffers (and the model gets them back); compile=True is said."""
    spec = tiny("d2l_resnet18")
    net = model(flax_face, spec)
    before = flax_face.to_canonical(net)
    x, _ = batch(spec, n=2, size=(32, 32))
    train = flax_face.benchmark(net, x, mode="train", repeats=1, warmup=1)
    assert "donated" in train["practice"] and "compile=True" not in train["practice"]
    after = flax_face.to_canonical(net)  # donated buffers restored
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    infer = flax_face.benchmark(net, x, mode="infer", precision="bf16", repeats=1, warmup=1, compile=True)
    assert "donated" not in infer["practice"]
    assert "bf16" in infer["practice"] and "compile=True" in infer["practice"]


def test_bench_native_contract(flax_face, monkeypatch):
    """benchmark_native's plumbing, on a narrow two-block LinenResNet50 (the full one is checked above)."""
    from functools import partial

    bench = flax_face.module("bench")
    assert presets.get(bench.NATIVE_PRESET).name == "resnet50" and "Flax" in bench.NATIVE
    monkeypatch.setattr(bench, "LinenResNet50", partial(bench.LinenResNet50, depths=(1, 1), num_filters=4))
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    for mode in ("infer", "train"):
        result = flax_face.benchmark_native(x, mode=mode, repeats=2, warmup=1, compile=mode == "train",
                                            num_classes=10)
        check_bench(result, mode, 2)
        assert "jax.jit" in result["practice"] and ("donated" in result["practice"]) == (mode == "train")
        assert result["warmup"] == 1 and ("compile=True" in result["practice"]) == (mode == "train")
        assert result["device"] == "cpu:0"
    with pytest.raises(ValueError, match="mode"):
        flax_face.benchmark_native(x, mode="eval")


# -- devices -----------------------------------------------------------------------------------------


def test_device_spelling(flax_face):
    """JAX's spelling ('cpu:0', 'gpu:N'): every device is one of those."""
    found = flax_face.devices()
    assert found[0] == "cpu:0" and all(d.startswith(("cpu:", "gpu:")) for d in found)
    assert flax_face.resolve_device("cpu") == flax_face.resolve_device("cpu:0") == "cpu:0"
