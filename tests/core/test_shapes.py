"""Analytic shapes and MACs, checked against first principles on small cases."""

from __future__ import annotations

import pytest

from resnet_multi.arch import presets
from resnet_multi.arch.plan import Conv
from resnet_multi.arch.shapes import InputTooSmall, _conv, layer_table
from resnet_multi.arch.spec import ResNetSpec, Stage


def test_odd_sizes_follow_floor_arithmetic():
    table = layer_table(presets.get("resnet18"), (3, 65, 63))
    shapes = {r.name: r.output_shape for r in table.layers}
    assert shapes["stem"] == (64, 17, 16)  # conv: 33x32, pool: 17x16
    assert shapes["layer2.0"] == (128, 9, 8)
    assert shapes["layer4.1"] == (512, 3, 2)


def test_macs_of_a_tiny_net_by_hand():
    spec = ResNetSpec(name="tiny", stages=(Stage(1, 4, 2),), block="basic", in_channels=1, num_classes=2,
                      conv_bias=("stem",))
    from resnet_multi.arch.spec import Stem
    spec = spec.replace(stem=Stem(kind="cifar", channels=2))
    table = layer_table(spec, (1, 8, 8))
    rows = {r.name: r for r in table.layers}
    assert rows["stem"].macs == 8 * 8 * 2 * 1 * 9
    assert rows["stem"].params == 2 * 9 + 2 + 2 * 2  # conv weight + bias, BN affine
    # block: conv1 2->4 stride 2 (4x4 out), conv2 4->4, 1x1 projection 2->4
    assert rows["layer1.0"].macs == 16 * 4 * 2 * 9 + 16 * 4 * 4 * 9 + 16 * 4 * 2
    assert rows["layer1.0"].buffers == 3 * 2 * 4
    assert rows["fc"].macs == 4 * 2 and rows["fc"].params == 10


def test_input_channels_must_match():
    with pytest.raises(InputTooSmall, match="channels"):
        layer_table(presets.get("d2l_resnet18"), (3, 96, 96))


def test_collapse_names_the_layer():
    # Symmetric kernel//2 padding never collapses an input >= 1 pixel; a
    # padding-free conv can, and the error names where.
    with pytest.raises(InputTooSmall, match=r"collapses at layer9 \(c: 2x2 -> 0x0\)"):
        _conv(Conv("c", 1, 1, 3, 1, 0, 1, False), 2, 2, "layer9")
    with pytest.raises(InputTooSmall):
        layer_table(presets.get("resnet18"), (3, 0, 5))


def test_table_totals_and_json_schema():
    data = layer_table(presets.get("resnet50"), (3, 64, 64)).to_dict()
    assert set(data) == {"name", "input_shape", "layers", "total_params", "total_buffers", "total_macs"}
    assert data["total_params"] == sum(r["params"] for r in data["layers"])
    assert set(data["layers"][0]) == {"name", "output_shape", "params", "buffers", "macs"}
