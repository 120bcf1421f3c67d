"""The zoo: published parameter counts, registry behaviour, and the book's network."""

from __future__ import annotations

import pytest

from resnet_multi.arch import presets
from resnet_multi.arch.plan import plan
from resnet_multi.arch.shapes import buffer_count, layer_table, param_count

# torchvision's published trainable-parameter counts (its weights' "num_params").
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904, "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272, "wide_resnet50_2": 68_883_240, "wide_resnet101_2": 126_886_696,
}
# torchvision's published GFLOPS (multiply-accumulates at 3x224x224), two decimals.
TORCHVISION_GMACS = {"resnet18": 1.81, "resnet34": 3.66, "resnet50": 4.09, "resnet101": 7.80,
                     "resnet152": 11.51, "resnext50_32x4d": 4.23, "resnext101_32x8d": 16.41,
                     "resnext101_64x4d": 15.46, "wide_resnet50_2": 11.40, "wide_resnet101_2": 22.75}
# keras.applications' model.count_params(): trainable + BN moving statistics.
KERAS_TOTAL = {"resnet50_v1": 25_636_712, "resnet101_v1": 44_707_176, "resnet152_v1": 60_419_944,
               "resnet50_v2": 25_613_800, "resnet101_v2": 44_675_560, "resnet152_v2": 60_380_648}

# mxnet.gluon.model_zoo.vision, counted on Gluon's own models (v2's data BN has
# 6 frozen scale/shift values that Gluon stores and we leave out).
GLUON_PARAMS = {"gluon_resnet18_v1": 11_689_512, "gluon_resnet50_v1": 25_575_912,
                "gluon_resnet50_v2": 25_549_486 - 6}


@pytest.mark.parametrize("name,count", GLUON_PARAMS.items())
def test_gluon_model_zoo_parameter_counts(name, count):
    assert param_count(presets.get(name)) == count


@pytest.mark.parametrize("name,count", TORCHVISION_PARAMS.items())
def test_torchvision_parameter_counts(name, count):
    assert param_count(presets.get(name)) == count


@pytest.mark.parametrize("name,gmacs", TORCHVISION_GMACS.items())
def test_torchvision_macs(name, gmacs):
    assert round(layer_table(presets.get(name), (3, 224, 224)).total_macs / 1e9, 2) == gmacs


@pytest.mark.parametrize("name,count", KERAS_TOTAL.items())
def test_keras_applications_counts(name, count):
    spec = presets.get(name)
    assert param_count(spec) + buffer_count(spec) == count


def test_torchvision_state_dict_names():
    names = list(plan(presets.get("resnet50")).param_shapes())
    assert names[:3] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert "layer1.0.downsample.0.weight" in names and "layer1.0.downsample.1.bias" in names
    assert "layer4.2.conv3.weight" in names and names[-2:] == ["fc.weight", "fc.bias"]
    assert not any(n.endswith("conv1.bias") for n in names)
    buffers = plan(presets.get("resnet50")).buffer_shapes()
    assert buffers["layer1.0.bn1.running_var"] == (64,)


def test_d2l_resnet18_is_the_books_network():
    spec = presets.get("d2l_resnet18")
    table = layer_table(spec, (1, 96, 96))
    assert table.total_params == 11_178_378
    shapes = {r.name: r.output_shape for r in table.layers}
    # The book's layer_summary: 64x24x24 after b1, then 24, 12, 6, 3.
    assert [shapes["stem"], shapes["layer1.1"], shapes["layer2.1"], shapes["layer3.1"], shapes["layer4.1"]] == [
        (64, 24, 24), (64, 24, 24), (128, 12, 12), (256, 6, 6), (512, 3, 3)]
    p = plan(spec)
    assert p.blocks[0].shortcut == "identity"
    assert p.blocks[2].shortcut == "conv" and p.blocks[2].downsample_conv.bias
    assert p.stem.conv.bias and p.blocks[0].convs[0].bias


def test_d2l_resnext18_states_cardinality():
    p = plan(presets.get("d2l_resnext18"))
    # The book's groups=16 means 16 channels per group: cardinality = channels / 16.
    assert [b.convs[1].groups for b in p.blocks[::2]] == [4, 8, 16, 32]
    assert all(b.convs[1].in_channels // b.convs[1].groups == 16 for b in p.blocks)


def test_keras_v2_layout():
    p = plan(presets.get("resnet50_v2"))
    first, last = p.stages[0][0], p.stages[0][-1]
    assert first.stride == 1 and first.shortcut == "conv" and first.preact_bn is not None
    assert last.stride == 2 and last.shortcut == "subsample"
    assert p.stages[3][-1].stride == 1 and p.head.post_bn is not None and p.stem.bn is None


def test_registry_is_sorted_and_refuses_duplicates():
    assert presets.names() == sorted(presets.names())
    with pytest.raises(ValueError, match="already registered"):
        presets.register("resnet50", lambda: presets.get("resnet50"))


def test_unknown_preset_suggests_close_names():
    with pytest.raises(KeyError) as info:
        presets.get("resnet5")
    assert "resnet50" in str(info.value)


@pytest.mark.parametrize("name", presets.names())
def test_every_preset_is_valid_and_consistent(name):
    spec = presets.get(name)
    assert spec.name == name
    table = layer_table(spec, (spec.in_channels, 64, 64))
    assert table.total_params == param_count(spec)
    assert table.layers[-1].output_shape == (spec.num_classes, 1, 1)
    assert [r.name for r in table.layers][0] == "stem"
