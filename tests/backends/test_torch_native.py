"""Tests only the torch backend has: devices, torchvision's zoo, .pt files, the SGD step, the bench.

Each test skips unless the backend under test is torch, so the file is
collected everywhere but runs (and must pass) only in the torch environment.
torch itself is imported inside the tests, never at module level.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from resnet_multi.arch import presets
from resnet_multi.errors import DeviceUnavailable, PrecisionUnavailable, UserError
from resnet_multi.numerics import reference
from resnet_multi.run.convert import convert
from resnet_multi.weights.canonical import WeightsError, init_weights, load_state, save_state

from .native_helpers import batch as _batch
from .native_helpers import cross_entropy as _cross_entropy
from .native_helpers import tiny as _tiny
from .native_helpers import tol as _tol

ZOO = ["resnet18", "resnet50", "resnext50_32x4d"]  # torchvision.models builders of the same names
ODD_SIZE = (3, 45, 51)
RTOL = 1e-4  # logits within RTOL * max(1, max |logits|), as the parity suite


def _only_torch(backend):
    if backend != "torch":
        pytest.skip("torch-only test")


def _model(face, spec, seed=0):
    return face.build(spec, device="cpu", state=init_weights(spec, seed, perturb_bn=True))


# -- devices and build ---------------------------------------------------------------------


def test_device_forms(backend, face):
    """The accepted forms of every backend, spelled as torch spells them."""
    _only_torch(backend)
    import torch

    assert face.resolve_device("cpu") == face.resolve_device("CPU:0") == "cpu"
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert face.devices() == ["cpu", *(f"cuda:{i}" for i in range(gpus))]
    assert face.resolve_device("auto") == ("cuda:0" if gpus else "cpu")
    for name in ("gpu", "cuda", "gpu:0", "cuda:0"):
        if gpus:
            assert face.resolve_device(name) == "cuda:0"
        else:
            with pytest.raises(DeviceUnavailable, match="no GPU"):
                face.resolve_device(name)
    for bad in (f"gpu:{gpus}", f"cuda:{gpus}", "cpu:1", "tpu", "cuda:x"):
        with pytest.raises(DeviceUnavailable):
            face.resolve_device(bad)


def test_build_with_state(backend, face):
    """build(state=...) holds exactly that state; without it, the seeded init; BN counters start at zero."""
    _only_torch(backend)
    spec = _tiny("gluon_resnet18_v2")
    state = init_weights(spec, seed=3, perturb_bn=True)
    model = face.build(spec, device="cpu", state=state)
    got = face.to_canonical(model)
    assert set(got) == set(state)
    for k in state:
        np.testing.assert_array_equal(got[k], state[k], err_msg=k)
    seeded = face.to_canonical(face.build(spec, device="cpu", seed=3))
    for k, v in init_weights(spec, seed=3).items():
        np.testing.assert_array_equal(seeded[k], v, err_msg=k)
    counters = [v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")]
    assert counters and all(int(v) == 0 for v in counters)
    assert not model.training and face.device_of(model) == "cpu"


# -- torchvision's zoo -----------------------------------------------------------------------


def _torchvision_model(arch: str, seed: int = 0):
    """torchvision's own model, random init (no download), random BN affine and running statistics."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
                m.running_mean.uniform_(-0.2, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
    return model.eval()


@pytest.mark.parametrize("arch", ZOO)
def test_torchvision_import(backend, face, arch, tmp_path):
    _only_torch(backend)
    import torch

    source = _torchvision_model(arch)
    src = tmp_path / f"{arch}.pth"
    torch.save(source.state_dict(), src)  # torchvision's own format, num_batches_tracked included
    dst = tmp_path / f"{arch}.safetensors"
    convert(src, dst, arch=arch)

    spec = presets.get(arch)
    state = load_state(dst, spec)
    x = np.random.default_rng(1).standard_normal((2, *ODD_SIZE)).astype(np.float32)
    with torch.no_grad():
        expected = source(torch.from_numpy(x)).numpy()
    ours = face.build(spec, device="cpu", state=state)
    got = face.forward(ours, x)
    ref = reference.run(spec, state, x)[0]["fc"]
    tol = _tol(expected)
    assert np.abs(got - expected).max() <= tol, f"our torch model vs torchvision {arch}"
    assert np.abs(ref - expected).max() <= tol, f"NumPy reference vs torchvision {arch}"


@pytest.mark.parametrize("arch", ["resnet18", "resnext50_32x4d"])
def test_torchvision_export(backend, face, arch, tmp_path):
    """canonical -> .pth (convert, i.e. write_file): torchvision's model loads it strictly and agrees."""
    _only_torch(backend)
    import torch
    import torchvision

    spec = presets.get(arch)
    state = init_weights(spec, seed=2, perturb_bn=True)
    canonical = save_state(state, tmp_path / "w.safetensors", spec)
    out = tmp_path / "w.pth"
    convert(canonical, out, arch=arch)

    theirs = getattr(torchvision.models, arch)(weights=None)
    theirs.load_state_dict(torch.load(out, map_location="cpu", weights_only=True), strict=True)
    theirs.eval()
    ours = face.build(spec, device="cpu", state=state)
    x = np.random.default_rng(3).standard_normal((2, *ODD_SIZE)).astype(np.float32)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    got = face.forward(ours, x)
    assert np.abs(got - expected).max() <= _tol(expected)


# -- our native files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet20", "gluon_resnet18_v2", "d2l_resnext18"])
def test_native_round_trip(backend, face, name, tmp_path):
    """write_file -> read_file is exact; the file is a torchvision-style state_dict with BN counters."""
    _only_torch(backend)
    import torch

    spec = _tiny(name)
    state = init_weights(spec, seed=4, perturb_bn=True)
    path = tmp_path / "w.pt"
    face.write_file(state, path, spec, "torch")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pt"]  # no temporary file left behind
    back = face.read_file(path, spec, "torch")
    assert set(back) == set(state)
    for k in state:
        np.testing.assert_array_equal(back[k], state[k], err_msg=k)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    n_norms = sum(k.endswith("running_mean") for k in state)
    assert sum(k.endswith("num_batches_tracked") for k in raw) == n_norms
    # Our own model loads it with torch's API, strictly.
    model = face.build(spec, device="cpu")
    model.load_state_dict(raw, strict=True)
    x, _ = _batch(spec)
    np.testing.assert_allclose(face.forward(model, x), reference.run(spec, state, x)[0]["fc"],
                               rtol=0, atol=_tol(reference.run(spec, state, x)[0]["fc"]))


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model", "module.", "bf16"])
def test_read_checkpoint_layouts(backend, face, wrap, tmp_path):
    """A model's state_dict saved by torch.save, bare or wrapped, DataParallel-prefixed, or in bf16."""
    _only_torch(backend)
    import torch

    spec = _tiny("resnet20")
    model = _model(face, spec)
    sd = model.state_dict()
    if wrap == "module.":
        obj = {f"module.{k}": v for k, v in sd.items()}
    elif wrap == "bf16":
        obj = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()}
    elif wrap == "bare":
        obj = sd
    else:
        obj = {wrap: sd, "epoch": 3}
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    got = face.read_file(path, spec, "torch")
    want = face.to_canonical(model)
    assert set(got) == set(want)
    for k in want:
        if wrap == "bf16":
            np.testing.assert_allclose(got[k], want[k], rtol=1e-2, atol=1e-2, err_msg=k)
        else:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_refuse_mismatched_file(backend, face, tmp_path):
    """Missing, unexpected and mis-shaped tensors are all listed, and nothing is returned."""
    _only_torch(backend)
    import torch

    spec = _tiny("resnet20")
    sd = dict(_model(face, spec).state_dict())
    del sd["fc.bias"]
    sd["extra.weight"] = torch.zeros(3)
    sd["conv1.weight"] = torch.zeros(8, 3, 5, 5)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(WeightsError) as info:
        face.read_file(path, spec, "torch")
    text = str(info.value)
    for word in ("missing 1: fc.bias", "unexpected 1: extra.weight", "mis-shaped 1: conv1.weight"):
        assert word in text
    # convert refuses it whole too, and writes nothing.
    with pytest.raises(UserError, match="nothing loaded"):
        convert(path, tmp_path / "out.safetensors", arch=spec)
    assert not (tmp_path / "out.safetensors").exists()


