"""Tests only the mxnet backend has: Gluon's model zoo, .params files, the SGD step, the bench.

Each test skips unless the backend under test is mxnet, so the file is
collected everywhere but runs (and must pass) only in the mxnet environment.
MXNet is imported inside the tests, never at module level.
"""

from __future__ import annotations

import numpy as np
import pytest

from resnet_multi.arch import presets
from resnet_multi.errors import DeviceUnavailable, UserError
from resnet_multi.numerics import reference
from resnet_multi.run.convert import convert
from resnet_multi.weights.canonical import WeightsError, init_weights, load_state, save_state

from .native_helpers import batch as _batch
from .native_helpers import cross_entropy as _cross_entropy
from .native_helpers import tiny as _tiny
from .native_helpers import tol as _tol

ZOO = ["resnet18_v1", "resnet50_v1", "resnet18_v2", "resnet50_v2"]  # gluon.model_zoo.vision builders
ODD_SIZE = (3, 45, 51)  # odd sides exercise every padding; small, so that ResNet-50 stays cheap
RTOL = 1e-4  # logits within RTOL * max(1, max |logits|), as the parity suite


def _only_mxnet(backend):
    if backend != "mxnet":
        pytest.skip("mxnet-only test")


def _model(face, spec, seed=0):
    """Our model holding seeded weights with random BN affine parameters and statistics."""
    return face.build(spec, device="cpu", state=init_weights(spec, seed, perturb_bn=True))


# -- the package: devices, build -------------------------------------------------------------


def test_devices(backend, face):
    """The common device forms; a GPU that is not there names the mxnet-cu* build to install."""
    _only_mxnet(backend)
    import mxnet as mx

    seen = face.devices()
    assert seen[0] == "cpu" and seen[1:] == [f"gpu:{i}" for i in range(mx.context.num_gpus())]
    for form in ("cpu", "CPU", "cpu:0"):
        assert face.resolve_device(form) == "cpu"
    assert face.resolve_device("auto") == ("gpu:0" if len(seen) > 1 else "cpu")
    for form in ("gpu", "cuda", "gpu:0", "cuda:0"):
        if len(seen) > 1:
            assert face.resolve_device(form) == "gpu:0"
        else:
            with pytest.raises(DeviceUnavailable, match="mxnet-cu"):
                face.resolve_device(form)
    for form in ("gpu:99", "cpu:1", "tpu", "gpu:x"):
        with pytest.raises(DeviceUnavailable):
            face.resolve_device(form)
    model = face.build(_tiny("resnet20"), device="cpu")
    assert face.device_of(model) == "cpu"


def test_build_with_state(backend, face):
    """build(state=...) holds exactly that state; without one, the seeded init."""
    _only_mxnet(backend)
    spec = _tiny("gluon_resnet18_v2")
    state = init_weights(spec, seed=3, perturb_bn=True)
    for got, want in ((face.build(spec, device="cpu", state=state), state),
                      (face.build(spec, device="cpu", seed=3), init_weights(spec, seed=3))):
        back = face.to_canonical(got)
        assert set(back) == set(want)
        for k in want:
            np.testing.assert_array_equal(back[k], np.float32(want[k]), err_msg=k)
    assert face.formats == ("gluon", "gluon-zoo")


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
def test_gluon_zoo_import(backend, face, arch, tmp_path):
    """The zoo's .params (save_parameters) -> convert -> canonical: our model and the reference agree with it."""
    _only_mxnet(backend)
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
    ours = face.build(spec, device="cpu")
    face.from_canonical(ours, state)
    got = face.forward(ours, x)
    ref = reference.forward(spec, state, x)
    tol = _tol(expected)
    assert np.abs(got - expected).max() <= tol, f"our mxnet model vs Gluon's {arch}"
    assert np.abs(ref - expected).max() <= tol, f"NumPy reference vs Gluon's {arch}"


@pytest.mark.parametrize("arch", ["resnet50_v1", "resnet18_v2"])
def test_gluon_zoo_export(backend, face, arch, tmp_path):
    """canonical -> .params (convert, i.e. write_file 'gluon-zoo'): the zoo's model loads it strictly and agrees."""
    _only_mxnet(backend)
    import mxnet as mx
    from mxnet.gluon.model_zoo import vision

    spec = presets.get(f"gluon_{arch}")
    state = init_weights(spec, seed=2, perturb_bn=True)
    canonical = save_state(state, tmp_path / "w.safetensors", spec)
    out = tmp_path / "w.params"
    convert(canonical, out, arch=spec.name)

    theirs = getattr(vision, arch)(pretrained=False)
    theirs.load_parameters(str(out), ctx=mx.cpu())  # strict: no missing, no extra, shapes checked
    ours = face.build(spec, device="cpu")
    face.from_canonical(ours, state)
    x = np.random.default_rng(3).standard_normal((2, *ODD_SIZE)).astype(np.float32)
    expected = _zoo_logits(theirs, x)
    got = face.forward(ours, x)
    assert np.abs(got - expected).max() <= _tol(expected)


