"""The backend contract, one test for all four: what resnet_multi.backend(name) promises (docs/backends.md).

Every test here goes through the face and the core only, never a framework's
own API; what needs one (the frameworks' zoos, their own layers and files,
their device spellings, mixed-precision details) is in test_<backend>_native.py.
Where the backends differ in data, not in behaviour (their file formats, the
precisions they run on a CPU, the words their bench practice names), a small
dict below says it per backend.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from resnet_multi.arch import presets
from resnet_multi.arch.plan import plan
from resnet_multi.errors import DeviceUnavailable, PrecisionUnavailable, UserError
from resnet_multi.numerics import reference
from resnet_multi.weights.canonical import WeightsError, init_weights

from .native_helpers import batch, check_bench, cross_entropy, model, tiny

# The weight-file formats each backend reads and writes; the first is our own model's file, named so.
FORMATS = {"torch": ("torch",), "tensorflow": ("keras", "keras-applications"), "flax": ("flax",),
           "mxnet": ("gluon", "gluon-zoo", "gluoncv-v1b")}
FILE_NAME = {"torch": "w.pt", "tensorflow": "w.weights.h5", "flax": "w.msgpack", "mxnet": "w.params"}
# The mixed precisions a TrainStep runs on a CPU (torch's fp16 autocast needs a CUDA GPU; MXNet is fp32 only).
CPU_MIXED = {"torch": ("bf16",), "tensorflow": ("bf16", "fp16"), "flax": ("bf16", "fp16"), "mxnet": ()}
# The framework's best practice, as the bench names it; and what bf16 inference adds (None: refused).
PRACTICE = {"torch": ("channels_last",), "tensorflow": ("jit_compile", "NHWC"), "flax": ("jax.jit",),
            "mxnet": ("hybridize(static_alloc, static_shape)",)}
# A training benchmark times the step `resnet-multi train` runs, in its layout (torch: NCHW on CPU).
TRAIN_PRACTICE = {"torch": ("NCHW", "TrainStep"), "tensorflow": ("train's step", "NHWC"), "flax": ("jax.jit",),
                  "mxnet": ("hybridize(static_alloc, static_shape)",)}
BF16_PRACTICE = {"torch": "autocast(bf16)", "tensorflow": "mixed_bfloat16", "flax": "bf16", "mxnet": None}


def _assert_same(got, want):
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


# -- devices and build ------------------------------------------------------------------------------


def test_device_forms(backend, face):
    """Every backend accepts the same forms (common.parse_device) and answers in devices()' own spelling."""
    seen = face.devices()
    cpu = face.resolve_device("cpu")
    gpus = [d for d in seen if not d.lower().startswith("cpu")]
    cpus = len(seen) - len(gpus)
    assert seen[0] == cpu and seen[cpus:] == gpus, seen
    for form in ("cpu", "CPU", "cpu:0", "CPU:0", " cpu "):
        assert face.resolve_device(form) == cpu, form
    for device in seen:  # each device is named back as it is listed
        assert face.resolve_device(device) == device
    assert face.resolve_device("auto") == (gpus[0] if gpus else cpu)
    for i, gpu in enumerate(gpus):
        assert face.resolve_device(f"gpu:{i}") == face.resolve_device(f"cuda:{i}") == gpu
    for form in ("gpu", "cuda", "gpu:0", "cuda:0"):
        if gpus:
            assert face.resolve_device(form) == gpus[0], form
        else:
            with pytest.raises(DeviceUnavailable, match="sees no GPU"):
                face.resolve_device(form)
    for form in (f"gpu:{len(gpus)}", f"cuda:{len(gpus)}", "gpu:99"):
        with pytest.raises(DeviceUnavailable, match="sees no GPU" if not gpus else "is not there"):
            face.resolve_device(form)
    with pytest.raises(DeviceUnavailable, match="CPU device"):
        face.resolve_device(f"cpu:{cpus}")
    for bad in ("tpu", "gpu:x", "cuda:x", "auto:0", ""):
        with pytest.raises(DeviceUnavailable, match="unknown device"):
            face.resolve_device(bad)
    assert face.device_of(face.build(tiny("resnet20"), device="cpu")) == cpu


