"""Tests only the tensorflow backend has: keras.applications' zoo, Keras weights files, the SGD step, the bench.

Each test skips unless the backend under test is tensorflow (fixture ``tf_face``),
so the file is collected everywhere but runs (and must pass) only in the
tensorflow environment. TensorFlow and Keras are imported inside the tests (and
fixtures), never at module level. The tests go through the backend's face
(resnet_multi.backend("tensorflow")), and through its modules for what only
TensorFlow has (face.module("model"), ...).
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
from resnet_multi.weights.zoo_names import canonical_from_keras, keras_applications_layer

from .native_helpers import batch as _batch
from .native_helpers import cross_entropy as _cross_entropy
from .native_helpers import tiny as _tiny
from .native_helpers import tol as _tol

ZOO = {"resnet50_v1": "ResNet50", "resnet50_v2": "ResNet50V2"}  # our preset -> keras.applications builder
ODD_SIZE = (3, 35, 33)  # keras.applications' top needs 32x32 at least; odd sides exercise the padding
RTOL = 1e-4  # logits within RTOL * max(1, max |logits|), as the parity suite


@pytest.fixture(scope="module")
def tf_face(backend, request):
    """The tensorflow face; every other backend skips (before its face is asked for)."""
    if backend != "tensorflow":
        pytest.skip("tensorflow-only test")
    return request.getfixturevalue("face")


def _model(face, spec, seed=0):
    return face.build(spec, device="cpu", state=init_weights(spec, seed, perturb_bn=True))


def _keras_logits(model, x) -> np.ndarray:
    """A Keras model's own forward pass (inference) on an NCHW numpy batch."""
    return np.asarray(model(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), training=False))


# -- devices ---------------------------------------------------------------------------------------


def test_devices_and_device_forms(tf_face):
    """Every accepted device form -> TensorFlow's spelling; devices() lists what TensorFlow sees, so spelt."""
    from resnet_multi.errors import DeviceUnavailable

    seen = tf_face.devices()
    gpus = [d for d in seen if d.startswith("GPU:")]
    assert seen[0] == "CPU:0" and set(seen) == {"CPU:0", *gpus}, seen
    for form in ("cpu", "cpu:0", "CPU:0", "/device:CPU:0"):
        assert tf_face.resolve_device(form) == "CPU:0", form
    assert tf_face.resolve_device("auto") == (gpus[0] if gpus else "CPU:0")
    if gpus:
        for form in ("gpu", "gpu:0", "cuda", "cuda:0", "GPU:0"):
            assert tf_face.resolve_device(form) == "GPU:0", form
        assert tf_face.resolve_device(f"cuda:{len(gpus) - 1}") == gpus[-1]
    else:
        for form in ("gpu", "gpu:0", "cuda:1"):
            with pytest.raises(DeviceUnavailable, match="sees no GPU"):
                tf_face.resolve_device(form)
    for form in ("tpu", "gpu:x", "cpu:1", f"gpu:{len(gpus)}"):
        with pytest.raises(DeviceUnavailable):
            tf_face.resolve_device(form)


# -- keras.applications' zoo ------------------------------------------------------------------------


def _application(builder: str, seed: int = 0):
    """keras.applications' own model at ODD_SIZE, random init (no download), random BN, logits out."""
    import keras

    keras.utils.set_random_seed(seed)
    model = getattr(keras.applications, builder)(weights=None, input_shape=ODD_SIZE[1:] + ODD_SIZE[:1],
                                                 classes=1000, classifier_activation=None)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.uniform(-0.2, 0.2, c), rng.uniform(-0.2, 0.2, c),
                               rng.uniform(0.5, 2.0, c)])
        elif isinstance(layer, keras.layers.Conv2D) and layer.use_bias:  # zero-initialised: make them count
            layer.bias.assign(rng.uniform(-0.1, 0.1, layer.bias.shape).astype(np.float32))
    return model


