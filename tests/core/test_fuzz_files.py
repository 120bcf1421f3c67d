"""Property-based fuzz of the files users hand us (issue 14): spec files and canonical weights files.

Whatever the bytes, ``load_spec``, ``load_state``, ``file_spec`` and ``convert``
either succeed or raise a UserError with a one-line message (never another
exception), and no file other than the requested destination is created or
changed. Small example counts: the whole file runs in a few seconds.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resnet_multi.arch.spec import ResNetSpec, Stage, Stem, load_spec, spec_to_toml
from resnet_multi.errors import UserError
from resnet_multi.run.convert import convert
from resnet_multi.weights.canonical import file_spec, init_weights, load_state, save_state

SPEC = ResNetSpec(name="tiny", stages=(Stage(1, 4, 1),), num_classes=3, stem=Stem(kind="cifar", channels=4))
STATE = init_weights(SPEC, 0)
# FUZZ_N=2000 for a long run by hand; CI keeps the default.
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_N", 40)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def succeeds_or_one_line(call):
    """call(), or the one-line UserError it raises; any other exception fails the test with its traceback."""
    try:
        return call()
    except UserError as exc:
        message = str(exc)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        return exc


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def only_destination_changed(folder: Path, before: dict[str, bytes], destination: str) -> None:
    after = files(folder)
    after.pop(destination, None)
    assert after == before


# -- spec files ------------------------------------------------------------------------------------------

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                      max_size=4),
                           max_leaves=20)


def _load_spec_file(suffix: str, content: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"spec{suffix}"
        path.write_bytes(content)
        before = files(Path(tmp))
        result = succeeds_or_one_line(lambda: load_spec(path))
        assert files(Path(tmp)) == before
        if isinstance(result, UserError):
            assert str(result).startswith(str(path)), str(result)
        return result


@FUZZ
@given(suffix=st.sampled_from([".json", ".toml"]),
       content=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_random_spec_bytes_and_text(suffix, content):
    _load_spec_file(suffix, content)


@FUZZ
@given(suffix=st.sampled_from([".json", ".toml"]), value=json_values, depth=st.integers(0, 3000))
def test_random_nested_structures(suffix, value, depth):
    text = "[" * depth + json.dumps(value) + "]" * depth
    _load_spec_file(suffix, (text if suffix == ".json" else f"a = {text}\n").encode())


def _paths(data, prefix=()):
    yield prefix
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _paths(value, (*prefix, i))


FIELD_PATHS = [p for p in _paths(SPEC.to_dict()) if p]


@FUZZ
@given(suffix=st.sampled_from([".json", ".toml"]), where=st.sampled_from(FIELD_PATHS), value=json_values,
       drop=st.booleans())
def test_random_field_values(suffix, where, value, drop):
    data = SPEC.to_dict()
    parent = data
    for key in where[:-1]:
        parent = parent[key]
    if drop and isinstance(parent, dict):
        del parent[where[-1]]
    else:
        parent[where[-1]] = value
    if suffix == ".json":
        content = json.dumps(data).encode()
    else:
        try:
            content = _toml(data).encode()
        except (TypeError, ValueError):  # a value TOML cannot hold (null, NaN keys...): not a file anyone writes
            return
    result = _load_spec_file(suffix, content)
    if not isinstance(result, UserError):
        assert result.to_dict()["name"] == data.get("name")


def _toml(data) -> str:
    """A TOML file of any dict (spec_to_toml writes valid specs only)."""
    def value(v):
        if v is None:
            raise TypeError("TOML has no null")
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float) and not math.isfinite(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return "{" + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + "}"
    return "\n".join(f"{json.dumps(k)} = {value(v)}" for k, v in data.items()) + "\n"


def test_the_toml_writer_of_the_fuzz_agrees_with_the_real_one(tmp_path):
    (tmp_path / "a.toml").write_text(_toml(SPEC.to_dict()))
    (tmp_path / "b.toml").write_text(spec_to_toml(SPEC))
    assert load_spec(tmp_path / "a.toml") == load_spec(tmp_path / "b.toml") == SPEC


# -- canonical weights files -----------------------------------------------------------------------------


def _weights_file(content: bytes, arch):
    """load_state, file_spec and convert on one file: success or one line; only the destination may change."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        src = folder / "w.safetensors"
        src.write_bytes(content)
        before = files(folder)
        for call in (lambda: load_state(src), lambda: load_state(src, SPEC), lambda: file_spec(src)):
            succeeds_or_one_line(call)
            assert files(folder) == before
        report = succeeds_or_one_line(lambda: convert(src, folder / "out.safetensors", arch=arch))
        only_destination_changed(folder, before, "out.safetensors")
        if isinstance(report, dict):
            back = load_state(folder / "out.safetensors", SPEC)  # what convert wrote is a file every reader takes
            assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in back.values())
        return report