def test_build_with_state(backend, face):
    """build(state=...) holds exactly that state; without one, the spec's seeded init."""
    spec = tiny("gluon_resnet18_v2")
    state = init_weights(spec, seed=3, perturb_bn=True)
    _assert_same(face.to_canonical(face.build(spec, device="cpu", state=state)), state)
    _assert_same(face.to_canonical(face.build(spec, device="cpu", seed=3)), init_weights(spec, seed=3))
    assert face.formats == FORMATS[backend]


# -- our native files -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet20", "gluon_resnet18_v2", "gluon_resnet50_v1", "d2l_resnext18"])
def test_native_round_trip(backend, face, name, tmp_path):
    """write_file -> read_file of the backend's own format is exact, and leaves no temporary file behind."""
    spec = tiny(name)
    state = init_weights(spec, seed=4, perturb_bn=True)
    path = tmp_path / FILE_NAME[backend]
    face.write_file(state, path, spec, face.formats[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    _assert_same(face.read_file(path, spec, face.formats[0]), state)


def test_refuse_unreadable_files(backend, face, tmp_path):
    """Truncated, empty, foreign or missing files, in every format: one line each naming the file, WeightsError.
    A format the backend does not have is refused naming it and the backend's own."""
    spec = tiny("resnet20")
    good = tmp_path / FILE_NAME[backend]
    face.write_file(init_weights(spec), good, spec, face.formats[0])
    data, suffix = good.read_bytes(), good.name.removeprefix("w")
    cases = {f"truncated{suffix}": data[: len(data) // 2], f"empty{suffix}": b"",
             f"text{suffix}": b"not a weights file\n" * 4}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
    for fmt in face.formats:
        arch = presets.get("resnet50_v1") if fmt == "keras-applications" else spec  # it holds only its presets
        for name in [*cases, f"missing{suffix}"]:
            with pytest.raises(WeightsError) as info:
                face.read_file(tmp_path / name, arch, fmt)
            text = str(info.value)
            assert "\n" not in text and name in text, (fmt, text)
    other = "keras" if backend != "tensorflow" else "torch"
    with pytest.raises(UserError, match=re.escape(repr(other))) as info:
        face.read_file(good, spec, other)
    assert all(fmt in str(info.value) for fmt in face.formats), str(info.value)


def test_write_refuses_bad_state(backend, face, tmp_path):
    """A state that does not fit the spec is refused in every format, and no file is written."""
    spec = tiny("resnet20")
    state = init_weights(spec)
    state["fc.weight"] = state["fc.weight"][:, :3]
    for fmt in face.formats:
        with pytest.raises(WeightsError, match="fc.weight"):
            face.write_file(state, tmp_path / FILE_NAME[backend], spec, fmt)
    assert list(tmp_path.iterdir()) == []


# -- the training step ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet20", "gluon_resnet18_v2", "d2l_resnet18", "resnet50_v1",
                                  "gluon_resnet50_v1"])
def test_first_step_matches_reference(backend, face, name):
    """Loss before the update = the reference's train-mode cross-entropy; running stats as the spec says."""
    spec = tiny(name)
    net = model(face, spec, seed=5)
    state = face.to_canonical(net)
    x, labels = batch(spec)
    acts, ref_state = reference.run(spec, state, x, train=True)
    loss = face.make_train_step(net, lr=0.05)(x, labels)
    expected = cross_entropy(acts["fc"], labels)
    assert abs(loss - expected) <= 1e-5 * abs(expected), (loss, expected)
    after = face.to_canonical(net)
    for k in state:
        if k.endswith(("running_mean", "running_var")):
            np.testing.assert_allclose(after[k], ref_state[k], rtol=1e-5, atol=1e-6, err_msg=k)


def _fd_grad(spec, state, x, labels, name, index, eps=1e-6) -> float:
    """d loss / d state[name][index] by central differences on the float64 NumPy reference, train-mode BN."""
    values = []
    for delta in (eps, -eps):
        probe = {k: np.asarray(v, np.float64) for k, v in state.items()}
        probe[name][index] += delta
        values.append(cross_entropy(reference.run(spec, probe, x, train=True)[0]["fc"], labels))
    return (values[0] - values[1]) / (2 * eps)


# One batch shape and one optimizer for the SGD tests below: flax compiles its step once for both.
SGD_BATCH = dict(n=4, size=(8, 8))
SGD = dict(lr=0.1, momentum=0.9, weight_decay=0.01)


@pytest.mark.parametrize("name", ["resnet20", "gluon_resnet18_v1"])  # CIFAR and ImageNet stems
def test_sgd_update_convention(backend, face, name):
    """Two SGD steps with momentum and weight decay against float64 finite-difference gradients:
    b1 = g1 + wd * w0, w1 = w0 - lr * b1; b2 = m * b1 + g2 + wd * w1 (torch.optim.SGD)."""
    spec = tiny(name)
    net = model(face, spec, seed=6)
    x, labels = batch(spec, **SGD_BATCH, seed=6)
    lr, m, wd = SGD["lr"], SGD["momentum"], SGD["weight_decay"]
    probes = [("conv1.weight", (1, 0, 1, 2)), ("layer1.0.bn1.weight", (3,)),
              ("layer2.0.downsample.0.weight", (5, 2, 0, 0)), ("layer2.0.downsample.1.bias", (4,)),
              ("fc.bias", (2,))]
    step = face.make_train_step(net, **SGD)
    buffers = []
    for _ in range(2):
        before = face.to_canonical(net)
        grads = {n: _fd_grad(spec, before, x, labels, n, i) for n, i in probes}
        step(x, labels)
        opt = face.optimizer_state(step)
        after = face.to_canonical(net)
        for n, i in probes:
            buf = float(opt[f"momentum.{n}"][i])
            prev = m * buffers[-1][n] if buffers else 0.0
            want = prev + grads[n] + wd * float(before[n][i])
            assert buf == pytest.approx(want, rel=1e-4, abs=1e-7), (n, buf, want)
            assert float(after[n][i]) - float(before[n][i]) == pytest.approx(-lr * buf, rel=1e-3, abs=1e-7), n
        buffers.append({n: float(opt[f"momentum.{n}"][i]) for n, i in probes})


def test_loss_decreases(backend, face):
    spec = tiny("resnet20")
    net = model(face, spec, seed=7)
    x, labels = batch(spec, **SGD_BATCH, seed=7)
    step = face.make_train_step(net, **SGD)
    losses = [step(x, labels) for _ in range(6)]
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.7 * losses[0], losses


def test_optimizer_state_resumes_identically(backend, face):
    """Save weights + momentum after two steps, resume in a fresh model: bit for bit the same run, whether
    the step is made before or after the weights load; a state that does not fit is refused whole."""
    spec = tiny("d2l_resnext18")
    x, labels = batch(spec, n=4, size=(12, 12), seed=8)
    hyper = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)  # an lr that no float scales exactly
    a = model(face, spec, seed=8)
    step_a = face.make_train_step(a, **hyper)
    assert face.optimizer_state(step_a) == {}  # no buffers before the first step
    for _ in range(2):
        step_a(x, labels)
    saved_w, saved_opt = face.to_canonical(a), face.optimizer_state(step_a)
    trainable = {k for k in saved_w if not k.endswith(("running_mean", "running_var"))}
    assert set(saved_opt) == {f"momentum.{k}" for k in plan(spec).param_shapes()} == {
        f"momentum.{k}" for k in trainable}
    for k, v in saved_opt.items():  # canonical (PyTorch) layout
        assert v.shape == saved_w[k[len("momentum."):]].shape, k

    b = face.build(spec, device="cpu")
    face.from_canonical(b, saved_w)
    step_b = face.make_train_step(b, **hyper)
    c = face.build(spec, device="cpu")
    step_c = face.make_train_step(c, **hyper)  # made before the weights load, as training.py does
    face.from_canonical(c, saved_w)
    for step in (step_b, step_c):
        face.load_optimizer_state(step, saved_opt)
    for _ in range(2):
        loss = step_a(x, labels)
        assert step_b(x, labels) == loss and step_c(x, labels) == loss
    for resumed, step in ((b, step_b), (c, step_c)):
        _assert_same(face.to_canonical(resumed), face.to_canonical(a))
        _assert_same(face.optimizer_state(step), face.optimizer_state(step_a))

    held = face.optimizer_state(step_b)
    bad = dict(saved_opt)
    bad.pop("momentum.fc.bias")
    bad["momentum.conv1.weight"] = np.zeros(3, np.float32)
    with pytest.raises(WeightsError, match="missing 1: momentum.fc.bias.*mis-shaped 1: momentum.conv1.weight"):
        face.load_optimizer_state(step_b, bad)
    _assert_same(face.optimizer_state(step_b), held)  # all or nothing: the refused state left no trace
    face.load_optimizer_state(step_b, {})  # an empty state clears the buffers: a fresh optimizer
    assert face.optimizer_state(step_b) == {}