# -- our native files ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet20", "gluon_resnet18_v2", "gluon_resnet50_v1", "d2l_resnext18"])
def test_native_round_trip(backend, face, name, tmp_path):
    """write_file -> read_file 'gluon' is exact, and the file is what Gluon's own save/load use."""
    _only_mxnet(backend)
    import mxnet as mx

    spec = _tiny(name)
    state = init_weights(spec, seed=4, perturb_bn=True)
    path = tmp_path / "w.params"
    face.write_file(state, path, spec, "gluon")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.params"]  # no temporary file left behind
    back = face.read_file(path, spec, "gluon")
    assert set(back) == set(state)
    for k in state:
        np.testing.assert_array_equal(back[k], np.float32(state[k]), err_msg=k)
    # Our model loads it with Gluon's own API, strictly, and computes the reference's logits.
    model = face.build(spec, device="cpu")
    model.load_parameters(str(path), ctx=mx.cpu())
    x, _ = _batch(spec)
    expected = reference.forward(spec, state, x)
    np.testing.assert_allclose(face.forward(model, x), expected, rtol=0, atol=_tol(expected))
    # ... and what our model saves with Gluon's API, read_file reads.
    model.save_parameters(str(tmp_path / "saved.params"))
    again = face.read_file(tmp_path / "saved.params", spec, "gluon")
    for k in state:
        np.testing.assert_array_equal(again[k], np.float32(state[k]), err_msg=k)


@pytest.mark.parametrize("name", ["gluon_resnet18_v1", "gluon_resnet50_v2"])
def test_gluon_zoo_round_trip(backend, face, name, tmp_path):
    _only_mxnet(backend)
    spec = _tiny(name)
    state = init_weights(spec, seed=5, perturb_bn=True)
    path = tmp_path / "zoo.params"
    face.write_file(state, path, spec, "gluon-zoo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zoo.params"]
    back = face.read_file(path, spec, "gluon-zoo")
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
def test_refuse_mismatched_file(backend, face, fmt, tmp_path):
    """Missing, unexpected and mis-shaped tensors are all listed, and nothing is returned."""
    _only_mxnet(backend)
    import mxnet as mx

    spec = _tiny("gluon_resnet18_v1")
    good = tmp_path / "good.params"
    face.write_file(init_weights(spec), good, spec, fmt)
    raw = mx.nd.load(str(good))
    # the file's own names for fc.bias and conv1.weight
    bias, conv = ("fc.bias", "stem.conv1.weight") if fmt == "gluon" else ("output.bias", "features.0.weight")
    bad = tmp_path / "bad.params"
    mx.nd.save(str(bad), _mangle(raw, {conv: (8, 3, 5, 5)}, drop=bias, extra="extra.weight"))
    with pytest.raises(WeightsError) as info:
        face.read_file(bad, spec, fmt)
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
    face.write_file(init_weights(spec), other, spec, "gluon-zoo" if fmt == "gluon" else "gluon")
    with pytest.raises(WeightsError, match="missing"):
        face.read_file(other, spec, fmt)


def test_refuse_shifted_data_bn(backend, face, tmp_path):
    """v2's data BN has no shift in our spec: a zoo file (or ours) with a non-zero one is refused."""
    _only_mxnet(backend)
    import mxnet as mx

    spec = _tiny("gluon_resnet18_v2")
    for fmt, beta in (("gluon-zoo", "features.0.beta"), ("gluon", "stem.input_bn.beta")):
        path = tmp_path / f"{fmt}.params"
        face.write_file(init_weights(spec), path, spec, fmt)
        raw = mx.nd.load(str(path))
        assert not raw[beta].asnumpy().any()
        raw[beta] = mx.nd.ones(raw[beta].shape)
        mx.nd.save(str(path), raw)
        with pytest.raises(WeightsError, match=beta.replace(".", r"\.")):
            face.read_file(path, spec, fmt)


