"""Tests only the tensorflow backend has: its spellings, keras.applications' zoo, Keras's own API on our files
and layers.

What every backend promises (devices, build, file round trips, the SGD step,
the optimizer state, precisions, the bench) is tested once for all four in
test_contract.py; here is what needs Keras's or TensorFlow's own API. Each test
skips unless the backend under test is tensorflow (fixture ``tf_face``), so the
file is collected everywhere but runs (and must pass) only in the tensorflow
environment. TensorFlow and Keras are imported inside the tests (and fixtures),
never at module level.
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

from .native_helpers import batch, model, only, tiny, tol

ZOO = {"resnet50_v1": "ResNet50", "resnet50_v2": "ResNet50V2"}  # our preset -> keras.applications builder
ODD_SIZE = (3, 35, 33)  # keras.applications' top needs 32x32 at least; odd sides exercise the padding

tf_face = only("tensorflow", "tf_face")


def _keras_logits(model, x) -> np.ndarray:
    """A Keras model's own forward pass (inference) on an NCHW numpy batch."""
    return np.asarray(model(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), training=False))


# -- devices ---------------------------------------------------------------------------------------


def test_device_spelling(tf_face):
    """TensorFlow's spelling ('CPU:0', 'GPU:N'), its own forms ('/device:CPU:0') accepted too."""
    seen = tf_face.devices()
    gpus = [d for d in seen if d.startswith("GPU:")]
    assert seen[0] == "CPU:0" and set(seen) == {"CPU:0", *gpus}, seen
    for form in ("cpu", "cpu:0", "/device:CPU:0"):
        assert tf_face.resolve_device(form) == "CPU:0", form
    if gpus:
        assert tf_face.resolve_device("cuda") == tf_face.resolve_device("/GPU:0") == "GPU:0"


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
    limit = tol(expected)
    assert np.abs(got - expected).max() <= limit, f"our Keras model vs keras.applications {ZOO[arch]}"
    assert np.abs(ref - expected).max() <= limit, f"NumPy reference vs keras.applications {ZOO[arch]}"


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
    assert np.abs(tf_face.forward(ours, x) - expected).max() <= tol(expected)


def test_keras_applications_refuses_another_depth(tf_face, zoo):
    """A ResNet50 file read as ResNet101: the missing blocks are listed, in canonical names."""
    for kind in ("weights.h5", "h5"):
        with pytest.raises(WeightsError, match=r"nothing loaded: missing \d+: layer3\.6\.conv1\.weight"):
            tf_face.read_file(zoo["resnet50_v1"][kind], presets.get("resnet101_v1"), "keras-applications")
    with pytest.raises(WeightsError, match="keras.applications has no"):
        tf_face.read_file(zoo["resnet50_v1"]["weights.h5"], presets.get("resnet18"), "keras-applications")


# -- our own Keras files -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet20", "gluon_resnet18_v2", "d2l_resnext18"])
def test_keras_loads_our_file(tf_face, name, tmp_path):
    """Keras's own load_weights reads write_file's .weights.h5 into our model, which then gives the reference's
    logits through our forward and Keras's own. (That read_file gives the state back exactly: test_contract.py.)"""
    spec = tiny(name)
    state = init_weights(spec, seed=4, perturb_bn=True)
    path = tmp_path / "w.weights.h5"
    tf_face.write_file(state, path, spec, "keras")
    net = tf_face.build(spec, device="cpu", seed=9)
    net.load_weights(path)  # Keras's own API
    x, _ = batch(spec)
    expected = reference.run(spec, state, x)[0]["fc"]
    assert np.abs(tf_face.forward(net, x) - expected).max() <= tol(expected)
    assert np.abs(_keras_logits(net, x) - expected).max() <= tol(expected)


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
    spec = tiny("resnet20")
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


def test_write_needs_the_keras_suffix(tf_face, tmp_path):
    """Keras 3 saves weights only as *.weights.h5: another name is refused before anything is written."""
    spec = tiny("resnet20")
    for fmt in ("keras", "keras-applications"):
        with pytest.raises(WeightsError, match=r"\.weights\.h5"):
            tf_face.write_file(init_weights(spec), tmp_path / "w.h5", spec, fmt)
    assert list(tmp_path.iterdir()) == []


# -- the training step: Keras's dtype policies -------------------------------------------------------


def test_mixed_precision_keeps_float32_layers(tf_face):
    """A bf16 or fp16 step (Keras mixed policies) leaves every layer of the model on the float32 policy.
    (That its loss follows fp32: test_contract.py.)"""
    spec = tiny("d2l_resnet18")  # unbiased running variance: our own BN subclass under mixed precision too
    x, labels = batch(spec, n=4, size=(16, 16), seed=9)
    for precision in ("bf16", "fp16"):
        net = model(tf_face, spec, seed=9)
        tf_face.make_train_step(net, precision=precision)(x, labels)
        assert {layer.dtype_policy.name for layer in net.layers} == {"float32"}, precision


# -- the bench ---------------------------------------------------------------------------------------


def test_bench_native_is_keras_applications(tf_face, zoo):
    """benchmarks/vs_native.py's 'theirs': keras.applications.ResNet50, the same network as our resnet50_v1."""
    assert tf_face.native == "keras.applications.ResNet50" and tf_face.native_preset == "resnet50_v1"
    theirs, ours = zoo[tf_face.native_preset]["theirs"], zoo[tf_face.native_preset]["ours"]
    assert theirs.count_params() == ours.count_params()
    assert len(theirs.trainable_weights) == len(ours.trainable_weights)
