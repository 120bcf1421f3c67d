"""Spec validation (including property-based) and file round trips."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resnet_multi.arch import presets
from resnet_multi.arch.spec import BIAS_ROLES, BatchNorm, ResNetSpec, Stage, Stem, load_spec, save_spec, spec_from_dict
from resnet_multi.errors import SpecError


def basic(**kw):
    base = dict(name="t", stages=(Stage(1, 8, 1), Stage(1, 16, 2)), block="basic", num_classes=3)
    base.update(kw)
    return ResNetSpec(**base)


@pytest.mark.parametrize("changes,field", [
    (dict(name=""), "name"),
    (dict(in_channels=0), "in_channels"),
    (dict(num_classes=-1), "num_classes"),
    (dict(block="dense"), "block"),
    (dict(stages=()), "stages"),
    (dict(stages=(Stage(0, 8),)), "stages[0].blocks"),
    (dict(stages=(Stage(1, 8), Stage(1, 0, 2))), "stages[1].channels"),
    (dict(stages=(Stage(1, 8, 0),)), "stages[0].stride"),
    (dict(stages=(Stage(1, 8, 1, cardinality=2),)), "stages[0].cardinality"),
    (dict(stride_at="1x1"), "stride_at"),
    (dict(stride_block="middle"), "stride_block"),
    (dict(shortcut="pad"), "shortcut"),
    (dict(strided_identity="pool"), "strided_identity"),
    (dict(conv_bias=("conv3",)), "conv_bias"),
    (dict(init="he"), "init"),
    (dict(preactivation=True, zero_init_last_bn=True), "zero_init_last_bn"),
    (dict(in_channels=True), "in_channels"),
])
def test_invalid_fields_are_named(changes, field):
    with pytest.raises(SpecError) as info:
        basic(**changes)
    assert str(info.value).startswith(f"{field}:"), str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("make,field", [
    (lambda: Stem(kind="mnist"), "stem.kind"),
    (lambda: Stem(channels=0), "stem.channels"),
    (lambda: Stem(pool_padding="edge"), "stem.pool_padding"),
    (lambda: BatchNorm(eps=0.0), "bn.eps"),
    (lambda: BatchNorm(momentum=0.99 + 1), "bn.momentum"),
    (lambda: BatchNorm(eps=float("nan")), "bn.eps"),
    (lambda: BatchNorm(running_var="sample"), "bn.running_var"),
])
def test_invalid_sub_fields_are_named(make, field):
    with pytest.raises(SpecError, match=rf"^{field.replace('.', '[.]')}:"):
        make()


def test_bottleneck_needs_width_per_group():
    with pytest.raises(SpecError, match=r"^stages\[0\]\.width_per_group:"):
        ResNetSpec(name="b", stages=(Stage(1, 64, 1),), block="bottleneck")


stage_strategy = st.builds(Stage, blocks=st.integers(1, 3), channels=st.integers(1, 64),
                           stride=st.integers(1, 3))


@settings(max_examples=60, deadline=None)
@given(stages=st.lists(stage_strategy, min_size=1, max_size=4), in_channels=st.integers(1, 4),
       classes=st.integers(1, 20), bias=st.sets(st.sampled_from(BIAS_ROLES[:3] + ("shortcut",))),
       preact=st.booleans(), shortcut=st.sampled_from(["conv", "conv_bn"]))
def test_valid_specs_round_trip_through_dicts(stages, in_channels, classes, bias, preact, shortcut):
    spec = ResNetSpec(name="h", stages=tuple(stages), in_channels=in_channels, num_classes=classes,
                      conv_bias=tuple(bias), preactivation=preact, shortcut=shortcut)
    assert spec_from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


@settings(max_examples=60, deadline=None)
@given(blocks=st.integers(-3, 3), channels=st.integers(-3, 8), stride=st.integers(-2, 3),
       card=st.integers(-1, 4), width=st.integers(-1, 4))
def test_bottleneck_stage_validation_agrees_with_rules(blocks, channels, stride, card, width):
    valid = blocks >= 1 and channels >= 1 and stride >= 1 and card >= 1 and width >= 1
    make = lambda: ResNetSpec(name="p", stages=(Stage(blocks, channels, stride, card, width),),  # noqa: E731
                              block="bottleneck")
    if valid:
        assert make().stages[0].mid_channels == card * width
    else:
        with pytest.raises(SpecError, match=r"^stages\[0\]\."):
            make()


@pytest.mark.parametrize("suffix", [".json", ".toml"])
@pytest.mark.parametrize("name", presets.names())
def test_every_preset_round_trips_through_files(tmp_path, suffix, name):
    spec = presets.get(name)
    path = save_spec(spec, tmp_path / f"spec{suffix}")
    assert load_spec(path) == spec


def test_file_errors_name_file_and_field(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\nblock = "basic"\n[[stages]]\nblocks = 1\nchannels = 0\n')
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(path) in str(info.value) and "stages[0].channels" in str(info.value)


def test_unknown_field_in_file_is_refused(tmp_path):
    path = tmp_path / "bad.json"
    data = presets.get("resnet18").to_dict()
    data["stem"]["kernal"] = 5
    path.write_text(json.dumps(data))
    with pytest.raises(SpecError, match=r"stem\.kernal: unknown field"):
        load_spec(path)


def test_broken_json_and_missing_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        load_spec(path)
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "absent.toml")


def test_conv_bias_shorthands():
    data = presets.get("resnet50").to_dict()
    data["conv_bias"] = "all"
    assert spec_from_dict(data).conv_bias == BIAS_ROLES
    data["conv_bias"] = "none"
    assert spec_from_dict(data).conv_bias == ()


# -- hostile spec files (issue 14, item 7): one line naming the file, never a traceback ------------------------


def test_non_utf8_spec_file_is_one_line(tmp_path):
    for suffix in (".json", ".toml"):
        path = tmp_path / f"latin1{suffix}"
        path.write_bytes('{"name": "caf\u00e9"}'.encode("latin-1"))
        with pytest.raises(SpecError, match=r"not UTF-8 text \(byte 13\)") as info:
            load_spec(path)
        assert str(info.value).startswith(str(path))


@pytest.mark.parametrize("suffix,text", [(".json", "[" * 200_000 + "]" * 200_000),
                                         (".json", '{"a":' * 100_000 + "1" + "}" * 100_000),
                                         (".toml", "a = " + "[" * 100_000 + "]" * 100_000),
                                         (".toml", "a = " + "{b = " * 50_000 + "1" + "}" * 50_000)])
def test_deeply_nested_spec_file_is_one_line(tmp_path, suffix, text):
    path = tmp_path / f"deep{suffix}"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_values_quoted_in_errors_are_short_and_on_one_line():
    data = presets.get("resnet20").to_dict()
    data["block"] = "x\n" * 10_000
    with pytest.raises(SpecError) as info:
        spec_from_dict(data)
    assert "\n" not in str(info.value) and len(str(info.value)) < 200
    data = presets.get("resnet20").to_dict()
    data["stem"]["line\nbreak"] = 1
    with pytest.raises(SpecError, match=r"^stem\.'line\\nbreak': unknown field"):
        spec_from_dict(data)


def test_a_name_with_a_final_newline_is_refused():
    with pytest.raises(SpecError, match="^name:"):
        basic(name="t\n")
