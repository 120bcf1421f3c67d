"""Tests only the mxnet backend has: its spellings, Gluon's model zoo and its .params names, Gluon's own API.

What every backend promises (devices, build, file round trips, the SGD step,
the optimizer state, precisions, the bench) is tested once for all four in
test_contract.py; here is what needs MXNet's own API or only MXNet has. Each
test skips unless the backend under test is mxnet (fixture ``mxnet_face``), so
the file is collected everywhere but runs (and must pass) only in the mxnet
environment. MXNet is imported inside the tests, never at module level.
"""

from __future__ import annotations

import numpy as np
import pytest

from resnet_multi.arch import presets
from resnet_multi.errors import DeviceUnavailable, UserError
from resnet_multi.numerics import reference
from resnet_multi.run.convert import convert
from resnet_multi.weights.canonical import WeightsError, init_weights, load_state, save_state

from .native_helpers import batch, check_bench, model, only, tiny, tol

ZOO = ["resnet18_v1", "resnet50_v1", "resnet18_v2", "resnet50_v2"]  # gluon.model_zoo.vision builders
ODD_SIZE = (3, 45, 51)  # odd sides exercise every padding; small, so that ResNet-50 stays cheap

mxnet_face = only("mxnet", "mxnet_face")


# -- devices and the step in MXNet's terms -----------------------------------------------------------


def test_device_spelling(mxnet_face):
    """MXNet's spelling: 'cpu', then 'gpu:N' for every GPU MXNet counts; a GPU that is not there names
    the mxnet-cu* build to install."""
    import mxnet as mx

    seen = mxnet_face.devices()
    assert seen == ["cpu", *(f"gpu:{i}" for i in range(mx.context.num_gpus()))]
    assert mxnet_face.resolve_device("auto") == ("gpu:0" if len(seen) > 1 else "cpu")
    if len(seen) == 1:
        with pytest.raises(DeviceUnavailable, match="mxnet-cu"):
            mxnet_face.resolve_device("gpu")


def test_step_leaves_autograd_mode(mxnet_face):
    """A training step records and trains inside autograd scopes, and leaves MXNet's global mode as it found it."""
    from mxnet import autograd

    spec = tiny("gluon_resnet50_v1")
    mxnet_face.make_train_step(model(mxnet_face, spec), lr=0.05)(*batch(spec))
    assert not autograd.is_training() and not autograd.is_recording()


# -- Gluon's model zoo ---------------------------------------------------------------------


def _zoo_model(arch: str, seed: int = 0):
    """gluon.model_zoo.vision's own model: random init (no download), random BN parameters and
    running statistics, random conv and dense biases.

    ResNetV2's data BN (features[0], scale=False, center=False) keeps its beta at zero: Gluon
    adds it, and it is zero in every real checkpoint (it is never trained). Its gamma is drawn
    at random: Gluon ignores it (fix_gamma), and so must the import.
    """
    import mxnet as mx
    from mxnet.gluon import nn
    from mxnet.gluon.model_zoo import vision

    model = getattr(vision, arch)(pretrained=False)
    model.initialize(mx.init.Xavier(), ctx=mx.cpu())
    model(mx.nd.zeros((1, *ODD_SIZE)))  # the zoo's BNs infer their channels on the first call
    rng = np.random.default_rng(seed)
    data_bn = model.features[0] if arch.endswith("_v2") else None

    def draw(param, low, high):
        param.set_data(mx.nd.array(rng.uniform(low, high, param.shape), dtype="float32"))

    def perturb(block):
        if isinstance(block, nn.BatchNorm):
            draw(block.gamma, 0.5, 1.5)
            if block is not data_bn:
                draw(block.beta, -0.2, 0.2)
            draw(block.running_mean, -0.2, 0.2)
            draw(block.running_var, 0.5, 2.0)
        elif isinstance(block, (nn.Conv2D, nn.Dense)) and block.bias is not None:
            draw(block.bias, -0.1, 0.1)

    model.apply(perturb)
    if data_bn is not None:
        assert not data_bn.beta.data().asnumpy().any()
    model.hybridize(static_alloc=True, static_shape=True)
    return model


def _zoo_logits(model, x) -> np.ndarray:
    import mxnet as mx

    return model(mx.nd.array(x, dtype="float32")).asnumpy()  # inference: no autograd scope


