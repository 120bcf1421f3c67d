"""``predict`` without a framework: the NumPy preprocessing, the JSON report, the one-line errors.

The weights are a canonical file made here, served by the loopback server (tests/core/weights_server.py)
through the mirror variable, named by a user entry with the file's sha256; the "backend" is the NumPy
reference behind a stand-in face, so no framework is needed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest

from resnet_multi import faces
from resnet_multi.arch import presets
from resnet_multi.cli.commands import main
from resnet_multi.numerics import reference
from resnet_multi.run import fetch
from resnet_multi.run import predict as predict_run
from resnet_multi.weights import preprocess, registry
from resnet_multi.weights.canonical import head_names, init_weights, save_state, with_new_head
from resnet_multi.weights.fold import fold_state

from .weights_server import serve

PIL = pytest.importorskip("PIL.Image", reason="the predict extra (Pillow) is not installed")

ARCH = "resnet20"  # 10 classes, a CIFAR stem: small in float64
PATH = "/models/resnet20-predict.safetensors"
LABELS = [f"class-{i}" for i in range(10)]
PRE = {"resize": 36, "crop": 32, "input_size": 32, "interpolation": "bilinear", "antialias": True,
       "channel_order": "RGB", "value_range": [0.0, 1.0], "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3],
       "function": "a test's", "source": "this test"}


class ReferenceFace:
    """A face whose model is the NumPy reference (core tests have no framework)."""

    name = "torch"

    def module(self, part):
        return None

    def build(self, spec, device="auto", seed=0, state=None):
        return spec, state

    def build_for_inference(self, spec, device="auto", state=None, compile=True, seed=0):
        return fold_state(spec, state)  # predict runs the folded form: the reference runs it too

    def forward(self, model, x, train=False):
        return reference.run(model[0], model[1], x)[0]["fc"]

    def device_of(self, model):
        return "cpu"

    def version(self):
        return "numpy"


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A user entries file naming a canonical resnet20 file on the loopback server; the image; the state."""
    monkeypatch.setenv(fetch.CACHE_VAR, str(tmp_path / "cache"))
    monkeypatch.delenv(fetch.OFFLINE_VAR, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setattr(faces, "backend", lambda name: ReferenceFace())
    spec = presets.get(ARCH)
    state = init_weights(spec, seed=3, perturb_bn=True)
    blob = save_state(state, tmp_path / "w.safetensors", spec).read_bytes()
    pre = "\n".join(f"{k} = {json.dumps(v)}" for k, v in PRE.items())
    entries = tmp_path / "entries.toml"
    entries.write_text(f'[[weights]]\nname = "test/predict"\narch = "{ARCH}"\nurl = "https://example.org{PATH}"\n'
                       f'sha256 = "{hashlib.sha256(blob).hexdigest()}"\nformat = "canonical"\n'
                       f'categories = {json.dumps(LABELS)}\n[weights.preprocessing]\n{pre}\n')
    image = tmp_path / "photo.png"
    PIL.fromarray(np.random.default_rng(5).integers(0, 256, (30, 45, 3), dtype=np.uint8)).save(image)
    registry.clear_user_entries()
    with serve() as server:
        server.files[PATH] = blob
        monkeypatch.setenv(fetch.MIRROR_VAR, server.root)
        yield entries, image, state, server
    registry.clear_user_entries()


def run_cli(capsys, *args):
    code = main(["predict", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_json(served, capsys):
    entries, image, state, server = served
    code, out, err = run_cli(capsys, image, "--model", ARCH, "--weights-file", entries, "--weights", "test/predict",
                             "--backend", "torch", "--top", "3", "--json", "--quiet")
    assert code == 0, err
    report = json.loads(out)  # strict JSON
    assert {"predictions", "model", "weights", "backend", "preprocessing"} <= set(report)
    assert (report["model"], report["weights"], report["backend"]) == (ARCH, "test/predict", "torch")
    assert report["preprocessing"]["crop"] == 32
    [item] = report["predictions"]
    assert item["image"] == str(image) and len(item["top"]) == 3
    assert all(set(t) == {"index", "label", "probability"} for t in item["top"])
    x = preprocess.preprocess(np.asarray(PIL.open(image).convert("RGB")), PRE)[None]
    logits = reference.run(presets.get(ARCH), state, x)[0]["fc"]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    want = np.argsort(-probs[0], kind="stable")[:3]
    assert [t["index"] for t in item["top"]] == want.tolist()
    assert [t["label"] for t in item["top"]] == [LABELS[i] for i in want]
    np.testing.assert_allclose([t["probability"] for t in item["top"]], probs[0][want], rtol=1e-6)
    assert server.requests[PATH] == 1


@pytest.mark.parametrize("case, expected", [
    ("missing", "no such image file"),
    ("unreadable", "not an image Pillow can read"),
    ("unknown", "unknown weights 'test/nope'"),
    ("top", "--top 11: expected 1 to 10"),
])
def test_predict_errors_are_one_line(served, capsys, tmp_path, case, expected):
    entries, image, _, server = served
    weights, top = "test/predict", "2"
    if case == "missing":
        image = tmp_path / "nope.png"
    elif case == "unreadable":
        image = tmp_path / "bad.png"
        image.write_bytes(b"\x89PNG not really")
    elif case == "unknown":
        weights = "test/nope"
    else:
        top = "11"
    code, out, err = run_cli(capsys, image, "--model", ARCH, "--weights-file", entries, "--weights", weights,
                             "--backend", "torch", "--top", top, "--json")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and expected in err, err
    assert server.requests[PATH] == 0  # every user error before any download


def test_caffe_style_preprocessing_by_hand():
    pre = registry.get("resnet50_v1", "keras/imagenet").preprocessing
    img = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    got = preprocess.preprocess(img, pre)
    bgr = img[..., ::-1].astype(np.float64)
    want = np.stack([bgr[..., c] - m for c, m in enumerate((103.939, 116.779, 123.68))])
    assert got.dtype == np.float32 and got.shape == (3, 224, 224)
    np.testing.assert_allclose(got, want, atol=1e-4)
    # Another size is resized whole to the input (the source names no resize or crop).
    assert preprocess.preprocess(img[:100, :150], pre).shape == (3, 224, 224)


@pytest.mark.parametrize("size, out, interpolation", [((48, 64), (256, 341), "bilinear"),
                                                      ((301, 200), (101, 67), "bilinear"),
                                                      ((300, 200), (120, 77), "bicubic"),
                                                      ((57, 33), (20, 91), "nearest")])
def test_resize_is_pillows(size, out, interpolation):
    img = np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8)
    filters = {"bilinear": PIL.BILINEAR, "bicubic": PIL.BICUBIC, "nearest": PIL.NEAREST}
    want = np.asarray(PIL.fromarray(img).resize(out[::-1], filters[interpolation]))
    np.testing.assert_array_equal(preprocess.resize(img, *out, interpolation), want)


@pytest.mark.parametrize("arch, name", [("resnet18", "torchvision/IMAGENET1K_V1"),
                                        ("resnet50", "torchvision/IMAGENET1K_V2")])
def test_torchvision_preprocessing(arch, name):
    """Where torchvision is here (the torch environment runs it again in tests/backends)."""
    check_torchvision_preprocessing(arch, name)


def check_torchvision_preprocessing(arch: str, name: str) -> None:
    """The entry's preprocessing in NumPy equals torchvision's own transforms on PIL images of several shapes."""
    models = pytest.importorskip("torchvision.models")
    transforms = models.get_weight(f"ResNet{arch[len('resnet'):]}_Weights.{name.split('/')[1]}").transforms()
    pre = registry.get(arch, name).preprocessing
    for i, shape in enumerate([(48, 64), (64, 48), (301, 233), (224, 224)]):
        img = np.random.default_rng(i).integers(0, 256, (*shape, 3), dtype=np.uint8)
        want = transforms(PIL.fromarray(img)).numpy()
        np.testing.assert_allclose(preprocess.preprocess(img, pre), want, atol=1e-6, err_msg=f"{shape}")


def test_new_head_keeps_every_other_tensor():
    spec = presets.get(ARCH)
    pretrained = init_weights(spec, seed=4, perturb_bn=True)
    five = replace(spec, num_classes=5)
    state = with_new_head(pretrained, five, seed=9)
    fresh = init_weights(five, seed=9)
    assert sorted(head_names(five)) == ["fc.bias", "fc.weight"]
    assert state["fc.weight"].shape == (5, 64)
    for k in state:
        np.testing.assert_array_equal(state[k], fresh[k] if k.startswith("fc.") else pretrained[k])


def test_agreement():
    p = predict_run.softmax(np.array([[1.0, 2.0, 3.0]]))
    q = predict_run.softmax(np.array([[1.0, 2.0, 3.0 + 1e-9]]))
    a = predict_run.agreement({"torch": p, "mxnet": q}, top=2)
    assert a["same_top"] and a["max_probability_diff"] < 1e-9
    assert not predict_run.agreement({"torch": p, "mxnet": p[:, ::-1]}, top=1)["same_top"]