def test_momentum_zero_keeps_and_takes_no_buffers(backend, face):
    """Plain SGD (momentum 0) keeps no buffers, and refuses momentum buffers offered to it, loading nothing."""
    spec = tiny("resnet20")
    x, labels = batch(spec, **SGD_BATCH, seed=8)
    with_momentum = face.make_train_step(model(face, spec, seed=8), **SGD)
    with_momentum(x, labels)
    buffers = face.optimizer_state(with_momentum)
    plain = face.make_train_step(model(face, spec, seed=8), lr=0.05)
    plain(x, labels)
    assert face.optimizer_state(plain) == {}
    with pytest.raises(WeightsError, match="momentum 0"):
        face.load_optimizer_state(plain, buffers)
    assert face.optimizer_state(plain) == {}


def test_mixed_precision_step(backend, face):
    """Each mixed precision the backend runs on a CPU follows fp32 closely and keeps the model fp32;
    one it does not run is a PrecisionUnavailable naming it, an unknown one too."""
    spec = tiny("d2l_resnet18")  # unbiased running variance: Keras's own BN subclass under mixed precision too
    x, labels = batch(spec, n=4, size=(16, 16), seed=9)
    fp32 = cross_entropy(reference.run(spec, face.to_canonical(model(face, spec, seed=9)), x, train=True)[0]["fc"],
                         labels)  # what the fp32 step returns (test_first_step_matches_reference)
    for precision in ("bf16", "fp16"):
        net = model(face, spec, seed=9)
        if precision not in CPU_MIXED[backend]:
            with pytest.raises(PrecisionUnavailable, match=precision) as info:
                face.make_train_step(net, precision=precision)
            assert isinstance(info.value, ValueError)
            continue
        assert precision in face.precisions
        loss = face.make_train_step(net, precision=precision)(x, labels)
        assert loss == pytest.approx(fp32, rel=3e-2), precision
        assert all(v.dtype == np.float32 for v in face.to_canonical(net).values())  # fp32 master weights
        assert face.forward(net, x).dtype == np.float32
    with pytest.raises(PrecisionUnavailable, match="precision.*fp8") as info:
        face.make_train_step(model(face, spec), precision="fp8")
    assert isinstance(info.value, ValueError)