@pytest.fixture(scope="module")
def zoo(tf_face, tmp_path_factory):
    """keras.applications ResNet50 / ResNet50V2, each saved once with Keras's own API, with its logits;
    and our model of each preset, built once (the tests load the weights they need into it)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    folder = tmp_path_factory.mktemp("zoo")
    x = np.random.default_rng(1).standard_normal((2, *ODD_SIZE)).astype(np.float32)
    out = {"x": x}
    for arch, builder in ZOO.items():
        model = _application(builder)
        model.save_weights(folder / f"{arch}.weights.h5")  # Keras 3's own format
        if arch == "resnet50_v1":
            with h5py.File(folder / f"{arch}.h5", "w") as f:  # the legacy format keras.applications downloads
                legacy_h5_format.save_weights_to_hdf5_group(f, model)
        spec = presets.get(arch)
        state = {}  # the source's weights in canonical names, straight from its layers
        for module in plan(spec).modules():
            state.update(canonical_from_keras(module, model.get_layer(keras_applications_layer(module.name))
                                              .get_weights()))
        out[arch] = {"weights.h5": folder / f"{arch}.weights.h5", "h5": folder / f"{arch}.h5", "theirs": model,
                     "logits": _keras_logits(model, x), "state": state,
                     "ours": tf_face.build(spec, device="cpu")}
    return out


@pytest.mark.parametrize("arch", list(ZOO))
def test_keras_applications_import(tf_face, zoo, arch, tmp_path):
    """keras.applications .weights.h5 -> canonical (convert) -> our model and the NumPy reference give its logits."""
    dst = tmp_path / f"{arch}.safetensors"
    convert(zoo[arch]["weights.h5"], dst, arch=arch)  # format guessed: a .h5 of a keras.applications preset

    spec = presets.get(arch)
    state = load_state(dst, spec)
    for k, v in zoo[arch]["state"].items():
        np.testing.assert_array_equal(state[k], v, err_msg=k)
    x, expected = zoo["x"], zoo[arch]["logits"]
    ours = zoo[arch]["ours"]
    tf_face.from_canonical(ours, state)
    got = tf_face.forward(ours, x)
    ref = reference.run(spec, state, x)[0]["fc"]
    tol = _tol(expected)
    assert np.abs(got - expected).max() <= tol, f"our Keras model vs keras.applications {ZOO[arch]}"
    assert np.abs(ref - expected).max() <= tol, f"NumPy reference vs keras.applications {ZOO[arch]}"


def test_keras_applications_legacy_h5(tf_face, zoo):
    """The legacy .h5 that keras.applications downloads gives exactly the weights of the Keras 3 file."""
    spec = presets.get("resnet50_v1")
    legacy = tf_face.read_file(zoo["resnet50_v1"]["h5"], spec, "keras-applications")
    modern = zoo["resnet50_v1"]["state"]
    assert set(legacy) == set(modern)
    for k in modern:
        np.testing.assert_array_equal(legacy[k], modern[k], err_msg=k)


@pytest.mark.parametrize("arch", ["resnet50_v1"])  # V2's names are the inverse of the import's map, tested there
def test_keras_applications_export(tf_face, zoo, arch, tmp_path):
    """canonical -> .weights.h5 (convert, i.e. write_file): keras.applications loads it and agrees with us."""
    import keras

    spec = presets.get(arch)
    state = init_weights(spec, seed=2, perturb_bn=True)
    canonical = save_state(state, tmp_path / "w.safetensors", spec)
    out = tmp_path / "w.weights.h5"
    convert(canonical, out, arch=arch)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors", "w.weights.h5"]

    theirs = getattr(keras.applications, ZOO[arch])(weights=None, input_shape=ODD_SIZE[1:] + ODD_SIZE[:1],
                                                    classifier_activation=None)
    theirs.load_weights(out)
    ours = zoo[arch]["ours"]
    tf_face.from_canonical(ours, state)
    x = np.random.default_rng(3).standard_normal((2, *ODD_SIZE)).astype(np.float32)
    expected = _keras_logits(theirs, x)
    assert np.abs(tf_face.forward(ours, x) - expected).max() <= _tol(expected)


def test_keras_applications_refuses_another_depth(tf_face, zoo):
    """A ResNet50 file read as ResNet101: the missing blocks are listed, in canonical names."""
    for kind in ("weights.h5", "h5"):
        with pytest.raises(WeightsError, match=r"nothing loaded: missing \d+: layer3\.6\.conv1\.weight"):
            tf_face.read_file(zoo["resnet50_v1"][kind], presets.get("resnet101_v1"), "keras-applications")
    with pytest.raises(WeightsError, match="keras.applications has no"):
        tf_face.read_file(zoo["resnet50_v1"]["weights.h5"], presets.get("resnet18"), "keras-applications")


# -- our own Keras files -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet20", "gluon_resnet18_v2", "d2l_resnext18"])
def test_native_round_trip(tf_face, name, tmp_path):
    """write_file -> read_file is exact; Keras's own load_weights reads the file into our model."""
    spec = _tiny(name)
    state = init_weights(spec, seed=4, perturb_bn=True)
    path = tmp_path / "w.weights.h5"
    tf_face.write_file(state, path, spec, "keras")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.weights.h5"]  # no temporary file left behind
    back = tf_face.read_file(path, spec, "keras")
    assert set(back) == set(state)
    for k in state:
        np.testing.assert_array_equal(back[k], state[k], err_msg=k)
    model = tf_face.build(spec, device="cpu", seed=9)
    model.load_weights(path)  # Keras's own API
    x, _ = _batch(spec)
    expected = reference.run(spec, state, x)[0]["fc"]
    assert np.abs(tf_face.forward(model, x) - expected).max() <= _tol(expected)
    assert np.abs(_keras_logits(model, x) - expected).max() <= _tol(expected)


