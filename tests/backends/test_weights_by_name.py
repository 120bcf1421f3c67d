"""``build("resnet18", backend=B, weights=NAME)``: a torchvision checkpoint, downloaded, converted, cached.

torchvision itself makes the checkpoint (random weights, random BN statistics) and its own logits,
in the torch environment (a subprocess where this is another backend's); a loopback server on
127.0.0.1 serves it under the registry path of ``torchvision/IMAGENET1K_V1`` for resnet18, reached
through ``RESNET_MULTI_WEIGHTS_MIRROR``; a user entry carries the file's sha256. Every backend's
model must give torchvision's logits (the parity tolerance), and a second build makes no request.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

import resnet_multi
from resnet_multi.run import fetch
from resnet_multi.weights import registry

from ..core.weights_server import serve
from .native_helpers import run_in_torch_env, tol

NAME = "test/torchvision-random"
# Run by the torch environment's interpreter: torchvision's own resnet18, random BN statistics (the helper
# of test_torch_native.py), its checkpoint, an input and torchvision's logits for it.
MAKE = r"""
import sys
import numpy as np
import torch

sys.path.insert(0, sys.argv[2])
from tests.backends.test_torch_native import _torchvision_model

out = sys.argv[1]
net = _torchvision_model("resnet18")
torch.save(net.state_dict(), out + "/resnet18.pth")
x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
np.save(out + "/x.npy", x)
with torch.no_grad():
    np.save(out + "/logits.npy", net(torch.from_numpy(x)).numpy())
    # torchvision's own backbone outputs: layer2's and layer4's maps, and the pooled features.
    y = net.maxpool(net.relu(net.bn1(net.conv1(torch.from_numpy(x)))))
    y = net.layer2(net.layer1(y))
    np.save(out + "/layer2.npy", y.numpy())
    y = net.layer4(net.layer3(y))
    np.save(out + "/layer4.npy", y.numpy())
    np.save(out + "/pooled.npy", torch.flatten(net.avgpool(y), 1).numpy())
"""


@pytest.fixture(scope="module")
def torchvision_checkpoint(tmp_path_factory):
    """(the .pth bytes, the input, torchvision's logits, its backbone's outputs), made by torchvision in the
    torch environment."""
    out = tmp_path_factory.mktemp("torchvision")
    run_in_torch_env(MAKE, out)
    backbone = {name: np.load(out / f"{name}.npy") for name in ("layer2", "layer4", "pooled")}
    return (out / "resnet18.pth").read_bytes(), np.load(out / "x.npy"), np.load(out / "logits.npy"), backbone


def test_build_with_weights_by_name(backend, face, torchvision_checkpoint, tmp_path, monkeypatch):
    blob, x, expected, backbone = torchvision_checkpoint
    published = registry.get("resnet18", "torchvision/IMAGENET1K_V1")
    path = urlsplit(published.url).path  # /models/resnet18-f37072fd.pth
    monkeypatch.setenv(fetch.CACHE_VAR, str(tmp_path / "cache"))
    monkeypatch.delenv(fetch.OFFLINE_VAR, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    registry.clear_user_entries()
    try:
        with serve() as server:
            server.files[path] = blob
            monkeypatch.setenv(fetch.MIRROR_VAR, server.root)
            resnet_multi.register_weights({
                "name": NAME, "arch": "resnet18", "url": published.url, "format": "torch",
                "sha256": hashlib.sha256(blob).hexdigest(), "preprocessing": "torchvision/IMAGENET1K_V1",
                "categories": "imagenet-1k"})
            model = resnet_multi.build("resnet18", backend=backend, device="cpu", weights=NAME)
            got = np.asarray(face.forward(model, x))
            assert server.requests[path] == 1
            cached = fetch.canonical_path(registry.get("resnet18", NAME))
            assert cached.is_file()
            again = resnet_multi.build("resnet18", backend=backend, device="cpu", weights=NAME)
            assert server.requests[path] == 1  # from the cache: no request, no conversion
            np.testing.assert_array_equal(np.asarray(face.forward(again, x)), got)
            by_path = resnet_multi.build("resnet18", backend=backend, device="cpu", weights=Path(cached))
            np.testing.assert_array_equal(np.asarray(face.forward(by_path, x)), got)
            # The same weights as a backbone, from the cache: torchvision's own maps and pooled features.
            features = resnet_multi.build("resnet18", backend=backend, device="cpu", weights=NAME,
                                          features_only=True, out_indices=(2, 4))
            maps = face.forward(features, x)
            pooled = face.forward(resnet_multi.build("resnet18", backend=backend, device="cpu", weights=NAME,
                                                     num_classes=0), x)
            assert server.requests[path] == 1
    finally:
        registry.clear_user_entries()
    assert got.shape == expected.shape == (2, 1000)
    limit = tol(expected)
    assert np.abs(got - expected).max() <= limit, f"{backend} with {NAME} vs torchvision's own resnet18"
    for name, ours in (("layer2", maps[0]), ("layer4", maps[1]), ("pooled", pooled)):
        theirs = backbone[name]
        assert ours.shape == theirs.shape, name
        assert np.abs(ours - theirs).max() <= tol(theirs), f"{backend}: {name} vs torchvision's own"
    info = resnet_multi.weights_info("resnet18", "torchvision/IMAGENET1K_V1")
    assert info.preprocessing["crop"] == 224 and len(info.categories) == 1000
