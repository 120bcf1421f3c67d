"""``predict photo.png --model resnet18 --weights-file entries.toml --weights NAME --backend B --json``.

torchvision itself makes the checkpoint (random weights, random BN statistics), in the torch environment
(a subprocess where this is another backend's); the loopback server serves it under the registry path of
``torchvision/IMAGENET1K_V1`` for resnet18, reached through ``RESNET_MULTI_WEIGHTS_MIRROR``; the user entry
in entries.toml carries its sha256 and reuses that entry's preprocessing. The photo is a small synthetic PNG
written here with Pillow. Every backend's top-5 (indices, and probabilities to 1e-4) must be torchvision's own
model with torchvision's own transforms on that file (in the torch environment: here, in-process), and the
same computation through the canonical state and the NumPy reference (everywhere).
"""

from __future__ import annotations

import hashlib
import json
from urllib.parse import urlsplit

import numpy as np
import pytest

from resnet_multi.arch import presets
from resnet_multi.cli.commands import main
from resnet_multi.numerics import reference
from resnet_multi.run import fetch
from resnet_multi.run.predict import softmax
from resnet_multi.weights import preprocess, registry

from ..core.weights_server import serve
from .native_helpers import run_in_torch_env

PIL = pytest.importorskip("PIL.Image", reason="the predict extra (Pillow) is not installed")

NAME = "test/torchvision-random-predict"
# In the torch environment: torchvision's resnet18 with random BN statistics (test_torch_native's helper),
# its checkpoint, and its top-5 on the photo with torchvision's own transforms.
MAKE = r"""
import json, sys
import torch, torchvision
from PIL import Image

sys.path.insert(0, sys.argv[2])
from tests.backends.test_torch_native import _torchvision_model

out = sys.argv[1]
net = _torchvision_model("resnet18")
torch.save(net.state_dict(), out + "/resnet18.pth")
x = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()(Image.open(out + "/photo.png").convert("RGB"))
with torch.no_grad():
    probs = torch.softmax(net(x[None]).double(), dim=1)[0]
top = probs.topk(5)
json.dump({"index": top.indices.tolist(), "probability": top.values.tolist()}, open(out + "/top5.json", "w"))
"""


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(the folder with photo.png, the .pth bytes, torchvision's top-5 on the photo)."""
    out = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(11)
    PIL.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(out / "photo.png")
    run_in_torch_env(MAKE, out)
    return out, (out / "resnet18.pth").read_bytes(), json.loads((out / "top5.json").read_text())


def test_predict_matches_torchvision(backend, face, made, tmp_path, monkeypatch, capsys):
    folder, blob, torchvision_top = made
    published = registry.get("resnet18", "torchvision/IMAGENET1K_V1")
    path = urlsplit(published.url).path
    monkeypatch.setenv(fetch.CACHE_VAR, str(tmp_path / "cache"))
    monkeypatch.delenv(fetch.OFFLINE_VAR, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    entries = tmp_path / "entries.toml"
    entries.write_text(f'[[weights]]\nname = "{NAME}"\narch = "resnet18"\nurl = "{published.url}"\n'
                       f'sha256 = "{hashlib.sha256(blob).hexdigest()}"\nformat = "torch"\n'
                       'preprocessing = "torchvision/IMAGENET1K_V1"\ncategories = "imagenet-1k"\n')
    photo = folder / "photo.png"
    registry.clear_user_entries()
    try:
        with serve() as server:
            server.files[path] = blob
            monkeypatch.setenv(fetch.MIRROR_VAR, server.root)
            code = main(["predict", str(photo), "--model", "resnet18", "--weights-file", str(entries), "--weights",
                         NAME, "--backend", backend, "--device", "cpu", "--json", "--quiet"])
            out, err = capsys.readouterr()
            assert code == 0, err
            assert server.requests[path] == 1
            state = fetch.load("resnet18", NAME)  # from the cache
    finally:
        registry.clear_user_entries()
    report = json.loads(out)
    assert (report["model"], report["weights"], report["backend"]) == ("resnet18", NAME, backend)
    [item] = report["predictions"]
    got_index = [t["index"] for t in item["top"]]
    got_prob = np.array([t["probability"] for t in item["top"]])
    categories = registry.categories("imagenet-1k")
    assert [t["label"] for t in item["top"]] == [categories[i] for i in got_index]

    assert got_index == torchvision_top["index"], f"{backend} vs torchvision's own model and transforms"
    np.testing.assert_allclose(got_prob, torchvision_top["probability"], atol=1e-4)
    if backend == "torch":  # torchvision is here: its model on its transforms, in this process as well
        import torch
        import torchvision

        from .test_torch_native import _torchvision_model

        net = _torchvision_model("resnet18")
        x = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()(PIL.open(photo).convert("RGB"))
        with torch.no_grad():
            probs = torch.softmax(net(x[None]).double(), dim=1)[0].numpy()
    else:  # the same computation through the canonical state and the NumPy reference
        x = preprocess.load_images([photo], published.preprocessing)
        probs = softmax(reference.run(presets.get("resnet18"), state, x)[0]["fc"])[0]
    want = np.argsort(-probs, kind="stable")[:5]
    assert got_index == want.tolist()
    np.testing.assert_allclose(got_prob, probs[want], atol=1e-4)


def test_torchvision_preprocessing(backend, face):
    if backend != "torch":
        pytest.skip("torchvision is in the torch environment")
    from ..core.test_predict import check_torchvision_preprocessing

    for arch, name in (("resnet18", "torchvision/IMAGENET1K_V1"), ("resnet50", "torchvision/IMAGENET1K_V2")):
        check_torchvision_preprocessing(arch, name)


def test_train_from_pretrained_with_a_new_head(backend, face, tmp_path, capsys):
    """train --weights FILE --num-classes K: the pretrained trunk, a head of K classes from the spec's init.

    A learning rate of 1e-12 leaves the weights as they started (the BN statistics still move)."""
    from dataclasses import replace

    from resnet_multi.weights.canonical import init_weights, load_state, save_state

    spec = presets.get("resnet20")
    pretrained = init_weights(spec, seed=5, perturb_bn=True)
    weights = save_state(pretrained, tmp_path / "pretrained.safetensors", spec)
    out = tmp_path / "run"
    code = main(["train", "resnet20", "--backend", backend, "--dataset", "digits", "--epochs", "1", "--resize", "8",
                 "--batch-size", "256", "--lr", "1e-12", "--device", "cpu", "--weights", str(weights),
                 "--num-classes", "12", "--out", str(out), "--quiet", "--json"])
    _, err = capsys.readouterr()
    assert code == 0, err
    twelve = replace(spec, num_classes=12)
    with_head = load_state(out / "checkpoint.safetensors", None)
    fresh = init_weights(twelve, seed=0)
    assert with_head["fc.weight"].shape == (12, 64)
    for k in ("conv1.weight", "layer3.2.conv2.weight", "fc.weight", "fc.bias"):
        want = fresh[k] if k.startswith("fc.") else pretrained[k]
        np.testing.assert_allclose(with_head[k], want, atol=1e-6, err_msg=k)
