"""Backbones in the spec: num_classes 0, features (a feature extractor), feature_info, and summary's flags.

No framework here: the spec, the plan, the analytic table and the float64 reference.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from resnet_multi.arch import presets
from resnet_multi.arch.plan import plan
from resnet_multi.arch.shapes import feature_info, layer_table, param_count
from resnet_multi.arch.spec import load_spec, save_spec, with_head
from resnet_multi.errors import SpecError
from resnet_multi.numerics import reference
from resnet_multi.weights.canonical import expected_shapes, head_names, init_weights, with_new_head


def cli(*args):
    return subprocess.run([sys.executable, "-m", "resnet_multi", *args], capture_output=True, text=True, timeout=120)


def test_resnet50_feature_info():
    """torchvision's ResNet-50 stages: 256/512/1024/2048 channels at strides 4/8/16/32; the stem's 64 at 4."""
    info = feature_info(presets.get("resnet50"))
    assert [f["channels"] for f in info] == [64, 256, 512, 1024, 2048]
    assert [f["reduction"] for f in info] == [4, 4, 8, 16, 32]
    assert [f["row"] for f in info] == ["stem", "layer1.2", "layer2.3", "layer3.5", "layer4.2"]
    cifar = feature_info(presets.get("resnet20"))  # 3x3/1 stem, no pool
    assert [f["reduction"] for f in cifar] == [1, 1, 2, 4]


@pytest.mark.parametrize("features, message", [
    ((5,), r"features\[0\]: must be 0 \(the stem\) to 4"),
    ((2, 1), r"features\[1\]: indices must be increasing"),
    ((1, 1), r"features\[1\]: indices must be increasing"),
    ((-1,), r"features\[0\]"),
    ((True,), r"features\[0\]"),
    (("1",), r"features\[0\]"),
])
def test_bad_features_are_named(features, message):
    spec = presets.get("resnet18")
    with pytest.raises(SpecError, match=message):
        spec.replace(features=features, num_classes=0)


def test_features_need_no_head():
    with pytest.raises(SpecError, match="^num_classes: a feature extractor"):
        presets.get("resnet18").replace(features=(1,))
    with pytest.raises(SpecError, match="not both"):
        with_head(presets.get("resnet18"), num_classes=3, features=(1,))
    with pytest.raises(SpecError, match="at least one stage"):
        with_head(presets.get("resnet18"), features=())
    with pytest.raises(SpecError, match="num_classes: must be an integer >= 0"):
        presets.get("resnet18").replace(num_classes=-1)


def test_a_backbone_is_the_network_s_prefix():
    whole = presets.get("resnet50")
    backbone = with_head(whole, features=(1, 2))
    p = plan(backbone)
    assert p.head is None and len(p.stages) == 2 and p.output_rows == ("layer1.2", "layer2.3")
    kept = expected_shapes(backbone)
    all_shapes = expected_shapes(whole)
    assert set(kept) < set(all_shapes) and all(all_shapes[k] == shape for k, shape in kept.items())
    assert not any(k.startswith(("layer3.", "layer4.", "fc.")) for k in kept)
    rows = [r.name for r in layer_table(backbone, (3, 64, 64)).layers]
    assert rows[0] == "stem" and rows[-1] == "layer2.3"
    pooled = with_head(whole, num_classes=0)
    assert [r.name for r in layer_table(pooled, (3, 64, 64)).layers][-1] == "avgpool"
    assert param_count(whole) - param_count(pooled) == 2048 * 1000 + 1000
    assert head_names(pooled) == [] and head_names(whole) == ["fc.weight", "fc.bias"]


def test_seeded_init_and_new_heads():
    whole = presets.get("resnet18")
    state = init_weights(whole, seed=3)
    backbone = with_head(whole, features=(2,))
    assert init_weights(backbone, seed=3).keys() == expected_shapes(backbone).keys()
    for k, v in init_weights(backbone, seed=3).items():  # the same draws, in the same order
        np.testing.assert_array_equal(v, state[k])
    assert with_new_head(state, backbone, seed=0).keys() == expected_shapes(backbone).keys()
    five = with_new_head(state, with_head(whole, num_classes=5), seed=0)
    assert five["fc.weight"].shape == (5, 512)
    np.testing.assert_array_equal(five["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])


def test_reference_outputs():
    whole = presets.get("resnet20")
    state = init_weights(whole, seed=1, perturb_bn=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16))
    rows = reference.activations(whole, state, x)
    backbone = with_head(whole, features=(0, 3))
    maps = reference.forward(backbone, with_new_head(state, backbone, seed=0), x)
    assert isinstance(maps, list) and len(maps) == 2
    np.testing.assert_array_equal(maps[0], rows["stem"])
    np.testing.assert_array_equal(maps[1], rows["layer3.2"])
    pooled = with_head(whole, num_classes=0)
    np.testing.assert_array_equal(reference.forward(pooled, with_new_head(state, pooled, seed=0), x), rows["avgpool"])


@pytest.mark.parametrize("suffix", (".json", ".toml"))
def test_backbone_specs_round_trip_through_files(tmp_path, suffix):
    spec = with_head(presets.get("resnext50_32x4d"), features=(0, 2, 4))
    path = save_spec(spec, tmp_path / f"backbone{suffix}")
    assert load_spec(path) == spec


def test_summary_flags():
    out = cli("summary", "resnet50", "--features", "2,4", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["feature_info"] == [{"index": 2, "row": "layer2.3", "channels": 512, "reduction": 8},
                                      {"index": 4, "row": "layer4.2", "channels": 2048, "reduction": 32}]
    assert report["layers"][-1]["name"] == "layer4.2"
    table = cli("summary", "resnet50", "--features", "1,2")
    assert table.returncode == 0 and "features (the model returns these maps" in table.stdout
    pooled = json.loads(cli("summary", "resnet50", "--num-classes", "0", "--json").stdout)
    assert pooled["layers"][-1]["name"] == "avgpool" and pooled["total_params"] == 23508032
    for bad, words in ((("--features", "1,5"), "--features: must be 0 (the stem) to 4"),
                       (("--features", "2,1"), "increasing stage indices"),
                       (("--features", "1", "--num-classes", "3"), "not allowed with"),
                       (("--num-classes", "-1"), "--num-classes")):
        done = cli("summary", "resnet50", *bad)
        assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr, bad
        assert len(done.stderr.strip().splitlines()) == 1