VALID = save_state(STATE, Path(tempfile.mkdtemp()) / "valid.safetensors", SPEC).read_bytes()


@FUZZ
@given(content=st.binary(max_size=300), arch=st.sampled_from([None, SPEC]))
def test_random_weights_bytes(content, arch):
    _weights_file(content, arch)


@FUZZ
@given(cut=st.integers(0, len(VALID)), flip=st.integers(0, len(VALID) - 1) | st.none(),
       arch=st.sampled_from([None, SPEC]))
def test_truncated_or_flipped_weights_files(cut, flip, arch):
    data = bytearray(VALID[:cut] if flip is None else VALID)
    if flip is not None:
        data[flip] ^= 0xFF
    _weights_file(bytes(data), arch)


DTYPES = ["float32", "float16", "float64", "int32", "int64", "uint8", "bool", "complex64"]
SPECIALS = [np.nan, np.inf, -np.inf, 1e300, 0.0, -0.0, 65504.0, 1e-45]


@st.composite
def tensors(draw):
    """The tiny spec's state, each tensor maybe in another dtype, reshaped, dropped, renamed, or poisoned.

    Half the files are only re-typed among the floats, so that convert's success path is fuzzed too.
    """
    state = {}
    hostile = draw(st.booleans())
    actions = ["keep"] * 12 + ["dtype", "special"] * 2 + ["reshape", "drop", "rename"] if hostile else ["keep", "float"]
    for name, value in STATE.items():
        action = draw(st.sampled_from(actions))
        if action == "float":
            value = value.astype(draw(st.sampled_from(["float16", "float32", "float64"])))
        if action == "drop":
            continue
        if action == "rename":
            name = draw(st.text(min_size=1, max_size=12))
        if action == "reshape":
            value = np.zeros(draw(st.lists(st.integers(0, 3), max_size=3)), np.float32)
        if action == "special":
            value = value.astype(np.float64)
            value.flat[draw(st.integers(0, max(value.size - 1, 0)))] = draw(st.sampled_from(SPECIALS))
        with np.errstate(all="ignore"):
            value = value.astype(draw(st.sampled_from(DTYPES))) if action in ("dtype", "special") else value
        state[name] = np.ascontiguousarray(value)
    return state


metadata = st.just({"spec": json.dumps(SPEC.to_dict())}) | st.dictionaries(
    st.sampled_from(["spec", "format", "notes"]) | st.text(max_size=8),
    st.sampled_from([json.dumps(SPEC.to_dict())]) | st.text(max_size=30), max_size=3)


@FUZZ
@given(state=tensors(), meta=metadata, arch=st.sampled_from([None, SPEC]))
def test_random_tensors_and_metadata(state, meta, arch):
    from safetensors.numpy import save

    try:
        content = save(state, metadata=meta or None)
    except ValueError:  # safetensors cannot write it (e.g. two tensors renamed alike): no file to read
        return
    _weights_file(content, arch)
