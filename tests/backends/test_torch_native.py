"""Tests only the torch backend has: its spellings, torchvision's zoo, .pt files read by torch, its modules.

What every backend promises (devices, build, file round trips, the SGD step,
the optimizer state, the bench) is tested once for all four in test_contract.py;
here is what needs torch's own API. Each test skips unless the backend under
test is torch (fixture ``torch_face``), so the file is collected everywhere but
runs (and must pass) only in the torch environment. torch itself is imported
inside the tests, never at module level.
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

ZOO = ["resnet18", "resnet50", "resnext50_32x4d"]  # torchvision.models builders of the same names
ODD_SIZE = (3, 45, 51)

torch_face = only("torch", "torch_face")


# -- devices, build and the step in torch's terms ---------------------------------------------------


def test_device_spelling(torch_face):
    """torch's spelling: 'cpu' and 'cuda:N', as many as torch.cuda counts."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert torch_face.devices() == ["cpu", *(f"cuda:{i}" for i in range(gpus))]
    assert torch_face.resolve_device("CPU:0") == "cpu"
    assert torch_face.resolve_device("auto") == ("cuda:0" if gpus else "cpu")


def test_build_and_step_in_torch_terms(torch_face):
    """A built model is in eval mode with BN counters at zero; a step leaves that mode as it found it,
    and its momentum buffers are exactly torch's named parameters."""
    spec = tiny("gluon_resnet18_v2")
    net = torch_face.build(spec, device="cpu", state=init_weights(spec, seed=3, perturb_bn=True))
    counters = [v for k, v in net.state_dict().items() if k.endswith("num_batches_tracked")]
    assert counters and all(int(v) == 0 for v in counters)
    assert not net.training and torch_face.device_of(net) == "cpu"
    step = torch_face.make_train_step(net, lr=0.05, momentum=0.9)
    step(*batch(spec))
    assert not net.training  # the step leaves the mode as it found it
    assert set(torch_face.optimizer_state(step)) == {f"momentum.{k}" for k, _ in net.named_parameters()}


# -- torchvision's zoo -----------------------------------------------------------------------


def _torchvision_model(arch: str, seed: int = 0):
    """torchvision's own model, random init (no download), random BN affine and running statistics."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)(weights=None)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
                m.running_mean.uniform_(-0.2, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
    return net.eval()


@pytest.mark.parametrize("arch", ZOO)
def test_torchvision_import(torch_face, arch, tmp_path):
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
    ours = torch_face.build(spec, device="cpu", state=state)
    got = torch_face.forward(ours, x)
    ref = reference.run(spec, state, x)[0]["fc"]
    limit = tol(expected)
    assert np.abs(got - expected).max() <= limit, f"our torch model vs torchvision {arch}"
    assert np.abs(ref - expected).max() <= limit, f"NumPy reference vs torchvision {arch}"


@pytest.mark.parametrize("arch", ["resnet18", "resnext50_32x4d"])
def test_torchvision_export(torch_face, arch, tmp_path):
    """canonical -> .pth (convert, i.e. write_file): torchvision's model loads it strictly and agrees."""
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
    ours = torch_face.build(spec, device="cpu", state=state)
    x = np.random.default_rng(3).standard_normal((2, *ODD_SIZE)).astype(np.float32)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    got = torch_face.forward(ours, x)
    assert np.abs(got - expected).max() <= tol(expected)