@pytest.mark.parametrize("arch", ZOO)
def test_gluon_zoo_import(mxnet_face, arch, tmp_path):
    """The zoo's .params (save_parameters) -> convert -> canonical: our model and the reference agree with it."""
    source = _zoo_model(arch, seed=ZOO.index(arch))
    src = tmp_path / f"{arch}.params"
    source.save_parameters(str(src))  # Gluon's own format, as the zoo's downloads are
    dst = tmp_path / f"{arch}.safetensors"
    result = convert(src, dst, arch=f"gluon_{arch}")
    assert result["source_format"] == "gluon-zoo"  # guessed from .params and the gluon_ preset

    spec = presets.get(f"gluon_{arch}")
    state = load_state(dst, spec)
    x = np.random.default_rng(1).standard_normal((2, *ODD_SIZE)).astype(np.float32)
    expected = _zoo_logits(source, x)
    ours = mxnet_face.build(spec, device="cpu")
    mxnet_face.from_canonical(ours, state)
    got = mxnet_face.forward(ours, x)
    ref = reference.forward(spec, state, x)
    limit = tol(expected)
    assert np.abs(got - expected).max() <= limit, f"our mxnet model vs Gluon's {arch}"
    assert np.abs(ref - expected).max() <= limit, f"NumPy reference vs Gluon's {arch}"


@pytest.mark.parametrize("arch", ["resnet50_v1", "resnet18_v2"])
def test_gluon_zoo_export(mxnet_face, arch, tmp_path):
    """canonical -> .params (convert, i.e. write_file 'gluon-zoo'): the zoo's model loads it strictly and agrees."""
    import mxnet as mx
    from mxnet.gluon.model_zoo import vision

    spec = presets.get(f"gluon_{arch}")
    state = init_weights(spec, seed=2, perturb_bn=True)
    canonical = save_state(state, tmp_path / "w.safetensors", spec)
    out = tmp_path / "w.params"
    convert(canonical, out, arch=spec.name)

    theirs = getattr(vision, arch)(pretrained=False)
    theirs.load_parameters(str(out), ctx=mx.cpu())  # strict: no missing, no extra, shapes checked
    ours = mxnet_face.build(spec, device="cpu")
    mxnet_face.from_canonical(ours, state)
    x = np.random.default_rng(3).standard_normal((2, *ODD_SIZE)).astype(np.float32)
    expected = _zoo_logits(theirs, x)
    got = mxnet_face.forward(ours, x)
    assert np.abs(got - expected).max() <= tol(expected)


# -- our native files ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet20", "gluon_resnet18_v2", "gluon_resnet50_v1", "d2l_resnext18"])
def test_native_file_is_gluons(mxnet_face, name, tmp_path):
    """write_file 'gluon' is what Gluon's own load_parameters and save_parameters use.
    (That read_file gives the state back exactly: test_contract.py.)"""
    import mxnet as mx

    spec = tiny(name)
    state = init_weights(spec, seed=4, perturb_bn=True)
    path = tmp_path / "w.params"
    mxnet_face.write_file(state, path, spec, "gluon")
    # Our model loads it with Gluon's own API, strictly, and computes the reference's logits.
    net = mxnet_face.build(spec, device="cpu")
    net.load_parameters(str(path), ctx=mx.cpu())
    x, _ = batch(spec)
    expected = reference.forward(spec, state, x)
    np.testing.assert_allclose(mxnet_face.forward(net, x), expected, rtol=0, atol=tol(expected))
    # ... and what our model saves with Gluon's API, read_file reads.
    net.save_parameters(str(tmp_path / "saved.params"))
    again = mxnet_face.read_file(tmp_path / "saved.params", spec, "gluon")
    for k in state:
        np.testing.assert_array_equal(again[k], np.float32(state[k]), err_msg=k)


@pytest.mark.parametrize("name", ["gluon_resnet18_v1", "gluon_resnet50_v2"])
def test_gluon_zoo_round_trip(mxnet_face, name, tmp_path):
    spec = tiny(name)
    state = init_weights(spec, seed=5, perturb_bn=True)
    path = tmp_path / "zoo.params"
    mxnet_face.write_file(state, path, spec, "gluon-zoo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zoo.params"]
    back = mxnet_face.read_file(path, spec, "gluon-zoo")
    assert set(back) == set(state)
    for k in state:
        np.testing.assert_array_equal(back[k], np.float32(state[k]), err_msg=k)


