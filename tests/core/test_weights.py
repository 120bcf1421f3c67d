"""Seeded init, strict state checks, and canonical safetensors files."""

from __future__ import annotations

import numpy as np
import pytest

from resnet_multi.arch import presets
from resnet_multi.arch.plan import plan
from resnet_multi.weights.canonical import WeightsError, check_state, file_spec, init_weights, load_state, save_state


def test_init_is_seeded_and_bit_identical():
    spec = presets.get("resnet18")
    a, b, c = init_weights(spec, 7), init_weights(spec, 7), init_weights(spec, 8)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv1.weight"], c["conv1.weight"])
    assert all(v.dtype == np.float32 for v in a.values())


def test_init_follows_the_spec_initializer():
    spec = presets.get("resnet50")
    w = init_weights(spec, 0)["layer3.0.conv2.weight"]  # 256x256x3x3, fan_out = 256 * 9
    assert abs(w.std() - np.sqrt(2 / (256 * 9))) < 0.02 * np.sqrt(2 / (256 * 9))
    book = init_weights(presets.get("d2l_resnet18"), 0)["layer1.0.conv1.weight"]  # xavier: bound sqrt(6/(2*576))
    assert np.abs(book).max() <= np.sqrt(6 / (576 * 2)) and np.abs(book).max() > 0.9 * np.sqrt(6 / (576 * 2))
    zero = init_weights(spec.replace(zero_init_last_bn=True), 0)
    assert not zero["layer1.0.bn3.weight"].any() and zero["layer1.0.bn2.weight"].all()


def test_state_names_and_shapes_are_the_plan():
    spec = presets.get("resnext50_32x4d")
    state = init_weights(spec, 0)
    p = plan(spec)
    assert {k: v.shape for k, v in state.items()} == {**p.param_shapes(), **p.buffer_shapes()}
    assert state["layer1.0.conv2.weight"].shape == (128, 4, 3, 3)


def test_bad_state_is_refused_whole_with_a_list():
    spec = presets.get("resnet18")
    state = init_weights(spec, 0)
    del state["fc.bias"]
    state["fc.extra"] = np.zeros(1, np.float32)
    state["conv1.weight"] = np.zeros((64, 3, 3, 3), np.float32)
    with pytest.raises(WeightsError) as info:
        check_state(spec, state)
    msg = str(info.value)
    assert "missing 1: fc.bias" in msg and "unexpected 1: fc.extra" in msg
    assert "conv1.weight (64, 3, 3, 3) (expected (64, 3, 7, 7))" in msg


def test_file_round_trip_and_metadata(tmp_path):
    spec = presets.get("resnet20")
    state = init_weights(spec, 1, perturb_bn=True)
    path = save_state(state, tmp_path / "w.safetensors", spec)
    back = load_state(path, spec)
    assert all(np.array_equal(back[k], state[k]) for k in state)
    assert file_spec(path) == spec
    assert not list(tmp_path.glob("*.partial"))


def test_corrupt_and_truncated_files_are_one_clear_error(tmp_path):
    spec = presets.get("resnet20")
    path = save_state(init_weights(spec, 1), tmp_path / "w.safetensors", spec)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"\x00garbage" * 10)
    for bad in ("cut.safetensors", "junk.safetensors"):
        with pytest.raises(WeightsError, match="not a readable safetensors file") as info:
            load_state(tmp_path / bad)
        assert "\n" not in str(info.value)
    with pytest.raises(WeightsError, match="do not fit resnet32"):
        load_state(path, presets.get("resnet32"))


# -- dtypes and values (issue 14, item 5): one check, check_values, behind every reader -------------------


def _raw_file(path, state, metadata=None):
    """A safetensors file holding exactly these arrays (no cast, no check: what a careless writer makes)."""
    from safetensors.numpy import save

    path.write_bytes(save({k: np.ascontiguousarray(v) for k, v in state.items()}, metadata=metadata))
    return path


def test_nan_inf_and_non_float_tensors_are_refused_by_name(tmp_path):
    spec = presets.get("resnet20")
    state = init_weights(spec, 1)
    state["fc.weight"] = state["fc.weight"].copy()
    state["fc.weight"][0, 0] = np.nan
    state["fc.bias"] = np.full_like(state["fc.bias"], np.inf)
    state["conv1.weight"] = state["conv1.weight"].astype(np.int32)
    state["bn1.weight"] = state["bn1.weight"] > 0
    state["bn1.bias"] = state["bn1.bias"].astype(np.complex64)
    path = _raw_file(tmp_path / "bad.safetensors", state)
    for call in (lambda: load_state(path, spec), lambda: load_state(path), lambda: check_state(spec, state)):
        with pytest.raises(WeightsError) as info:
            call()
        msg = str(info.value)
        assert "\n" not in msg and "nothing loaded" in msg
        assert "not floating point 3: " in msg and "NaN or inf 2: " in msg
        for part in ("conv1.weight (int32)", "bn1.weight (bool)", "bn1.bias (complex64)", "fc.weight", "fc.bias"):
            assert part in msg
    with pytest.raises(WeightsError, match=r"not floating point 3: conv1.weight \(int32\), bn1.weight \(bool\), "
                                           r"bn1.bias \(complex64\); NaN or inf 2: fc.weight, fc.bias$"):
        load_state(path, spec)  # with a spec: in the model's order
    assert str(path) in str(pytest.raises(WeightsError, load_state, path).value)