def test_refuse_unreadable_files(backend, face, tmp_path):
    """Truncated, empty, foreign or object-pickling files: one line each, WeightsError."""
    _only_torch(backend)
    import torch

    spec = _tiny("resnet20")
    good = tmp_path / "good.pt"
    face.write_file(init_weights(spec), good, spec, "torch")
    data = good.read_bytes()
    cases = {"truncated.pt": data[: len(data) // 2], "empty.pt": b"", "text.pt": b"not a checkpoint\n" * 4}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    torch.save({"weights": [1, 2]}, tmp_path / "nested.pt")
    for name in [*cases, "tensor.pt", "nested.pt", "missing.pt"]:
        with pytest.raises(WeightsError) as info:
            face.read_file(tmp_path / name, spec, "torch")
        text = str(info.value)
        assert "\n" not in text and name in text, text
    with pytest.raises(WeightsError, match="format"):
        face.read_file(good, spec, "keras")


class _Opaque:  # weights_only=True refuses to unpickle a class like this
    pass


def test_refuse_pickled_objects(backend, face, tmp_path):
    _only_torch(backend)
    import torch

    path = tmp_path / "object.pt"
    torch.save({"conv1.weight": torch.zeros(1), "trap": _Opaque()}, path)
    with pytest.raises(WeightsError, match="refused") as info:
        face.read_file(path, _tiny("resnet20"), "torch")
    assert "\n" not in str(info.value)


def test_write_refuses_bad_state(backend, face, tmp_path):
    _only_torch(backend)
    spec = _tiny("resnet20")
    state = init_weights(spec)
    state["fc.weight"] = state["fc.weight"][:, :3]
    with pytest.raises(WeightsError, match="fc.weight"):
        face.write_file(state, tmp_path / "w.pt", spec, "torch")
    assert list(tmp_path.iterdir()) == []


# -- the training step ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet20", "gluon_resnet18_v2", "d2l_resnet18"])
def test_first_step_matches_reference(backend, face, name):
    """Loss before the update = the reference's train-mode cross-entropy; running stats as the spec says."""
    _only_torch(backend)
    spec = _tiny(name)
    model = _model(face, spec, seed=5)
    state = face.to_canonical(model)
    x, labels = _batch(spec)
    acts, ref_state = reference.run(spec, state, x, train=True)
    logits = acts["fc"]
    step = face.make_train_step(model, lr=0.05)
    loss = step(x, labels)
    expected = _cross_entropy(logits, labels)
    assert abs(loss - expected) <= 1e-5 * abs(expected), (loss, expected)
    after = face.to_canonical(model)
    for k in state:
        if k.endswith(("running_mean", "running_var")):
            np.testing.assert_allclose(after[k], ref_state[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert not model.training  # the step leaves the mode as it found it


def _fd_grad(model64, x, labels, name, index, eps=1e-6) -> float:
    """d loss / d param[index] by central differences, float64, train-mode BN."""
    import torch

    param = dict(model64.named_parameters())[name]
    xt = torch.from_numpy(x.astype(np.float64))
    model64.train()
    values = []
    with torch.no_grad():
        orig = param[index].item()
        for delta in (eps, -eps):
            param[index] = orig + delta
            values.append(_cross_entropy(model64(xt).numpy(), labels))  # the loss in NumPy, not torch's
        param[index] = orig
    return (values[0] - values[1]) / (2 * eps)


def test_sgd_update_convention(backend, face):
    """Two SGD steps with momentum and weight decay against float64 finite-difference gradients:
    b1 = g1 + wd * w0, w1 = w0 - lr * b1; b2 = m * b1 + g2 + wd * w1 (torch.optim.SGD)."""
    _only_torch(backend)
    spec = _tiny("resnet20")
    model = _model(face, spec, seed=6)
    x, labels = _batch(spec, n=4, size=(6, 6), seed=6)
    lr, m, wd = 0.1, 0.9, 0.01
    probes = [("conv1.weight", (1, 0, 1, 2)), ("layer1.0.bn1.weight", (3,)), ("layer2.0.downsample.0.weight",
                                                                           (5, 2, 0, 0)), ("fc.bias", (2,))]
    step = face.make_train_step(model, lr=lr, momentum=m, weight_decay=wd)
    buffers = []
    for _ in range(2):
        model64 = copy.deepcopy(model).double()
        w = {n: dict(model.named_parameters())[n][i].item() for n, i in probes}
        grads = {n: _fd_grad(model64, x, labels, n, i) for n, i in probes}
        step(x, labels)
        state = face.optimizer_state(step)
        w_after = {n: dict(model.named_parameters())[n][i].item() for n, i in probes}
        for n, i in probes:
            buf = float(state[f"momentum.{n}"][i])
            prev = m * buffers[-1][n] if buffers else 0.0
            want = prev + grads[n] + wd * w[n]
            assert buf == pytest.approx(want, rel=1e-4, abs=1e-7), (n, buf, want)
            assert w_after[n] - w[n] == pytest.approx(-lr * buf, rel=1e-3, abs=1e-7), n
        buffers.append({n: float(state[f"momentum.{n}"][i]) for n, i in probes})


def test_loss_decreases(backend, face):
    _only_torch(backend)
    spec = _tiny("resnet20")
    model = _model(face, spec, seed=7)
    x, labels = _batch(spec, n=8, size=(8, 8), seed=7)
    step = face.make_train_step(model, lr=0.05, momentum=0.9)
    losses = [step(x, labels) for _ in range(6)]
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.7 * losses[0], losses


def test_optimizer_state_resumes_identically(backend, face):
    _only_torch(backend)
    spec = _tiny("d2l_resnext18")
    x, labels = _batch(spec, n=4, size=(12, 12), seed=8)
    hyper = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)
    a = _model(face, spec, seed=8)
    step_a = face.make_train_step(a, **hyper)
    assert face.optimizer_state(step_a) == {}  # no buffers before the first step
    for _ in range(2):
        step_a(x, labels)
    saved_w, saved_opt = face.to_canonical(a), face.optimizer_state(step_a)
    assert set(saved_opt) == {f"momentum.{k}" for k, _ in a.named_parameters()}

    b = face.build(spec, device="cpu")
    face.from_canonical(b, saved_w)
    step_b = face.make_train_step(b, **hyper)
    face.load_optimizer_state(step_b, saved_opt)
    for _ in range(2):
        assert step_a(x, labels) == step_b(x, labels)
    wa, wb = face.to_canonical(a), face.to_canonical(b)
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)

    bad = dict(saved_opt)
    bad.pop("momentum.fc.bias")
    bad["momentum.conv1.weight"] = np.zeros(3, np.float32)
    with pytest.raises(WeightsError, match="missing 1: momentum.fc.bias.*mis-shaped 1: momentum.conv1.weight"):
        face.load_optimizer_state(step_b, bad)


def test_mixed_precision_step(backend, face):
    _only_torch(backend)
    spec = _tiny("resnet20")
    x, labels = _batch(spec, n=4, size=(8, 8), seed=9)
    fp32 = face.make_train_step(_model(face, spec, seed=9))(x, labels)
    bf16 = face.make_train_step(_model(face, spec, seed=9), precision="bf16")(x, labels)
    assert bf16 == pytest.approx(fp32, rel=3e-2)
    with pytest.raises(PrecisionUnavailable, match="fp16"):  # CPU autocast: bf16 only in this backend
        face.make_train_step(_model(face, spec), precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        face.make_train_step(_model(face, spec), precision="fp8")


# -- the bench ---------------------------------------------------------------------------------------

TIMING_KEYS = {"median_s", "min_s", "max_s", "stdev_s", "images_per_s", "repeats", "warmup", "batch"}


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_bench_contract(backend, face, mode):
    _only_torch(backend)
    spec = _tiny("d2l_resnet18")
    model = _model(face, spec)
    before = face.to_canonical(model)
    x, _ = _batch(spec, n=2, size=(32, 32))
    result = face.benchmark(model, x, mode=mode, repeats=2, warmup=1)
    assert TIMING_KEYS | {"mode", "precision", "practice"} <= set(result)
    assert result["mode"] == mode and result["precision"] == "fp32" and result["batch"] == 2
    assert "channels_last" in result["practice"]
    assert "peak_memory_mb" not in result  # CPU: torch reports no peak
    assert result["median_s"] > 0
    # The model is left as it was found: weights, statistics, mode, memory format.
    after = face.to_canonical(model)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    assert not model.training
    assert model.conv1.weight.is_contiguous()
    if mode == "infer":
        bf16 = face.benchmark(model, x, mode=mode, precision="bf16", repeats=1, warmup=1)
        assert "autocast(bf16)" in bf16["practice"]
    with pytest.raises(ValueError):
        face.benchmark(model, x, mode="eval")


def test_bench_native(backend, face):
    """torchvision's ResNet-50 through the same code path, warmup passed through."""
    _only_torch(backend)
    assert face.native == "torchvision.models.resnet50" and face.native_preset == "resnet50"
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    result = face.benchmark_native(x, mode="infer", repeats=1, warmup=3, num_classes=10)
    assert result["mode"] == "infer" and result["warmup"] == 3 and result["repeats"] == 1
    assert result["device"] == "cpu" and result["images_per_s"] > 0
