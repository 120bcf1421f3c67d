"""``build(ARCH, backend=B, weights=NAME)`` on GluonCV's checkpoints: ResNetV1b (gluoncv-v1b), ResNext (gluon-zoo).

GluonCV's own model classes make the checkpoints (random weights, random BN statistics) and its own logits, in
the mxnet environment (a subprocess where this is another backend's). Its package ``__init__`` needs opencv and
more, but resnetv1b.py and resnext.py import only mxnet, so they are loaded by path from the installed
distribution (``gluoncv_module``) without running that ``__init__``. A loopback server serves each ``.params``
inside a zip under the registry path of ``gluoncv/imagenet`` (as GluonCV publishes them), reached through
``RESNET_MULTI_WEIGHTS_MIRROR``; a user entry with the new entries' format and archive member carries the zip's
sha256. Every backend's model must give GluonCV's logits (the parity tolerance).

GluonCV is installed without dependencies in the mxnet nox session (noxfile.py), where these tests must not
skip; elsewhere a missing GluonCV skips them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

import resnet_multi
from resnet_multi.arch import presets
from resnet_multi.run import fetch
from resnet_multi.weights import registry
from resnet_multi.weights.canonical import WeightsError

from ..core.weights_server import serve
from .native_helpers import only, run_in_mxnet_env, tol

# our preset -> (GluonCV's model file, its constructor, the user entry's format)
MODELS = {"resnet18": ("resnetv1b", "resnet18_v1b", "gluoncv-v1b"),
          "resnext50_32x4d": ("resnext", "resnext50_32x4d", "gluon-zoo")}
INPUT = (2, 3, 32, 32)


def gluoncv_module(name: str):
    """gluoncv/model_zoo/<name>.py of the installed GluonCV, loaded by path (the package's __init__ is not run),
    or None where GluonCV is not installed."""
    found = importlib.util.find_spec("gluoncv")  # finds the package without importing it
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(list(found.submodule_search_locations)[0]) / "model_zoo" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_gluoncv_model_zoo_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gluoncv_model(arch: str, seed: int = 0):
    """GluonCV's own network for our preset ``arch``: random init (no download), random BN parameters and running
    statistics, a random fc bias."""
    import mxnet as mx
    from mxnet.gluon import nn

    file, constructor, _ = MODELS[arch]
    module = gluoncv_module(file)
    if module is None:
        raise ModuleNotFoundError("No module named 'gluoncv'")
    model = getattr(module, constructor)()
    model.initialize(mx.init.Xavier(), ctx=mx.cpu())
    model(mx.nd.zeros((1, *INPUT[1:])))  # ResNext's BNs infer their channels on the first call
    rng = np.random.default_rng(seed)

    def draw(param, low, high):
        param.set_data(mx.nd.array(rng.uniform(low, high, param.shape), dtype="float32"))

    def perturb(block):
        if isinstance(block, nn.BatchNorm):
            draw(block.gamma, 0.5, 1.5)
            draw(block.beta, -0.2, 0.2)
            draw(block.running_mean, -0.2, 0.2)
            draw(block.running_var, 0.5, 2.0)
        elif isinstance(block, nn.Dense):
            draw(block.bias, -0.1, 0.1)

    model.apply(perturb)
    return model


def _logits(model, x) -> np.ndarray:
    import mxnet as mx

    return model(mx.nd.array(x, dtype="float32")).asnumpy()  # inference: no autograd scope


# Run by the mxnet environment's interpreter (argv: out, the checkout): GluonCV's checkpoints, an input, its logits.
MAKE = r"""
import sys
import numpy as np

sys.path.insert(0, sys.argv[2])
from tests.backends.test_gluoncv_weights import INPUT, MODELS, _logits, gluoncv_model

out = sys.argv[1]
x = np.random.default_rng(1).standard_normal(INPUT).astype(np.float32)
np.save(out + "/x.npy", x)
for i, arch in enumerate(MODELS):
    net = gluoncv_model(arch, seed=i)
    net.save_parameters(out + "/" + arch + ".params")  # GluonCV's own file, as its downloads hold
    np.save(out + "/" + arch + ".logits.npy", _logits(net, x))
"""


@pytest.fixture(scope="module")
def gluoncv_checkpoints(tmp_path_factory):
    """(folder, input): ARCH.params and ARCH.logits.npy made by GluonCV in the mxnet environment."""
    out = tmp_path_factory.mktemp("gluoncv")
    run_in_mxnet_env(MAKE, out)
    return out, np.load(out / "x.npy")


def _zipped(params: bytes, member: str) -> bytes:
    """The .params inside a zip under the registry's member name, as GluonCV's model store publishes it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(member, params)
    return buffer.getvalue()


@pytest.mark.parametrize("arch", list(MODELS))
def test_build_with_gluoncv_weights(backend, face, arch, gluoncv_checkpoints, tmp_path, monkeypatch):
    out, x = gluoncv_checkpoints
    expected = np.load(out / f"{arch}.logits.npy")
    published = registry.get(arch, "gluoncv/imagenet")
    fmt = MODELS[arch][2]
    assert published.format == fmt
    member = published.data["archive"]["member"]  # resnet18_v1b-2d9d980c.params
    blob = _zipped((out / f"{arch}.params").read_bytes(), member)
    path = urlsplit(published.url).path  # /gluon/models/resnet18_v1b-2d9d980c.zip
    name = f"test/gluoncv-random-{arch}"
    monkeypatch.setenv(fetch.CACHE_VAR, str(tmp_path / "cache"))
    monkeypatch.delenv(fetch.OFFLINE_VAR, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    registry.clear_user_entries()
    try:
        with serve() as server:
            server.files[path] = blob
            monkeypatch.setenv(fetch.MIRROR_VAR, server.root)
            resnet_multi.register_weights({
                "name": name, "arch": arch, "url": published.url, "format": fmt,
                "sha256": hashlib.sha256(blob).hexdigest(), "archive": {"kind": "zip", "member": member},
                "preprocessing": "gluoncv/imagenet", "categories": "imagenet-1k"})
            model = resnet_multi.build(arch, backend=backend, device="cpu", weights=name)
            got = np.asarray(face.forward(model, x))
            assert server.requests[path] == 1
            assert fetch.canonical_path(registry.get(arch, name)).is_file()
            again = resnet_multi.build(arch, backend=backend, device="cpu", weights=name)
            assert server.requests[path] == 1  # from the cache: no request, no conversion
            np.testing.assert_array_equal(np.asarray(face.forward(again, x)), got)
    finally:
        registry.clear_user_entries()
    assert got.shape == expected.shape == (2, 1000)
    assert np.abs(got - expected).max() <= tol(expected), f"{backend} with {name} vs GluonCV's own {arch}"


mxnet_face = only("mxnet", "mxnet_face")


def _in_process_module():
    """GluonCV here (the mxnet environment): must be there in the mxnet nox session, else the test skips."""
    if gluoncv_module("resnetv1b") is None:
        if os.environ.get("RESNET_MULTI_REQUIRE_BACKEND") == "mxnet":
            pytest.fail("gluoncv is not installed in the mxnet environment (noxfile.py installs it, --no-deps)")
        pytest.skip("gluoncv is not installed here")


def test_gluoncv_v1b_file_round_trip(mxnet_face, gluoncv_checkpoints, tmp_path):
    """read 'gluoncv-v1b' -> write it back: GluonCV's own ResNetV1b loads our file strictly and gives its logits;
    the other layout's file is refused whole, naming what is missing."""
    _in_process_module()
    out, x = gluoncv_checkpoints
    spec = presets.get("resnet18")
    state = mxnet_face.read_file(out / "resnet18.params", spec, "gluoncv-v1b")
    written = tmp_path / "ours.params"
    mxnet_face.write_file(state, written, spec, "gluoncv-v1b")
    import mxnet as mx

    net = gluoncv_module("resnetv1b").resnet18_v1b()
    net.load_parameters(str(written), ctx=mx.cpu())  # strict: no parameter missing, none extra
    np.testing.assert_allclose(_logits(net, x), np.load(out / "resnet18.logits.npy"), rtol=0, atol=1e-6)
    with pytest.raises(WeightsError, match="missing") as info:  # ResNext's features.N.M.body.K names
        mxnet_face.read_file(out / "resnext50_32x4d.params", presets.get("resnext50_32x4d"), "gluoncv-v1b")
    assert "\n" not in str(info.value)