def _edit(src, dst, edit):
    import shutil

    import h5py

    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        edit(f)
    return dst


def _vars(f, layer: str):
    """The vars group of one of our layers in a Keras 3 .weights.h5 (its name is an attribute)."""
    found = []
    f.visititems(lambda key, obj: found.append(obj) if key.endswith("/vars") and obj.attrs.get("name") == layer
                 else None)
    return found[0]


def test_refuse_mismatched_file(tf_face, tmp_path):
    """Missing, unexpected and mis-shaped tensors are all listed, in canonical names, and nothing is returned."""
    spec = _tiny("resnet20")
    good = tmp_path / "good.weights.h5"
    tf_face.write_file(init_weights(spec), good, spec, "keras")

    def damage(f):
        del _vars(f, "fc")["1"]  # fc.bias
        _vars(f, "fc")["2"] = np.zeros(3, np.float32)
        conv = _vars(f, "conv1")
        del conv["0"]
        conv["0"] = np.zeros((5, 5, 3, 8), np.float32)  # Keras layout (kH, kW, I, O)

    bad = _edit(good, tmp_path / "bad.weights.h5", damage)
    with pytest.raises(WeightsError) as info:
        tf_face.read_file(bad, spec, "keras")
    text = str(info.value)
    for word in ("missing 1: fc.bias", "unexpected 1: fc/vars/2",
                 "mis-shaped 1: conv1.weight (8, 3, 5, 5) (expected (8, 3, 3, 3))", "nothing loaded"):
        assert word in text, text
    # convert refuses it whole too, and writes nothing.
    with pytest.raises(UserError, match="nothing loaded"):
        convert(bad, tmp_path / "out.safetensors", arch=spec)
    assert not (tmp_path / "out.safetensors").exists()
    # A layer the spec does not have.
    def add_layer(f):
        group = f.create_group("layers/dense_9/vars")
        group.attrs["name"] = "head2"
        group["0"] = np.zeros(2, np.float32)

    extra = _edit(good, tmp_path / "extra.weights.h5", add_layer)
    with pytest.raises(WeightsError, match="unexpected 1: head2/vars/0"):
        tf_face.read_file(extra, spec, "keras")


