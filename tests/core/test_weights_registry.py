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
# family prefix of a name -> (the URL prefix on the source's own host, the format, the backend owning it)
HOSTS = {
    "torchvision": ("https://download.pytorch.org/models/", "torch", "torch"),
    "keras": ("https://storage.googleapis.com/tensorflow/keras-applications/resnet/", "keras-applications",
              "tensorflow"),
    "gluon": ("https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/gluon/models/", "gluon-zoo", "mxnet"),
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
            | {(a, "gluon/imagenet") for a in GLUON})
    assert names == want
    assert len(ENTRIES) == len(names) == 17 + 6 + 10  # every entry once: no (arch, name) twice


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
        assert re.match(r"^(torchvision|torch|keras|mxnet) [0-9.]+: |^the hash in the file name", source), source
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
    else:  # model_store.py: {name}-{sha1[:8]}.zip holding {name}-{sha1[:8]}.params
        assert checksum["algorithm"] == "sha1" and len(checksum["value"]) == 40
        stem = f"{entry.arch.removeprefix('gluon_')}-{checksum['value'][:8]}"
        assert file == f"{stem}.zip" and entry.data["archive"] == {"kind": "zip", "member": f"{stem}.params"}
        assert checksum["of"] == "archive member"


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: f"{e.arch}:{e.name}")
def test_every_format_is_read_by_the_backend_that_owns_it(entry):
    _, fmt, backend = HOSTS[family(entry)]
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
    words = registry.describe_preprocessing(tv2)
    assert "232" in words and "center-crop 224x224" in words and "bilinear" in words
    assert "BGR" in registry.describe_preprocessing(caffe) and "no scaling" in registry.describe_preprocessing(caffe)


def test_published_accuracy():
    assert registry.get("resnet50", "torchvision/IMAGENET1K_V2").data["accuracy"]["top1"] == 80.858
    assert all(e.top1 is not None for e in ENTRIES if family(e) == "torchvision")
    assert all(e.top1 is None for e in ENTRIES if family(e) != "torchvision")  # neither publishes one in the package


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
    assert len(found) == len(ENTRIES) == 33  # every ImageNet weights file the three sources publish for our presets
    assert all(REQUIRED <= set(e) and REQUIRED_PRE <= set(e["preprocessing"]) for e in found)
    assert found == [e.to_dict() for e in ENTRIES]


def test_weights_list_table_and_arch(capsys):
    assert main(["weights", "list"]) == 0
    text = capsys.readouterr().out
    assert "download.pytorch.org" in text and "80.858" in text and "keras-applications" in text
    assert main(["weights", "list", "--arch", "resnet50", "--json"]) == 0
    assert [e["name"] for e in json.loads(capsys.readouterr().out)["weights"]] == [
        "torchvision/IMAGENET1K_V1", "torchvision/IMAGENET1K_V2"]
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