def test_refuse_unreadable_files(backend, face, tmp_path):
    """Truncated, empty, foreign, unnamed or absent files: one line each, WeightsError."""
    _only_mxnet(backend)
    import mxnet as mx

    spec = _tiny("resnet20")
    good = tmp_path / "good.params"
    face.write_file(init_weights(spec), good, spec, "gluon")
    data = good.read_bytes()
    cases = {"truncated.params": data[: len(data) // 2], "empty.params": b"",
             "text.params": b"not a checkpoint\n" * 4}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
    mx.nd.save(str(tmp_path / "list.params"), [mx.nd.zeros(3)])
    for fmt in ("gluon", "gluon-zoo"):
        for name in [*cases, "list.params", "missing.params"]:
            with pytest.raises(WeightsError) as info:
                face.read_file(tmp_path / name, spec, fmt)
            text = str(info.value)
            assert "\n" not in text and name in text, text
    with pytest.raises(UserError, match="gluon"):
        face.read_file(good, spec, "keras")


def test_write_refuses_bad_state(backend, face, tmp_path):
    _only_mxnet(backend)
    spec = _tiny("resnet20")
    state = init_weights(spec)
    state["fc.weight"] = state["fc.weight"][:, :3]
    for fmt in ("gluon", "gluon-zoo"):
        with pytest.raises(WeightsError, match="fc.weight"):
            face.write_file(state, tmp_path / "w.params", spec, fmt)
    assert list(tmp_path.iterdir()) == []


# -- the training step ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet20", "gluon_resnet18_v2", "gluon_resnet50_v1", "d2l_resnet18"])
def test_first_step_matches_reference(backend, face, name):
    """Loss before the update = the reference's train-mode cross-entropy; running stats as the spec says."""
    _only_mxnet(backend)
    from mxnet import autograd

    spec = _tiny(name)
    model = _model(face, spec, seed=5)
    state = face.to_canonical(model)
    x, labels = _batch(spec)
    acts, ref_state = reference.run(spec, state, x, train=True)
    step = face.make_train_step(model, lr=0.05)
    loss = step(x, labels)
    expected = _cross_entropy(acts["fc"], labels)
    assert abs(loss - expected) <= 1e-5 * abs(expected), (loss, expected)
    after = face.to_canonical(model)
    for k in state:
        if k.endswith(("running_mean", "running_var")):
            np.testing.assert_allclose(after[k], ref_state[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert not autograd.is_training()  # the step leaves MXNet's global mode as it found it


def _fd_grad(spec, state, x, labels, name, index, eps=1e-6) -> float:
    """d loss / d param[index] by central differences on the float64 NumPy reference, train-mode BN."""
    state = {k: np.asarray(v, dtype=np.float64) for k, v in state.items()}
    values = []
    for delta in (eps, -eps):
        probe = dict(state)
        probe[name] = state[name].copy()
        probe[name][index] += delta
        values.append(_cross_entropy(reference.forward(spec, probe, x, train=True), labels))
    return (values[0] - values[1]) / (2 * eps)


def test_sgd_update_convention(backend, face):
    """Two SGD steps with momentum and weight decay against float64 finite-difference gradients:
    b1 = g1 + wd * w0, w1 = w0 - lr * b1; b2 = m * b1 + g2 + wd * w1 (torch.optim.SGD)."""
    _only_mxnet(backend)
    spec = _tiny("gluon_resnet18_v1")
    model = _model(face, spec, seed=6)
    x, labels = _batch(spec, n=4, size=(6, 6), seed=6)
    lr, m, wd = 0.1, 0.9, 0.01
    probes = [("conv1.weight", (1, 0, 1, 2)), ("layer1.0.bn1.weight", (3,)), ("layer2.0.downsample.0.weight",
              (5, 2, 0, 0)), ("layer2.0.downsample.1.bias", (4,)), ("fc.bias", (2,))]
    step = face.make_train_step(model, lr=lr, momentum=m, weight_decay=wd)
    buffers = []
    for _ in range(2):
        before = face.to_canonical(model)
        grads = {n: _fd_grad(spec, before, x, labels, n, i) for n, i in probes}
        step(x, labels)
        state = face.optimizer_state(step)
        after = face.to_canonical(model)
        for n, i in probes:
            buf = float(state[f"momentum.{n}"][i])
            prev = m * buffers[-1][n] if buffers else 0.0
            want = prev + grads[n] + wd * float(before[n][i])
            assert buf == pytest.approx(want, rel=1e-4, abs=1e-7), (n, buf, want)
            assert float(after[n][i] - before[n][i]) == pytest.approx(-lr * buf, rel=1e-3, abs=1e-7), n
        buffers.append({n: float(state[f"momentum.{n}"][i]) for n, i in probes})


def test_loss_decreases(backend, face):
    _only_mxnet(backend)
    spec = _tiny("resnet20")
    model = _model(face, spec, seed=7)
    x, labels = _batch(spec, n=8, size=(8, 8), seed=7)
    step = face.make_train_step(model, lr=0.05, momentum=0.9)
    losses = [step(x, labels) for _ in range(6)]
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.7 * losses[0], losses


def test_optimizer_state_resumes_identically(backend, face):
    """Save weights + momentum after two steps, resume in a fresh model: bit for bit the same run."""
    _only_mxnet(backend)
    spec = _tiny("d2l_resnext18")
    x, labels = _batch(spec, n=4, size=(12, 12), seed=8)
    hyper = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)  # an lr that no float scales exactly
    a = _model(face, spec, seed=8)
    step_a = face.make_train_step(a, **hyper)
    assert face.optimizer_state(step_a) == {}  # no buffers before the first step
    for _ in range(2):
        step_a(x, labels)
    saved_w, saved_opt = face.to_canonical(a), face.optimizer_state(step_a)
    trainable = {k for k in saved_w if not k.endswith(("running_mean", "running_var"))}
    assert set(saved_opt) == {f"momentum.{k}" for k in trainable}

    b = face.build(spec, device="cpu")
    face.from_canonical(b, saved_w)
    step_b = face.make_train_step(b, **hyper)
    face.load_optimizer_state(step_b, saved_opt)
    for _ in range(3):
        assert step_a(x, labels) == step_b(x, labels)
    wa, wb = face.to_canonical(a), face.to_canonical(b)
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    oa, ob = face.optimizer_state(step_a), face.optimizer_state(step_b)
    for k in oa:
        np.testing.assert_array_equal(oa[k], ob[k], err_msg=k)

    bad = dict(saved_opt)
    bad.pop("momentum.fc.bias")
    bad["momentum.conv1.weight"] = np.zeros(3, np.float32)
    with pytest.raises(WeightsError, match="missing 1: momentum.fc.bias.*mis-shaped 1: momentum.conv1.weight"):
        face.load_optimizer_state(step_b, bad)
    face.load_optimizer_state(step_b, {})  # an empty state clears the buffers
    assert face.optimizer_state(step_b) == {}
    plain = face.make_train_step(b, lr=0.05)  # momentum 0 keeps no buffers, and takes none
    plain(x, labels)
    assert face.optimizer_state(plain) == {}
    with pytest.raises(WeightsError, match="momentum 0"):
        face.load_optimizer_state(plain, saved_opt)


def test_precision(backend, face):
    """fp32 only: mixed precision is refused by name, an unknown precision too."""
    _only_mxnet(backend)
    model = _model(face, _tiny("resnet20"))
    for precision in ("bf16", "fp16", "fp8"):
        with pytest.raises(ValueError, match=precision) as info:
            face.make_train_step(model, precision=precision)
        assert isinstance(info.value, UserError)


# -- the bench ---------------------------------------------------------------------------------------

TIMING_KEYS = {"median_s", "min_s", "max_s", "stdev_s", "images_per_s", "repeats", "warmup", "batch"}


def _check_result(result, mode, batch):
    assert TIMING_KEYS | {"mode", "precision", "practice"} <= set(result)
    assert result["mode"] == mode and result["precision"] == "fp32" and result["batch"] == batch
    assert "hybridize(static_alloc, static_shape)" in result["practice"]
    assert "peak_memory_mb" not in result  # CPU: MXNet reports no memory
    assert result["median_s"] > 0


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_bench_contract(backend, face, mode):
    _only_mxnet(backend)
    spec = _tiny("d2l_resnet18")
    model = _model(face, spec)
    before = face.to_canonical(model)
    x, _ = _batch(spec, n=2, size=(32, 32))
    result = face.benchmark(model, x, mode=mode, repeats=2, warmup=1)
    _check_result(result, mode, 2)
    # The model is left as it was found: weights and statistics.
    after = face.to_canonical(model)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    with pytest.raises(ValueError):
        face.benchmark(model, x, mode="eval")
    with pytest.raises(UserError, match="bf16"):
        face.benchmark(model, x, mode=mode, precision="bf16")


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_bench_native(backend, face, mode):
    """Gluon's own ResNet-50 is timed by the same code path: the same practice, the same keys."""
    _only_mxnet(backend)
    assert face.native == "mxnet.gluon.model_zoo.vision.resnet50_v1"
    assert presets.get(face.native_preset).description.startswith(face.native)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    theirs = face.benchmark_native(x, mode=mode, repeats=1, device="cpu", num_classes=10)
    _check_result(theirs, mode, 2)
    ours = face.benchmark(face.build(_tiny("gluon_resnet50_v1"), device="cpu"), x[:, :, :8, :8],
                           mode=mode, repeats=1, warmup=1)
    assert theirs["practice"] == ours["practice"]