# -- our native files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet20", "gluon_resnet18_v2", "d2l_resnext18"])
def test_native_file_is_a_state_dict(torch_face, name, tmp_path):
    """write_file's .pt is a torchvision-style state_dict with BN counters; our model loads it with torch's API,
    strictly. (That read_file gives the state back exactly: test_contract.py.)"""
    import torch

    spec = tiny(name)
    state = init_weights(spec, seed=4, perturb_bn=True)
    path = tmp_path / "w.pt"
    torch_face.write_file(state, path, spec, "torch")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    n_norms = sum(k.endswith("running_mean") for k in state)
    assert sum(k.endswith("num_batches_tracked") for k in raw) == n_norms
    net = torch_face.build(spec, device="cpu")
    net.load_state_dict(raw, strict=True)
    x, _ = batch(spec)
    expected = reference.run(spec, state, x)[0]["fc"]
    np.testing.assert_allclose(torch_face.forward(net, x), expected, rtol=0, atol=tol(expected))


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model", "module.", "bf16"])
def test_read_checkpoint_layouts(torch_face, wrap, tmp_path):
    """A model's state_dict saved by torch.save, bare or wrapped, DataParallel-prefixed, or in bf16."""
    import torch

    spec = tiny("resnet20")
    net = model(torch_face, spec)
    sd = net.state_dict()
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
    got = torch_face.read_file(path, spec, "torch")
    want = torch_face.to_canonical(net)
    assert set(got) == set(want)
    for k in want:
        if wrap == "bf16":
            np.testing.assert_allclose(got[k], want[k], rtol=1e-2, atol=1e-2, err_msg=k)
        else:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_refuse_mismatched_file(torch_face, tmp_path):
    """Missing, unexpected and mis-shaped tensors are all listed, and nothing is returned."""
    import torch

    spec = tiny("resnet20")
    sd = dict(model(torch_face, spec).state_dict())
    del sd["fc.bias"]
    sd["extra.weight"] = torch.zeros(3)
    sd["conv1.weight"] = torch.zeros(8, 3, 5, 5)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(WeightsError) as info:
        torch_face.read_file(path, spec, "torch")
    text = str(info.value)
    for word in ("missing 1: fc.bias", "unexpected 1: extra.weight", "mis-shaped 1: conv1.weight"):
        assert word in text
    # convert refuses it whole too, and writes nothing.
    with pytest.raises(UserError, match="nothing loaded"):
        convert(path, tmp_path / "out.safetensors", arch=spec)
    assert not (tmp_path / "out.safetensors").exists()


def test_refuse_foreign_pickles(torch_face, tmp_path):
    """torch.save files that hold no state_dict (a bare tensor, nested lists): one line each, WeightsError.
    (Truncated, empty, text and missing files, and foreign formats: test_contract.py.)"""
    import torch

    spec = tiny("resnet20")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    torch.save({"weights": [1, 2]}, tmp_path / "nested.pt")
    for name in ("tensor.pt", "nested.pt"):
        with pytest.raises(WeightsError) as info:
            torch_face.read_file(tmp_path / name, spec, "torch")
        text = str(info.value)
        assert "\n" not in text and name in text, text


class _Opaque:  # weights_only=True refuses to unpickle a class like this
    pass


def test_refuse_pickled_objects(torch_face, tmp_path):
    import torch

    path = tmp_path / "object.pt"
    torch.save({"conv1.weight": torch.zeros(1), "trap": _Opaque()}, path)
    with pytest.raises(WeightsError, match="refused") as info:
        torch_face.read_file(path, tiny("resnet20"), "torch")
    assert "\n" not in str(info.value)


# -- the bench ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_bench_leaves_the_torch_model(torch_face, mode):
    """channels_last and the train step are the bench's own: the model keeps eval mode and its memory format."""
    spec = tiny("d2l_resnet18")
    net = model(torch_face, spec)
    x, _ = batch(spec, n=2, size=(32, 32))
    torch_face.benchmark(net, x, mode=mode, repeats=1, warmup=1)
    assert not net.training
    assert net.conv1.weight.is_contiguous()


def test_bench_native(torch_face):
    """torchvision's ResNet-50 through the same code path, warmup passed through."""
    assert torch_face.native == "torchvision.models.resnet50" and torch_face.native_preset == "resnet50"
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    result = torch_face.benchmark_native(x, mode="infer", repeats=1, warmup=3, num_classes=10)
    check_bench(result, "infer", 1)
    assert result["warmup"] == 3 and result["repeats"] == 1
    assert result["device"] == "cpu" and "channels_last" in result["practice"]
