"""Tests only the flax backend has: .msgpack files, the Linen ResNet-50, the SGD step, the bench, devices.

Each test skips unless the backend under test is flax, so the file is
collected everywhere but runs (and must pass) only in the flax environment.
The tests drive the backend through its face (fixture ``flax_face``) and reach
a part's own names with ``flax_face.module("bench")`` and the like.
JAX and Flax are imported inside the tests, never at module level.

Flax ships no ResNet zoo; its own ResNet-50 is the ImageNet example's
(Linen), which bench.py writes out as LinenResNet50. The import test checks
that architecture against ours and the NumPy reference.
"""

from __future__ import annotations

import numpy as np
import pytest

from resnet_multi.arch import presets
from resnet_multi.arch.plan import plan
from resnet_multi.errors import UserError
from resnet_multi.numerics import reference
from resnet_multi.run.convert import convert
from resnet_multi.weights.canonical import WeightsError, init_weights, load_state, save_state

from .native_helpers import batch as _batch
from .native_helpers import cross_entropy as _cross_entropy
from .native_helpers import tiny as _tiny
from .native_helpers import tol as _tol

ODD_SIZE = (3, 13, 17)
RTOL = 1e-4  # logits within RTOL * max(1, max |logits|), as the parity suite


@pytest.fixture
def flax_face(backend, request):
    """resnet_multi.backend("flax"), its framework imported; every other backend skips before touching it."""
    if backend != "flax":
        pytest.skip("flax-only test")
    return request.getfixturevalue("face")


def _model(flax_face, spec, seed=0):
    return flax_face.build(spec, device="cpu", seed=seed, state=init_weights(spec, seed, perturb_bn=True))


def _flax_load(path, spec, flax_face):
    """Flax's own API: msgpack_restore, then nnx.replace_by_pure_dict into a fresh model's state."""
    import jax
    import jax.numpy as jnp
    from flax import nnx, serialization

    model = flax_face.build(spec, device="cpu", seed=99)
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, serialization.msgpack_restore(path.read_bytes())))
    nnx.update(model, state)
    return model


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
    tol = _tol(expected)
    assert np.abs(flax_face.forward(ours, x) - expected).max() <= tol, "our flax resnet50 vs LinenResNet50"
    assert np.abs(reference.forward(spec, state, x) - expected).max() <= tol, "NumPy reference vs LinenResNet50"
    even = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    theirs = np.asarray(net.apply(variables, jnp.asarray(even.transpose(0, 2, 3, 1)), train=False))
    assert np.abs(reference.forward(spec, state, even) - theirs).max() > 100 * tol  # the 'SAME' padding trap


# -- our native files: .msgpack of the NNX state ----------------------------------------------------------


@pytest.mark.parametrize("name", ["gluon_resnet18_v2", "d2l_resnext18"])
def test_convert_from_and_to_msgpack(flax_face, name, tmp_path):
    """Import: our model's state saved with Flax's API -> convert -> canonical; a fresh model and the
    reference give the source's logits. Export: canonical -> convert -> .msgpack; Flax's API loads it."""
    from flax import nnx, serialization

    spec = _tiny(name)
    source = _model(flax_face, spec, seed=4)
    src = tmp_path / "ours.msgpack"
    src.write_bytes(serialization.msgpack_serialize(nnx.to_pure_dict(nnx.state(source))))
    dst = tmp_path / "ours.safetensors"
    convert(src, dst, arch=spec)
    state = load_state(dst, spec)
    x, _ = _batch(spec, n=2, size=ODD_SIZE[1:], seed=1)
    expected = flax_face.forward(source, x)
    fresh = flax_face.build(spec, device="cpu", seed=7)
    flax_face.from_canonical(fresh, state)
    tol = _tol(expected)
    assert np.abs(flax_face.forward(fresh, x) - expected).max() <= tol
    assert np.abs(reference.forward(spec, state, x) - expected).max() <= tol

    state = init_weights(spec, seed=2, perturb_bn=True)
    out = tmp_path / "export.msgpack"
    convert(save_state(state, tmp_path / "w.safetensors", spec), out, arch=spec)
    loaded = _flax_load(out, spec, flax_face)
    ref = reference.forward(spec, state, x)
    assert np.abs(flax_face.forward(loaded, x) - ref).max() <= _tol(ref)


