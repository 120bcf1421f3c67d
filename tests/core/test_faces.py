"""The backend face and the device strings every backend accepts (no framework needed)."""

from __future__ import annotations

import pytest

import resnet_multi
from resnet_multi import faces
from resnet_multi.backends.common import DEVICE_FORMS, parse_device
from resnet_multi.errors import BackendUnavailable, DeviceUnavailable

CONTRACT = ("build", "forward", "activations", "row_counts", "device_of", "resolve_device", "devices", "version",
            "to_canonical", "from_canonical", "formats", "read_file", "write_file", "precisions", "make_train_step",
            "optimizer_state", "load_optimizer_state", "benchmark", "native", "native_preset", "benchmark_native")


@pytest.mark.parametrize("alias, name", [("pytorch", "torch"), ("TF", "tensorflow"), ("keras", "tensorflow"),
                                         ("jax", "flax"), ("gluon", "mxnet"), ("mxnet", "mxnet")])
def test_one_face_per_backend_by_any_alias(alias, name):
    face = resnet_multi.backend(alias)
    assert face.name == name and face is resnet_multi.backend(name)
    assert all(hasattr(type(face), attr) for attr in CONTRACT)


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(BackendUnavailable, match="known backends: torch, tensorflow, flax, mxnet"):
        resnet_multi.backend("caffe")


@pytest.mark.skipif(faces.importable("mxnet"), reason="mxnet is installed here")
def test_a_missing_framework_names_its_extra():
    with pytest.raises(BackendUnavailable, match=r'pip install "resnet-multi\[mxnet\]"'):
        resnet_multi.backend("mxnet").build(resnet_multi.get_spec("resnet20"))


@pytest.mark.parametrize("text, gpus, want", [
    ("auto", 0, ("cpu", 0)), ("auto", 2, ("gpu", 0)), ("cpu", 2, ("cpu", 0)), (" CPU:0 ", 0, ("cpu", 0)),
    ("gpu", 1, ("gpu", 0)), ("gpu:1", 2, ("gpu", 1)), ("cuda", 1, ("gpu", 0)), ("cuda:1", 2, ("gpu", 1)),
])
def test_device_strings_accepted_by_every_backend(text, gpus, want):
    assert parse_device(text, gpus, "framework") == want


@pytest.mark.parametrize("text, gpus, message", [
    ("tpu", 1, "unknown device"), ("gpu:x", 1, "unknown device"), ("gpu:", 1, "unknown device"),
    ("gpu", 0, "sees no GPU"), ("gpu:2", 2, "sees 2 GPU"), ("cpu:1", 0, "1 CPU device"),
])
def test_device_strings_refused_with_one_line(text, gpus, message):
    with pytest.raises(DeviceUnavailable, match=message) as info:
        parse_device(text, gpus, "framework")
    assert "\n" not in str(info.value)
    if message == "unknown device":
        assert DEVICE_FORMS in str(info.value)