def test_refuse_unreadable_files(tf_face, tmp_path):
    """Truncated, empty, foreign or missing files: one line each, WeightsError."""
    spec = _tiny("resnet20")
    good = tmp_path / "good.weights.h5"
    tf_face.write_file(init_weights(spec), good, spec, "keras")
    data = good.read_bytes()
    cases = {"truncated.weights.h5": data[: len(data) // 2], "empty.weights.h5": b"",
             "text.weights.h5": b"not a weights file\n" * 4}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
    for name in [*cases, "missing.weights.h5"]:
        for fmt in ("keras", "keras-applications"):
            arch = spec if fmt == "keras" else presets.get("resnet50_v1")
            with pytest.raises(WeightsError) as info:
                tf_face.read_file(tmp_path / name, arch, fmt)
            text = str(info.value)
            assert "\n" not in text and name in text, text
    with pytest.raises(WeightsError, match="torch"):
        tf_face.read_file(good, spec, "torch")


def test_write_refuses_bad_state(tf_face, tmp_path):
    spec = _tiny("resnet20")
    state = init_weights(spec)
    with pytest.raises(WeightsError, match=r"\.weights\.h5"):
        tf_face.write_file(state, tmp_path / "w.h5", spec, "keras")
    state["fc.weight"] = state["fc.weight"][:, :3]
    with pytest.raises(WeightsError, match="fc.weight"):
        tf_face.write_file(state, tmp_path / "w.weights.h5", spec, "keras")
    assert list(tmp_path.iterdir()) == []


# -- the training step ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet20", "gluon_resnet18_v2", "d2l_resnet18", "resnet50_v1"])
def test_first_step_matches_reference(tf_face, name):
    """Loss before the update = the reference's train-mode cross-entropy; moving stats as the spec says."""
    spec = _tiny(name)
    model = _model(tf_face, spec, seed=5)
    state = tf_face.to_canonical(model)
    x, labels = _batch(spec)
    acts, ref_state = reference.run(spec, state, x, train=True)
    step = tf_face.make_train_step(model, lr=0.05)
    loss = step(x, labels)
    expected = _cross_entropy(acts["fc"], labels)
    assert abs(loss - expected) <= 1e-5 * abs(expected), (loss, expected)
    after = tf_face.to_canonical(model)
    for k in state:
        if k.endswith(("running_mean", "running_var")):
            np.testing.assert_allclose(after[k], ref_state[k], rtol=1e-5, atol=1e-6, err_msg=k)


def _fd_grad(spec, state, x, labels, name, index, eps=1e-6) -> float:
    """d loss / d param[index] by central differences on the float64 NumPy reference, train-mode BN."""
    values = []
    for delta in (eps, -eps):
        nudged = {k: np.asarray(v, np.float64) for k, v in state.items()}
        nudged[name] = nudged[name].copy()
        nudged[name][index] += delta
        values.append(_cross_entropy(reference.run(spec, nudged, x, train=True)[0]["fc"], labels))
    return (values[0] - values[1]) / (2 * eps)


def test_sgd_update_convention(tf_face):
    """Two SGD steps with momentum and weight decay against float64 finite-difference gradients:
    b1 = g1 + wd * w0, w1 = w0 - lr * b1; b2 = m * b1 + g2 + wd * w1 (torch.optim.SGD)."""
    spec = _tiny("resnet20")
    model = _model(tf_face, spec, seed=6)
    x, labels = _batch(spec, n=4, size=(6, 6), seed=6)
    lr, m, wd = 0.1, 0.9, 0.01
    probes = [("conv1.weight", (1, 0, 1, 2)), ("layer1.0.bn1.weight", (3,)),
              ("layer2.0.downsample.0.weight", (5, 2, 0, 0)), ("fc.bias", (2,))]
    step = tf_face.make_train_step(model, lr=lr, momentum=m, weight_decay=wd)
    buffers = []
    for _ in range(2):
        state = tf_face.to_canonical(model)
        w = {n: float(state[n][i]) for n, i in probes}
        grads = {n: _fd_grad(spec, state, x, labels, n, i) for n, i in probes}
        step(x, labels)
        opt = tf_face.optimizer_state(step)
        after = tf_face.to_canonical(model)
        for n, i in probes:
            buf = float(opt[f"momentum.{n}"][i])
            prev = m * buffers[-1][n] if buffers else 0.0
            want = prev + grads[n] + wd * w[n]
            assert buf == pytest.approx(want, rel=1e-4, abs=1e-7), (n, buf, want)
            assert float(after[n][i]) - w[n] == pytest.approx(-lr * buf, rel=1e-3, abs=1e-7), n
        buffers.append({n: float(opt[f"momentum.{n}"][i]) for n, i in probes})


def test_loss_decreases(tf_face):
    spec = _tiny("resnet20")
    model = _model(tf_face, spec, seed=7)
    x, labels = _batch(spec, n=8, size=(8, 8), seed=7)
    step = tf_face.make_train_step(model, lr=0.05, momentum=0.9)
    losses = [step(x, labels) for _ in range(6)]
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.7 * losses[0], losses


def test_optimizer_state_resumes_identically(tf_face):
    spec = _tiny("d2l_resnext18")
    x, labels = _batch(spec, n=4, size=(12, 12), seed=8)
    hyper = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)
    a = _model(tf_face, spec, seed=8)
    step_a = tf_face.make_train_step(a, **hyper)
    assert tf_face.optimizer_state(step_a) == {}  # no buffers before the first step, as torch
    for _ in range(2):
        step_a(x, labels)
    saved_w, saved_opt = tf_face.to_canonical(a), tf_face.optimizer_state(step_a)
    from resnet_multi.arch.plan import plan

    assert set(saved_opt) == {f"momentum.{k}" for k in plan(spec).param_shapes()}
    for k, v in saved_opt.items():  # canonical (PyTorch) layout
        assert v.shape == saved_w[k[len("momentum."):]].shape, k

    b = tf_face.build(spec, device="cpu")
    tf_face.from_canonical(b, saved_w)
    step_b = tf_face.make_train_step(b, **hyper)
    tf_face.load_optimizer_state(step_b, saved_opt)
    for _ in range(2):
        assert step_a(x, labels) == step_b(x, labels)
    wa, wb = tf_face.to_canonical(a), tf_face.to_canonical(b)
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)

    bad = dict(saved_opt)
    bad.pop("momentum.fc.bias")
    bad["momentum.conv1.weight"] = np.zeros(3, np.float32)
    with pytest.raises(WeightsError, match="missing 1: momentum.fc.bias.*mis-shaped 1: momentum.conv1.weight"):
        tf_face.load_optimizer_state(step_b, bad)
    tf_face.load_optimizer_state(step_b, {})  # a fresh optimizer
    assert tf_face.optimizer_state(step_b) == {}
    plain = tf_face.make_train_step(b, lr=0.05)
    with pytest.raises(WeightsError, match="momentum 0"):
        tf_face.load_optimizer_state(plain, saved_opt)


