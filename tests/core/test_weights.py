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