# -- the bench ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_bench_contract(backend, face, mode):
    spec = tiny("d2l_resnet18")
    net = model(face, spec)
    before = face.to_canonical(net)
    x, _ = batch(spec, n=2, size=(32, 32))
    result = face.benchmark(net, x, mode=mode, repeats=2, warmup=1)
    check_bench(result, mode, 2)
    words = PRACTICE[backend] if mode == "infer" else TRAIN_PRACTICE[backend]
    assert all(word in result["practice"] for word in words), result["practice"]
    assert result["repeats"] == 2 and result["warmup"] == 1
    assert "peak_memory_mb" not in result  # CPU: no framework reports a peak there
    _assert_same(face.to_canonical(net), before)  # the model is left as it was found: weights and statistics
    if BF16_PRACTICE[backend] is None:
        with pytest.raises(UserError, match="bf16"):
            face.benchmark(net, x, mode=mode, precision="bf16")
    elif mode == "infer":
        bf16 = face.benchmark(net, x, mode=mode, precision="bf16", repeats=1, warmup=1)
        check_bench(bf16, mode, 2, precision="bf16")
        assert BF16_PRACTICE[backend] in bf16["practice"]
    with pytest.raises(ValueError, match="mode"):
        face.benchmark(net, x, mode="eval")


def test_conv_throughput(backend, face):
    """One 3x3 conv's rate in the framework (benchmarks/vs_native.py's ceiling): a positive, finite GFLOP/s."""
    result = face.conv_throughput(shape=(2, 16, 8, 8), repeats=2, device="cpu")
    assert result["shape"] == [2, 16, 8, 8] and result["practice"]
    assert 0 < result["gflops"] < 1e6