def test_mixed_precision_step(tf_face):
    """bf16 and fp16 (Keras mixed policies) follow fp32 closely; the model stays fp32 for forward()."""
    spec = _tiny("d2l_resnet18")  # unbiased running variance: our own BN subclass under mixed precision too
    x, labels = _batch(spec, n=4, size=(16, 16), seed=9)
    fp32 = tf_face.make_train_step(_model(tf_face, spec, seed=9))(x, labels)
    for precision in ("bf16", "fp16"):
        model = _model(tf_face, spec, seed=9)
        loss = tf_face.make_train_step(model, precision=precision)(x, labels)
        assert loss == pytest.approx(fp32, rel=3e-2), precision
        assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
        assert tf_face.forward(model, x).dtype == np.float32
    with pytest.raises(ValueError, match="precision"):
        tf_face.make_train_step(_model(tf_face, spec), precision="fp8")


# -- the bench ---------------------------------------------------------------------------------------

TIMING_KEYS = {"median_s", "min_s", "max_s", "stdev_s", "images_per_s", "repeats", "warmup", "batch"}


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_bench_contract(tf_face, mode):
    spec = _tiny("d2l_resnet18")
    model = _model(tf_face, spec)
    before = tf_face.to_canonical(model)
    x, _ = _batch(spec, n=2, size=(32, 32))
    result = tf_face.benchmark(model, x, mode=mode, repeats=2, warmup=1)
    assert TIMING_KEYS | {"mode", "precision", "practice"} <= set(result)
    assert result["mode"] == mode and result["precision"] == "fp32" and result["batch"] == 2
    assert "jit_compile" in result["practice"] and "NHWC" in result["practice"]
    assert "peak_memory_mb" not in result  # CPU: TensorFlow reports no peak
    assert result["median_s"] > 0
    # The model is left as it was found: weights and moving statistics.
    after = tf_face.to_canonical(model)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    if mode == "infer":
        bf16 = tf_face.benchmark(model, x, mode=mode, precision="bf16", repeats=1, warmup=1)
        assert "mixed_bfloat16" in bf16["practice"]
    with pytest.raises(ValueError):
        tf_face.benchmark(model, x, mode="eval")


def test_bench_native_is_keras_applications(tf_face, zoo):
    """benchmarks/vs_native.py's 'theirs': keras.applications.ResNet50, the same network as our resnet50_v1."""
    assert tf_face.native == "keras.applications.ResNet50" and tf_face.native_preset == "resnet50_v1"
    theirs, ours = zoo[tf_face.native_preset]["theirs"], zoo[tf_face.native_preset]["ours"]
    assert theirs.count_params() == ours.count_params()
    assert len(theirs.trainable_weights) == len(ours.trainable_weights)
