"""The weights registry (resnet_multi/weights/zoo.toml): complete, on the sources' own hosts, checked on load.

No framework and no network: the facts were read from the frameworks' sources once
(docs/weights.md); these tests hold the table to what those sources publish.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resnet_multi.arch import presets
from resnet_multi.cli.commands import main
from resnet_multi.run.convert import FORMATS, KERAS_APPLICATIONS
from resnet_multi.weights import registry
from resnet_multi.weights.registry import RegistryError, UnknownWeights

TORCHVISION = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
               "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]
# torchvision 0.29 publishes a second ImageNet recipe (IMAGENET1K_V2) for these, and only V1 for the rest.
TORCHVISION_V2 = {"resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2",
                  "wide_resnet101_2"}
GLUON = [f"gluon_resnet{d}_v{v}" for v in (1, 2) for d in (18, 34, 50, 101, 152)]
# GluonCV's ImageNet files whose network is one of our presets: ResNetV1b (gluoncv/model_zoo/resnetv1b.py) is
# torchvision's ResNet, its ResNext (resnext.py) torchvision's ResNeXt; resnext101_32x4d has no preset, the
# CIFAR nets (cifarresnet.py: no ReLU after the stem's BN) equal none of ours.
GLUONCV = {"resnet18": "resnet18_v1b", "resnet34": "resnet34_v1b", "resnet50": "resnet50_v1b",
           "resnet101": "resnet101_v1b", "resnet152": "resnet152_v1b", "resnext50_32x4d": "resnext50_32x4d",
           "resnext101_64x4d": "resnext101_64x4d"}
GLUON_HOST = "https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/gluon/models/"
# family prefix of a name -> (the URL prefix on the source's own host, the format, the backend owning it)
HOSTS = {
    "torchvision": ("https://download.pytorch.org/models/", "torch", "torch"),
    "keras": ("https://storage.googleapis.com/tensorflow/keras-applications/resnet/", "keras-applications",
              "tensorflow"),
    "gluon": (GLUON_HOST, "gluon-zoo", "mxnet"),
    "gluoncv": (GLUON_HOST, None, "mxnet"),  # format: gluoncv-v1b for ResNetV1b, gluon-zoo (its layout) for ResNext
}
REQUIRED = {"name", "arch", "url", "format", "categories", "source", "checksum", "preprocessing"}
REQUIRED_PRE = {"input_size", "channel_order", "value_range", "mean", "function", "source"}
ENTRIES = registry.entries()


def family(entry) -> str:
    return entry.name.split("/", 1)[0]


def test_every_preset_of_the_three_families_is_covered():
    names = {(e.arch, e.name) for e in ENTRIES}
    want = ({(a, "torchvision/IMAGENET1K_V1") for a in TORCHVISION}
            | {(a, "torchvision/IMAGENET1K_V2") for a in TORCHVISION_V2}
            | {(a, "keras/imagenet") for a in KERAS_APPLICATIONS}
            | {(a, "gluon/imagenet") for a in GLUON}
            | {(a, "gluoncv/imagenet") for a in GLUONCV})
    assert names == want
    assert len(ENTRIES) == len(names) == 17 + 6 + 10 + 7  # every entry once: no (arch, name) twice


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: f"{e.arch}:{e.name}")
def test_every_entry_has_every_field(entry):
    data = entry.to_dict()
    assert REQUIRED <= set(data)
    assert REQUIRED_PRE <= set(data["preprocessing"])
    assert set(data["checksum"]) == {"algorithm", "value", "of", "source"}
    assert data["arch"] in presets.names()
    # what a source does not publish is left out, and the note says so
    if "accuracy" not in data:
        assert "accuracy" in data["note"]
    if "resize" not in data["preprocessing"]:
        assert "resize" in data["note"]
    for source in (data["source"], data["checksum"]["source"], data["preprocessing"]["source"]):
        assert re.match(r"^(torchvision|torch|keras|mxnet|gluoncv) [0-9a-z.]+: |^the hash in the file name",
                        source), source
        assert ".py" in source  # names the file it was read from


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: f"{e.arch}:{e.name}")
def test_every_url_is_on_its_sources_host_and_carries_its_checksum(entry):
    prefix = HOSTS[family(entry)][0]
    assert entry.url.startswith(prefix)
    file = urlsplit(entry.url).path.rsplit("/", 1)[1]
    checksum = entry.data["checksum"]
    if family(entry) == "torchvision":  # torch.hub's HASH_REGEX: the sha256 prefix is in the file name
        assert checksum["algorithm"] == "sha256-prefix"
        assert re.search(r"-([a-f0-9]*)\.", file).group(1) == checksum["value"]
    elif family(entry) == "keras":
        assert checksum["algorithm"] == "md5" and len(checksum["value"]) == 32
        assert file.endswith("_weights_tf_dim_ordering_tf_kernels.h5")  # include_top=True, not _notop
        assert "include_top=True" in entry.data["note"]
    else:  # model_store.py (mxnet's and GluonCV's): {name}-{sha1[:8]}.zip holding {name}-{sha1[:8]}.params
        assert checksum["algorithm"] == "sha1" and len(checksum["value"]) == 40
        name = GLUONCV[entry.arch] if family(entry) == "gluoncv" else entry.arch.removeprefix("gluon_")
        stem = f"{name}-{checksum['value'][:8]}"
        assert file == f"{stem}.zip" and entry.data["archive"] == {"kind": "zip", "member": f"{stem}.params"}
        assert checksum["of"] == "archive member"


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: f"{e.arch}:{e.name}")
def test_every_format_is_read_by_the_backend_that_owns_it(entry):
    _, fmt, backend = HOSTS[family(entry)]
    if family(entry) == "gluoncv":
        fmt = "gluon-zoo" if entry.arch.startswith("resnext") else "gluoncv-v1b"
    assert entry.format == fmt and FORMATS[entry.format] == backend


def test_the_sources_preprocessing():
    tv1 = registry.get("resnet50", "torchvision/IMAGENET1K_V1").preprocessing
    tv2 = registry.get("resnet50", "torchvision/IMAGENET1K_V2").preprocessing
    assert (tv1["resize"], tv1["crop"], tv2["resize"], tv2["crop"]) == (256, 224, 232, 224)
    assert tv1["interpolation"] == "bilinear" and tv1["antialias"] is True
    assert tv1["mean"] == [0.485, 0.456, 0.406] and tv1["std"] == [0.229, 0.224, 0.225]
    caffe = registry.get("resnet50_v1", "keras/imagenet").preprocessing
    assert caffe["channel_order"] == "BGR" and caffe["value_range"] == [0.0, 255.0] and "std" not in caffe
    assert caffe["mean"] == [103.939, 116.779, 123.68]
    tf = registry.get("resnet50_v2", "keras/imagenet").preprocessing  # x / 127.5 - 1
    assert tf["channel_order"] == "RGB" and tf["mean"] == tf["std"] == [127.5] * 3
    gluon = registry.get("gluon_resnet50_v2", "gluon/imagenet").preprocessing
    assert gluon["value_range"] == [0.0, 1.0] and gluon["mean"] == tv1["mean"] and gluon["std"] == tv1["std"]
    gluoncv = registry.get("resnet50", "gluoncv/imagenet").preprocessing  # transform_eval's defaults, OpenCV's bilinear
    assert (gluoncv["resize"], gluoncv["crop"]) == (256, 224)
    assert gluoncv["interpolation"] == "bilinear" and gluoncv["antialias"] is False
    assert gluoncv["value_range"] == [0.0, 1.0] and gluoncv["mean"] == tv1["mean"] and gluoncv["std"] == tv1["std"]
    words = registry.describe_preprocessing(tv2)
    assert "232" in words and "center-crop 224x224" in words and "bilinear" in words
    assert "BGR" in registry.describe_preprocessing(caffe) and "no scaling" in registry.describe_preprocessing(caffe)


def test_published_accuracy():
    assert registry.get("resnet50", "torchvision/IMAGENET1K_V2").data["accuracy"]["top1"] == 80.858
    assert all(e.top1 is not None for e in ENTRIES if family(e) in ("torchvision", "gluoncv"))
    # neither keras.applications nor the Gluon model zoo publishes one in its package
    assert all(e.top1 is None for e in ENTRIES if family(e) in ("keras", "gluon"))
    # GluonCV's own model-zoo table (docs/model_zoo/csv_tables/Classifications/ResNet.csv, ResNext.csv)
    assert {e.arch: (e.data["accuracy"]["top1"], e.data["accuracy"]["top5"]) for e in ENTRIES
            if family(e) == "gluoncv"} == {
        "resnet18": (70.94, 89.83), "resnet34": (74.65, 92.08), "resnet50": (77.67, 93.82),
        "resnet101": (79.20, 94.61), "resnet152": (79.69, 94.74), "resnext50_32x4d": (79.32, 94.53),
        "resnext101_64x4d": (80.69, 95.17)}
    for e in ENTRIES:
        if family(e) == "gluoncv":  # each row is the file's: the table's hashtag is its sha1 prefix
            assert f"hashtag {e.data['checksum']['value'][:8]}" in e.data["accuracy"]["source"]


def test_gluoncv_entries_sit_on_the_presets_that_are_their_networks():
    """ResNetV1b and GluonCV's ResNext are torchvision's networks with Gluon's BN defaults (eps 1e-5, momentum 0.9,
    i.e. 0.1 in our convention): stride on the 3x3, conv + BN shortcuts, no conv biases. The BN running-variance
    estimator (Gluon: biased) is the one difference, a training-time one, and the note says so."""
    for entry in (e for e in ENTRIES if family(e) == "gluoncv"):
        spec = presets.get(entry.arch)
        assert spec.stride_at == "3x3" and spec.shortcut == "conv_bn" and spec.conv_bias == ()
        assert not spec.preactivation and spec.stem.kind == "imagenet" and spec.stem.pool_padding == "neg_inf"
        assert (spec.bn.eps, spec.bn.momentum) == (1e-5, 0.1)
        assert "running_var" in entry.data["note"] and "eps 1e-5" in entry.data["note"]
    assert presets.get("resnext101_64x4d").stages[0].cardinality == 64


def test_the_gluoncv_v1b_name_map():
    """GluonCV's ResNetV1b names (as its save_parameters writes them, checked on its own model in
    tests/backends/test_gluoncv_weights.py): torchvision's, with a BN's weight and bias as gamma and beta."""
    import numpy as np

    from resnet_multi.arch.plan import plan
    from resnet_multi.weights import zoo_names

    spec = presets.get("resnet50")
    names = zoo_names.gluoncv_v1b_names(spec)
    assert names["conv1.weight"] == "conv1.weight" and names["bn1.weight"] == "bn1.gamma"
    assert names["layer1.0.downsample.0.weight"] == "layer1.0.downsample.0.weight"
    assert names["layer1.0.downsample.1.bias"] == "layer1.0.downsample.1.beta"
    assert names["layer4.2.bn3.running_var"] == "layer4.2.bn3.running_var" and names["fc.bias"] == "fc.bias"
    assert len(set(names.values())) == len(names) == 267  # ResNetV1b-50's 267 parameters
    rng = np.random.default_rng(0)
    shapes = {**plan(spec).param_shapes(), **plan(spec).buffer_shapes()}
    state = {k: rng.standard_normal(shape).astype(np.float32) for k, shape in shapes.items()}
    params = zoo_names.to_gluoncv_v1b(spec, state)
    back = zoo_names.from_gluoncv_v1b(spec, params)
    assert set(back) == set(state) and all(np.array_equal(back[k], state[k]) for k in state)
    with pytest.raises(registry.UserError, match="missing 1 parameters .*fc.bias"):
        zoo_names.from_gluoncv_v1b(spec, {k: v for k, v in params.items() if k != "fc.bias"})
    with pytest.raises(registry.UserError, match="1 parameters resnet50 does not: fc.extra"):
        zoo_names.from_gluoncv_v1b(spec, {**params, "fc.extra": np.zeros(1, np.float32)})
    with pytest.raises(registry.UserError, match="ResNetV1b has no parameter for"):
        zoo_names.gluoncv_v1b_names(presets.get("gluon_resnet50_v2"))


def test_categories():
    names = registry.categories("imagenet-1k")
    assert len(names) == 1000 == len(set(names))
    assert names[0] == "tench" and names[-1] == "toilet tissue"
    assert all(name == name.strip() and name for name in names)
    assert {e.data["categories"] for e in ENTRIES} == {"imagenet-1k"}
    with pytest.raises(registry.UserError, match="unknown category list"):
        registry.categories("imagenet-21k")


def test_get_an_unknown_name_lists_the_known_and_suggests():
    with pytest.raises(UnknownWeights) as info:
        registry.get("resnet50", "torchvision/IMAGENET1K_V3")
    text = str(info.value)
    assert "\n" not in text and "torchvision/IMAGENET1K_V1, torchvision/IMAGENET1K_V2" in text
    assert text.endswith("did you mean torchvision/IMAGENET1K_V2?")
    with pytest.raises(UnknownWeights, match="no published weights for d2l_resnet18"):
        registry.get("d2l_resnet18", "keras/imagenet")
    with pytest.raises(presets.UnknownPreset):
        registry.get("resnet5", "torchvision/IMAGENET1K_V1")


def good_table() -> dict:
    return copy.deepcopy(registry.get("gluon_resnet18_v1", "gluon/imagenet").to_dict())


def _set(path: str, value):
    def change(table):
        *parents, last = path.split(".")
        for p in parents:
            table = table[p]
        if value is KeyError:
            del table[last]
        else:
            table[last] = value
    return change


@pytest.mark.parametrize("path,value,needle", [
    ("url", KeyError, "url: missing"),
    ("url", "ftp://example.com/w.params", "url: expected an http(s) URL"),
    ("arch", "resnet5", "arch: unknown preset"),
    ("format", "onnx", "format: expected one of canonical"),
    ("categories", "imagenet-21k", "categories: expected one of imagenet-1k"),
    ("colour", "red", "colour: unknown field"),
    ("name", "imagenet", "name: expected SOURCE/TAG"),
    ("checksum.value", "abc", "checksum.value: not a sha1"),
    ("checksum.algorithm", "crc32", "checksum.algorithm"),
    ("archive", KeyError, "checksum.of"),
    ("preprocessing.mean", [0.5, 0.5], "preprocessing.mean: expected a list of 3 numbers"),
    ("preprocessing.mean", [0.5, 0.5, float("nan")], "preprocessing.mean"),
    ("preprocessing.std", [1.0, 0.0, 1.0], "preprocessing.std: expected a list of 3 positive numbers"),
    ("preprocessing.input_size", True, "preprocessing.input_size: expected a positive integer"),
    ("preprocessing.value_range", [1.0, 0.0], "preprocessing.value_range"),
    ("preprocessing.channel_order", "rgb", "preprocessing.channel_order"),
    ("preprocessing", "imagenet", "preprocessing: expected a table"),
    ("sha256", "00", "sha256: expected 64"),
])
def test_every_field_is_checked_on_load(path, value, needle):
    table = good_table()
    _set(path, value)(table)
    with pytest.raises(RegistryError) as info:
        registry.check_entries([table], "zoo.toml")
    assert str(info.value).startswith("zoo.toml: weights[0].") and needle in str(info.value)


def test_the_same_entry_twice_is_refused():
    with pytest.raises(RegistryError, match=r"weights\[1\]: gluon_resnet18_v1 gluon/imagenet is listed twice"):
        registry.check_entries([good_table(), good_table()], "zoo.toml")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "resnet_multi", *args], capture_output=True, text=True, timeout=120)


def test_weights_list_json_holds_every_entry_with_every_field():
    out = cli("weights", "list", "--json")
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)["weights"]
    # every ImageNet weights file torchvision, keras.applications and the Gluon model zoo publish for our presets,
    # and GluonCV's for the presets that are its networks
    assert len(found) == len(ENTRIES) == 40
    assert all(REQUIRED <= set(e) and REQUIRED_PRE <= set(e["preprocessing"]) for e in found)
    assert found == [e.to_dict() for e in ENTRIES]


def test_weights_list_table_and_arch(capsys):
    assert main(["weights", "list"]) == 0
    text = capsys.readouterr().out
    assert "download.pytorch.org" in text and "80.858" in text and "keras-applications" in text
    assert main(["weights", "list", "--arch", "resnet50", "--json"]) == 0
    assert [e["name"] for e in json.loads(capsys.readouterr().out)["weights"]] == [
        "torchvision/IMAGENET1K_V1", "torchvision/IMAGENET1K_V2", "gluoncv/imagenet"]
    assert main(["weights", "list", "--arch", "d2l_resnet18"]) == 0
    assert "note: no published weights for d2l_resnet18" in capsys.readouterr().out


def test_weights_show_a_known_entry(capsys):
    assert main(["weights", "show", "resnet50", "torchvision/IMAGENET1K_V2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["url"] == "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"
    assert report["host"] == "download.pytorch.org" and report["category_count"] == 1000
    assert "resize the shorter side to 232" in report["preprocessing_text"]
    assert main(["weights", "show", "gluon_resnet50_v1", "gluon/imagenet"]) == 0
    text = capsys.readouterr().out
    assert "sha1 0aee57f96768c0a2d5b23a6ec91eb08dfb0a45ce (of the archive member)" in text
    assert "not published by the source" in text and "model_store.py" in text


@pytest.mark.parametrize("args,needle", [
    (("weights", "show", "resnet50", "torchvision/IMAGENET1K_V3"), "did you mean torchvision/IMAGENET1K_V2?"),
    (("weights", "show", "resnet5", "torchvision/IMAGENET1K_V1"), "did you mean"),
    (("weights", "list", "--arch", "resnet5"), "unknown preset"),
    (("weights",), "SUBCOMMAND"),
    (("weights", "frobnicate"), "invalid choice"),
])
def test_weights_user_errors_are_one_line_exit_2(args, needle):
    out = cli(*args)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr


TEXT = st.one_of(st.sampled_from(["resnet50", "gluon_resnet18_v2", "torchvision/IMAGENET1K_V1", "keras/imagenet",
                                  "", "-", "\udcff", "a\nb", "9" * 40, "--json"]), st.text(max_size=12))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.one_of(st.tuples(st.just("show"), TEXT, TEXT).map(list),
                      st.tuples(st.just("list"), st.just("--arch"), TEXT).map(list)))
def test_any_weights_arguments_give_success_or_one_line(argv, capsys):
    capsys.readouterr()  # one example's output each time (the fixture is shared across examples)
    code = main(["weights", *argv])
    out = capsys.readouterr()
    assert code in (0, 2)
    if code == 2:
        assert len(out.err.strip().splitlines()) == 1 and "Traceback" not in out.err