def _mangle(raw: dict, renames: dict, drop: str, extra: str) -> dict:
    import mxnet as mx

    out = {k: v for k, v in raw.items() if k != drop}
    out[extra] = mx.nd.zeros(3)
    for k, shape in renames.items():
        out[k] = mx.nd.zeros(shape)
    return out


@pytest.mark.parametrize("fmt", ["gluon", "gluon-zoo"])
def test_refuse_mismatched_file(mxnet_face, fmt, tmp_path):
    """Missing, unexpected and mis-shaped tensors are all listed, and nothing is returned."""
    import mxnet as mx

    spec = tiny("gluon_resnet18_v1")
    good = tmp_path / "good.params"
    mxnet_face.write_file(init_weights(spec), good, spec, fmt)
    raw = mx.nd.load(str(good))
    # the file's own names for fc.bias and conv1.weight
    bias, conv = ("fc.bias", "stem.conv1.weight") if fmt == "gluon" else ("output.bias", "features.0.weight")
    bad = tmp_path / "bad.params"
    mx.nd.save(str(bad), _mangle(raw, {conv: (8, 3, 5, 5)}, drop=bias, extra="extra.weight"))
    with pytest.raises(WeightsError) as info:
        mxnet_face.read_file(bad, spec, fmt)
    text = str(info.value)
    for word in ("missing 1: fc.bias", "unexpected 1: extra.weight", "mis-shaped 1: conv1.weight", "bad.params"):
        assert word in text, text
    assert "\n" not in text
    # convert refuses it whole too, and writes nothing.
    with pytest.raises(UserError, match="nothing loaded"):
        convert(bad, tmp_path / "out.safetensors", arch=spec, src_format=fmt)
    assert not (tmp_path / "out.safetensors").exists()
    # The other format's file is refused too: its names are not this format's.
    other = tmp_path / "other.params"
    mxnet_face.write_file(init_weights(spec), other, spec, "gluon-zoo" if fmt == "gluon" else "gluon")
    with pytest.raises(WeightsError, match="missing"):
        mxnet_face.read_file(other, spec, fmt)


def test_refuse_shifted_data_bn(mxnet_face, tmp_path):
    """v2's data BN has no shift in our spec: a zoo file (or ours) with a non-zero one is refused."""
    import mxnet as mx

    spec = tiny("gluon_resnet18_v2")
    for fmt, beta in (("gluon-zoo", "features.0.beta"), ("gluon", "stem.input_bn.beta")):
        path = tmp_path / f"{fmt}.params"
        mxnet_face.write_file(init_weights(spec), path, spec, fmt)
        raw = mx.nd.load(str(path))
        assert not raw[beta].asnumpy().any()
        raw[beta] = mx.nd.ones(raw[beta].shape)
        mx.nd.save(str(path), raw)
        with pytest.raises(WeightsError, match=beta.replace(".", r"\.")):
            mxnet_face.read_file(path, spec, fmt)


def test_refuse_unnamed_arrays(mxnet_face, tmp_path):
    """An mx.nd.save file of a list (no names): one line naming the file, WeightsError, in both formats.
    (Truncated, empty, text and missing files, and foreign formats: test_contract.py.)"""
    import mxnet as mx

    mx.nd.save(str(tmp_path / "list.params"), [mx.nd.zeros(3)])
    for fmt in ("gluon", "gluon-zoo"):
        with pytest.raises(WeightsError) as info:
            mxnet_face.read_file(tmp_path / "list.params", tiny("resnet20"), fmt)
        text = str(info.value)
        assert "\n" not in text and "list.params" in text, text


# -- the bench ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_bench_native(mxnet_face, mode):
    """Gluon's own ResNet-50 is timed by the same code path: the same practice, the same keys."""
    assert mxnet_face.native == "mxnet.gluon.model_zoo.vision.resnet50_v1"
    assert presets.get(mxnet_face.native_preset).description.startswith(mxnet_face.native)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    theirs = mxnet_face.benchmark_native(x, mode=mode, repeats=1, device="cpu", num_classes=10)
    check_bench(theirs, mode, 2)
    assert "hybridize(static_alloc, static_shape)" in theirs["practice"]
    assert "peak_memory_mb" not in theirs  # CPU: MXNet reports no memory
    ours = mxnet_face.benchmark(mxnet_face.build(tiny("gluon_resnet50_v1"), device="cpu"), x[:, :, :8, :8],
                                 mode=mode, repeats=1, warmup=1)
    assert theirs["practice"] == ours["practice"]