def test_half_bfloat16_and_double_are_converted_and_noted(tmp_path):
    spec = presets.get("resnet20")
    state = init_weights(spec, 1, perturb_bn=True)
    raw = {k: v.astype(np.float16) for k, v in state.items()}
    raw["fc.weight"] = state["fc.weight"].astype(np.float64)
    back = load_state(_raw_file(tmp_path / "half.safetensors", raw), spec)
    assert all(v.dtype == np.float32 for v in back.values())
    np.testing.assert_array_equal(back["conv1.weight"], state["conv1.weight"].astype(np.float16).astype(np.float32))
    assert back.notes == [f"{len(raw) - 1} float16 tensors converted to float32 "
                          "(conv1.weight, bn1.weight, bn1.bias ...)",
                          "1 float64 tensor converted to float32 (fc.weight)"]
    assert load_state(save_state(back, tmp_path / "w.safetensors", spec), spec).notes == []


def test_bfloat16_file_is_widened_exactly(tmp_path):
    import json
    import struct

    values = np.array([1.0, -2.5, 2.0**127], np.float32)  # all exact in bfloat16
    data = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"w": {"dtype": "BF16", "shape": [3], "data_offsets": [0, len(data)]}}).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    back = load_state(path)
    np.testing.assert_array_equal(back["w"], values)
    assert back.notes == ["1 bfloat16 tensor converted to float32 (w)"]


def test_float64_beyond_float32_range_is_refused_not_made_inf(tmp_path):
    path = _raw_file(tmp_path / "big.safetensors", {"w": np.array([1e300, 1.0])})
    with pytest.raises(WeightsError, match=r"beyond float32's range 1: w"):
        load_state(path)


def test_nothing_non_finite_is_ever_written(tmp_path):
    spec = presets.get("resnet20")
    state = init_weights(spec, 1)
    state["fc.bias"] = np.full_like(state["fc.bias"], np.nan)
    for kwargs in ({"spec": spec}, {}):
        with pytest.raises(WeightsError, match="NaN or inf 1: fc.bias"):
            save_state(state, tmp_path / "w.safetensors", **kwargs)
    assert not list(tmp_path.iterdir())


def test_odd_tensor_names_stay_on_one_line(tmp_path):
    spec = presets.get("resnet20")
    state = {**init_weights(spec, 1), "evil\nname": np.zeros(2, np.float32), "x" * 500: np.zeros(1, np.float32)}
    with pytest.raises(WeightsError) as info:
        load_state(_raw_file(tmp_path / "odd.safetensors", state), spec)
    assert "\n" not in str(info.value) and "'evil\\nname'" in str(info.value) and "x" * 501 not in str(info.value)


# -- the spec a file names (issue 14, item 7) ----------------------------------------------------------------


def test_file_spec_of_unreadable_files_is_one_line(tmp_path):
    spec = presets.get("resnet20")
    data = save_state(init_weights(spec, 1), tmp_path / "w.safetensors", spec).read_bytes()
    for name, content in (("empty", b""), ("cut", data[:100]), ("half", data[: len(data) // 2]),
                          ("junk", bytes(range(256)) * 3)):
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        with pytest.raises(WeightsError, match="not a readable safetensors file") as info:
            file_spec(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(WeightsError, match="cannot read"):
        file_spec(tmp_path / "missing.safetensors")


def test_file_spec_with_bad_metadata_names_the_file(tmp_path):
    from resnet_multi.errors import SpecError

    state = init_weights(presets.get("resnet20"), 1)
    not_json = _raw_file(tmp_path / "a.safetensors", state, {"spec": "{not json"})
    with pytest.raises(WeightsError, match=r"a\.safetensors: the spec in its metadata is not valid JSON"):
        file_spec(not_json)
    deep = _raw_file(tmp_path / "b.safetensors", state, {"spec": "[" * 100_000})
    with pytest.raises(WeightsError, match="not valid JSON"):
        file_spec(deep)
    invalid = _raw_file(tmp_path / "c.safetensors", state, {"spec": '{"name": "x", "stages": []}'})
    with pytest.raises(SpecError, match=r"c\.safetensors: the spec in its metadata: stages: must hold"):
        file_spec(invalid)
    assert file_spec(_raw_file(tmp_path / "d.safetensors", state, {"format": "other"})) is None