@pytest.mark.parametrize("name", ["resnet20", "gluon_resnet18_v2", "d2l_resnext18"])
def test_native_round_trip(flax_face, name, tmp_path):
    """write_file -> read_file is exact, and leaves no temporary file behind."""
    spec = _tiny(name)
    state = init_weights(spec, seed=4, perturb_bn=True)
    path = tmp_path / "w.msgpack"
    flax_face.write_file(state, path, spec, "flax")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.msgpack"]
    back = flax_face.read_file(path, spec, "flax")
    assert set(back) == set(state)
    for k in state:
        np.testing.assert_array_equal(back[k], state[k], err_msg=k)


def _tree(spec, flax_face):
    from flax import nnx

    return nnx.to_pure_dict(nnx.state(_model(flax_face, spec)))


def test_refuse_mismatched_file(flax_face, tmp_path):
    """Missing, unexpected and mis-shaped tensors are all listed, in canonical names, and nothing is returned."""
    from flax import serialization

    spec = _tiny("resnet20")
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


def test_refuse_unreadable_files(flax_face, tmp_path):
    """Truncated, empty, foreign or non-array files: one line each, WeightsError."""
    from flax import serialization

    spec = _tiny("resnet20")
    good = tmp_path / "good.msgpack"
    flax_face.write_file(init_weights(spec), good, spec, "flax")
    data = good.read_bytes()
    tree = _tree(spec, flax_face)
    tree["fc"]["bias"] = "text"
    cases = {"truncated.msgpack": data[: len(data) // 2], "empty.msgpack": b"",
             "text.msgpack": b"not msgpack\n" * 4, "list.msgpack": serialization.msgpack_serialize([1, 2]),
             "str.msgpack": serialization.msgpack_serialize(tree)}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
    for name in [*cases, "missing.msgpack"]:
        with pytest.raises(WeightsError) as info:
            flax_face.read_file(tmp_path / name, spec, "flax")
        text = str(info.value)
        assert "\n" not in text and name in text, text
    with pytest.raises(WeightsError, match="format"):
        flax_face.read_file(good, spec, "keras")


def test_write_refuses_bad_state(flax_face, tmp_path):
    spec = _tiny("resnet20")
    state = init_weights(spec)
    state["fc.weight"] = state["fc.weight"][:, :3]
    with pytest.raises(WeightsError, match="fc.weight"):
        flax_face.write_file(state, tmp_path / "w.msgpack", spec, "flax")
    assert list(tmp_path.iterdir()) == []


# -- the training step ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet20", "gluon_resnet18_v2", "d2l_resnet18"])
def test_first_step_matches_reference(flax_face, name):
    """Loss before the update = the reference's train-mode cross-entropy; running stats as the spec says."""
    spec = _tiny(name)
    model = _model(flax_face, spec, seed=5)
    state = flax_face.to_canonical(model)
    x, labels = _batch(spec)
    acts, ref_state = reference.run(spec, state, x, train=True)
    step = flax_face.make_train_step(model, lr=0.05)
    loss = step(x, labels)
    expected = _cross_entropy(acts["fc"], labels)
    assert abs(loss - expected) <= 1e-5 * abs(expected), (loss, expected)
    after = flax_face.to_canonical(model)
    for k in state:
        if k.endswith(("running_mean", "running_var")):
            np.testing.assert_allclose(after[k], ref_state[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert all(bn.use_running_average for bn in _norms(model))  # the model itself stays in inference mode


def _norms(model):
    from flax import nnx

    return [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]


def _fd_grad(spec, state, x, labels, name, index, eps=1e-6) -> float:
    """d loss / d state[name][index] by central differences on the float64 NumPy reference, train-mode BN."""
    values = []
    for delta in (eps, -eps):
        probe = {k: np.asarray(v, np.float64) for k, v in state.items()}
        probe[name][index] += delta
        values.append(_cross_entropy(reference.run(spec, probe, x, train=True)[0]["fc"], labels))
    return (values[0] - values[1]) / (2 * eps)


def test_sgd_update_convention(flax_face):
    """Two SGD steps with momentum and weight decay against float64 finite-difference gradients:
    b1 = g1 + wd * w0, w1 = w0 - lr * b1; b2 = m * b1 + g2 + wd * w1 (torch.optim.SGD)."""
    spec = _tiny("resnet20")
    model = _model(flax_face, spec, seed=6)
    x, labels = _batch(spec, n=4, size=(8, 8), seed=6)
    lr, m, wd = 0.1, 0.9, 0.01
    probes = [("conv1.weight", (1, 0, 1, 2)), ("layer1.0.bn1.weight", (3,)),
              ("layer2.0.downsample.0.weight", (5, 2, 0, 0)), ("fc.bias", (2,))]
    step = flax_face.make_train_step(model, lr=lr, momentum=m, weight_decay=wd)
    buffers = []
    for _ in range(2):
        before = flax_face.to_canonical(model)
        grads = {n: _fd_grad(spec, before, x, labels, n, i) for n, i in probes}
        step(x, labels)
        state = flax_face.optimizer_state(step)
        after = flax_face.to_canonical(model)
        for n, i in probes:
            buf = float(state[f"momentum.{n}"][i])
            prev = m * buffers[-1][n] if buffers else 0.0
            want = prev + grads[n] + wd * float(before[n][i])
            assert buf == pytest.approx(want, rel=1e-4, abs=1e-7), (n, buf, want)
            assert float(after[n][i]) - float(before[n][i]) == pytest.approx(-lr * buf, rel=1e-3, abs=1e-7), n
        buffers.append({n: float(state[f"momentum.{n}"][i]) for n, i in probes})


def test_loss_decreases(flax_face):
    spec = _tiny("resnet20")
    model = _model(flax_face, spec, seed=7)
    x, labels = _batch(spec, n=4, size=(8, 8), seed=7)  # the shapes and optimizer of the test above: no new compile
    step = flax_face.make_train_step(model, lr=0.1, momentum=0.9, weight_decay=0.01)
    losses = [step(x, labels) for _ in range(6)]
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.7 * losses[0], losses


def test_optimizer_state_resumes_identically(flax_face):
    spec = _tiny("d2l_resnext18")
    x, labels = _batch(spec, n=4, size=(12, 12), seed=8)
    hyper = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)
    a = _model(flax_face, spec, seed=8)
    step_a = flax_face.make_train_step(a, **hyper)
    assert flax_face.optimizer_state(step_a) == {}  # no buffers before the first step, as torch
    for _ in range(2):
        step_a(x, labels)
    saved_w, saved_opt = flax_face.to_canonical(a), flax_face.optimizer_state(step_a)
    assert set(saved_opt) == {f"momentum.{k}" for k in plan(spec).param_shapes()}

    b = flax_face.build(spec, device="cpu")
    step_b = flax_face.make_train_step(b, **hyper)  # made before the weights load, as training.py does
    flax_face.from_canonical(b, saved_w)
    flax_face.load_optimizer_state(step_b, saved_opt)
    for _ in range(2):
        assert step_a(x, labels) == step_b(x, labels)
    wa, wb = flax_face.to_canonical(a), flax_face.to_canonical(b)
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    oa, ob = flax_face.optimizer_state(step_a), flax_face.optimizer_state(step_b)
    for k in oa:
        np.testing.assert_array_equal(oa[k], ob[k], err_msg=k)

    bad = dict(saved_opt)
    bad.pop("momentum.fc.bias")
    bad["momentum.conv1.weight"] = np.zeros(3, np.float32)
    with pytest.raises(WeightsError, match="missing 1: momentum.fc.bias.*mis-shaped 1: momentum.conv1.weight"):
        flax_face.load_optimizer_state(step_b, bad)
    flax_face.load_optimizer_state(step_b, {})  # a fresh optimizer
    assert flax_face.optimizer_state(step_b) == {}


def test_mixed_precision_step(flax_face):
    spec = _tiny("resnet20")
    x, labels = _batch(spec, n=4, size=(8, 8), seed=9)
    model = _model(flax_face, spec, seed=9)
    fp32 = _cross_entropy(reference.run(spec, flax_face.to_canonical(model), x, train=True)[0]["fc"], labels)
    bf16 = flax_face.make_train_step(model, precision="bf16")(x, labels)
    assert bf16 == pytest.approx(fp32, rel=3e-2)
    assert all(v.dtype == np.float32 for v in flax_face.to_canonical(model).values())  # fp32 master weights
    assert all(bn.dtype is None for bn in _norms(model))  # the bf16 layers were the step's view, not the model
    step16 = flax_face.make_train_step(_model(flax_face, spec, seed=9), precision="fp16")
    assert step16(x, labels) == pytest.approx(fp32, rel=3e-2)
    assert float(step16.scaler.scale[...]) == 2.0**16  # finite gradients: the scale stays
    with pytest.raises(ValueError, match="precision"):
        flax_face.make_train_step(_model(flax_face, spec), precision="fp8")


# -- the bench ---------------------------------------------------------------------------------------

TIMING_KEYS = {"median_s", "min_s", "max_s", "stdev_s", "images_per_s", "repeats", "warmup", "batch"}


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_bench_contract(flax_face, mode):
    spec = _tiny("d2l_resnet18")
    model = _model(flax_face, spec)
    before = flax_face.to_canonical(model)
    x, _ = _batch(spec, n=2, size=(32, 32))
    result = flax_face.benchmark(model, x, mode=mode, repeats=2, warmup=1)
    assert TIMING_KEYS | {"mode", "precision", "practice"} <= set(result)
    assert result["mode"] == mode and result["precision"] == "fp32" and result["batch"] == 2
    assert "jax.jit" in result["practice"] and ("donated" in result["practice"]) == (mode == "train")
    assert "peak_memory_mb" not in result  # CPU: JAX reports no memory statistics
    assert result["median_s"] > 0
    after = flax_face.to_canonical(model)  # the model is left as it was found, donated buffers restored
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    if mode == "infer":
        bf16 = flax_face.benchmark(model, x, mode=mode, precision="bf16", repeats=1, warmup=1, compile=True)
        assert "bf16" in bf16["practice"] and "compile=True" in bf16["practice"]
    with pytest.raises(ValueError):
        flax_face.benchmark(model, x, mode="eval")


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
        assert TIMING_KEYS | {"mode", "precision", "practice"} <= set(result)
        assert result["mode"] == mode and result["batch"] == 2 and "jax.jit" in result["practice"]
        assert ("donated" in result["practice"]) == (mode == "train") and result["median_s"] > 0
        assert result["warmup"] == 1 and ("compile=True" in result["practice"]) == (mode == "train")
        assert result["device"] == "cpu:0"
    with pytest.raises(ValueError, match="mode"):
        flax_face.benchmark_native(x, mode="eval")


# -- devices -----------------------------------------------------------------------------------------


def test_devices(flax_face):
    """JAX's spelling ('cpu:0', 'gpu:N'); every common form accepted, 'cpu:N' only for a host device that is there."""
    from resnet_multi.errors import DeviceUnavailable

    found = flax_face.devices()
    assert found[0] == "cpu:0" and all(d.startswith(("cpu:", "gpu:")) for d in found)
    assert flax_face.resolve_device("cpu") == flax_face.resolve_device("cpu:0") == "cpu:0"
    gpus = [d for d in found if d.startswith("gpu:")]
    assert flax_face.resolve_device("auto") == (gpus[0] if gpus else "cpu:0")
    for form in ("gpu", "cuda", "gpu:0", "cuda:0"):
        if gpus:
            assert flax_face.resolve_device(form) == gpus[0]
        else:
            with pytest.raises(DeviceUnavailable, match="no GPU"):
                flax_face.resolve_device(form)
    cpus = [d for d in found if d.startswith("cpu:")]
    with pytest.raises(DeviceUnavailable, match="CPU device"):
        flax_face.resolve_device(f"cpu:{len(cpus)}")
    for bad in ("tpu", "gpu:x", "auto:0"):
        with pytest.raises(DeviceUnavailable, match="unknown device"):
            flax_face.resolve_device(bad)
