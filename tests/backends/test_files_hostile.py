"""Each backend's own weight files, handed over damaged or poisoned (issue 14, items 5, 7, 9).

read_file on random bytes, on truncations of a file it wrote, and on a file
holding a NaN or an integer tensor: a one-line UserError naming the file
(and the tensor). float16 is converted and noted; from_canonical refuses NaN
and integer states; the CLI's error is exactly one stderr line.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from resnet_multi.arch import presets
from resnet_multi.errors import UserError
from resnet_multi.weights.canonical import init_weights

# backend -> (its own format, a file name for it)
NATIVE = {"torch": ("torch", "w.pth"), "tensorflow": ("keras", "w.weights.h5"), "flax": ("flax", "w.msgpack"),
          "mxnet": ("gluon", "w.params")}
SPEC = presets.get("resnet20")


def one_line(call, *words) -> str:
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message
    return message


@pytest.fixture
def native(backend, face, tmp_path):
    """A real file of the backend's own format, written by the backend."""
    fmt, name = NATIVE[backend]
    path = tmp_path / name
    face.write_file(init_weights(SPEC, 3), path, SPEC, fmt)
    return path


def test_random_bytes_are_one_line_naming_the_file(backend, face, tmp_path):
    fmt, name = NATIVE[backend]
    rng = np.random.default_rng(0)
    for content in (b"", rng.bytes(300), b"\x00" * 64, b"PK\x03\x04" + rng.bytes(100), b"\x80\x02" + rng.bytes(50)):
        path = tmp_path / name
        path.write_bytes(content)
        message = one_line(lambda: face.read_file(path, SPEC, fmt), str(path))
        if backend == "torch" and not content.startswith((b"PK", b"\x80")):
            assert "not a torch file" in message and "pickled objects" not in message


def test_truncations_of_a_real_file_are_one_line(backend, face, native):
    fmt, _ = NATIVE[backend]
    data = native.read_bytes()
    for cut in (8, len(data) // 3, len(data) // 2, len(data) - 16):
        native.write_bytes(data[:cut])
        one_line(lambda: face.read_file(native, SPEC, fmt), str(native))


def _poison(backend, path, value):
    """Rewrite fc.bias in the file, in the framework's own way (write_file refuses such states)."""
    if backend == "torch":
        import torch

        state = torch.load(path, weights_only=True)
        state["fc.bias"] = torch.from_numpy(value)
        torch.save(state, path)
    elif backend == "tensorflow":
        import h5py

        with h5py.File(path, "r+") as f:
            del f["layers/dense/vars/1"]
            f["layers/dense/vars/1"] = value
    elif backend == "flax":
        from flax import serialization

        tree = serialization.msgpack_restore(path.read_bytes())
        tree["fc"]["bias"] = value
        path.write_bytes(serialization.msgpack_serialize(tree))
    else:
        import mxnet as mx

        params = mx.nd.load(str(path))
        params["fc.bias"] = mx.nd.array(value, dtype=value.dtype)
        mx.nd.save(str(path), params)


@pytest.mark.parametrize("kind", ["nan", "inf", "int32"])
def test_nan_inf_and_int_tensors_in_a_file_are_refused_by_name(backend, face, native, kind):
    fmt, _ = NATIVE[backend]
    bias = init_weights(SPEC, 3)["fc.bias"]
    value = bias.astype(np.int32) if kind == "int32" else np.full_like(bias, np.nan if kind == "nan" else np.inf)
    _poison(backend, native, value)
    words = ("fc.bias (int32)", "not floating point") if kind == "int32" else ("NaN or inf 1: fc.bias",)
    one_line(lambda: face.read_file(native, SPEC, fmt), str(native), *words)


def test_float16_tensor_is_converted_and_noted(backend, face, native):
    fmt, _ = NATIVE[backend]
    bias = init_weights(SPEC, 3)["fc.bias"]
    _poison(backend, native, bias.astype(np.float16))
    state = face.read_file(native, SPEC, fmt)
    assert state.notes == ["1 float16 tensor converted to float32 (fc.bias)"]
    assert state["fc.bias"].dtype == np.float32
    np.testing.assert_array_equal(state["fc.bias"], bias.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("kind", ["nan", "int64"])
def test_from_canonical_refuses_nan_and_int_states(backend, face, kind):
    model = face.build(SPEC, device="cpu", seed=0)
    before = face.to_canonical(model)
    state = init_weights(SPEC, 1)
    state["conv1.weight"] = (state["conv1.weight"].astype(np.int64) if kind == "int64"
                             else np.full_like(state["conv1.weight"], np.nan))
    one_line(lambda: face.from_canonical(model, state), "conv1.weight")
    after = face.to_canonical(model)
    assert all(np.array_equal(after[k], before[k]) for k in before)  # nothing loaded


def test_cli_error_about_a_bad_file_is_one_stderr_line(backend, face, tmp_path):
    """TensorFlow's own log lines included: `convert bad.h5 ...` in .nox/tensorflow prints one line."""
    _, name = NATIVE[backend]
    bad = tmp_path / name
    bad.write_bytes(np.random.default_rng(1).bytes(200))
    out = subprocess.run([sys.executable, "-m", "resnet_multi", "convert", str(bad), str(tmp_path / "x.safetensors"),
                          "--arch", "resnet20"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert out.stderr.startswith("resnet-multi convert: error: ") and str(bad) in out.stderr
    assert not (tmp_path / "x.safetensors").exists()
