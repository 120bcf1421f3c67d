"""Files a careless or hostile user hands `convert` (issue 14, items 1, 5, 7): one line, exit 2, nothing lost.

Run in-process through the CLI's own `main`, the one place that turns a UserError into one line on stderr.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from resnet_multi.arch import presets
from resnet_multi.cli.commands import main
from resnet_multi.errors import UserError
from resnet_multi.run.convert import convert
from resnet_multi.weights.canonical import init_weights, load_state, save_state


@pytest.fixture
def source(tmp_path):
    spec = presets.get("resnet20")
    return save_state(init_weights(spec, 1), tmp_path / "a.safetensors", spec)


def one_line_error(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("resnet-multi convert: error: "), out.err
    assert out.out == ""
    return lines[0]


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# -- item 1: the source is never the destination ---------------------------------------------------------


def test_convert_onto_its_own_source_is_refused(tmp_path, source, capsys):
    before = snapshot(tmp_path)
    os.symlink(source, tmp_path / "link.safetensors")
    os.link(source, tmp_path / "hard.pth")
    for dst in (source, tmp_path / "link.safetensors", tmp_path / "hard.pth", tmp_path / "." / "a.safetensors"):
        line = one_line_error(capsys, "convert", str(source), str(dst), "--to", "torch")
        assert "is the source" in line
    after = snapshot(tmp_path)
    assert after.pop("link.safetensors") == after.pop("hard.pth") == before["a.safetensors"]
    assert after == before  # the source untouched, nothing else written


# -- item 7: destinations checked before any work, no .partial left behind --------------------------------


def test_convert_into_a_missing_folder_or_onto_a_directory(tmp_path, source, capsys):
    (tmp_path / "folder").mkdir()
    before = snapshot(tmp_path)
    for dst, words in ((tmp_path / "nowhere" / "b.safetensors", "does not exist"),
                       (tmp_path / "folder", "is a directory")):
        assert words in one_line_error(capsys, "convert", str(source), str(dst))
    assert snapshot(tmp_path) == before and not list(tmp_path.rglob("*.partial*"))
    assert not list((tmp_path / "folder").iterdir())


@pytest.mark.parametrize("content", [b"", b"\x00" * 3, b"{}" * 20, bytes(range(256)) * 4, "half"])
def test_unreadable_canonical_file_without_arch_is_one_line(tmp_path, source, capsys, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(source.read_bytes()[:500] if content == "half" else content)
    line = one_line_error(capsys, "convert", str(path), str(tmp_path / "out.safetensors"))
    assert str(path) in line and "not a readable safetensors file" in line
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("spec_text,words", [("{not json", "not valid JSON"), ("[" * 100_000, "not valid JSON"),
                                             (json.dumps({"name": "x"}), "stages: required field is missing"),
                                             (json.dumps([1, 2]), "must be a table/object")])
def test_metadata_spec_that_is_no_spec_is_one_line(tmp_path, capsys, spec_text, words):
    from safetensors.numpy import save

    path = tmp_path / "meta.safetensors"
    path.write_bytes(save({"w": np.zeros(2, np.float32)}, metadata={"spec": spec_text}))
    line = one_line_error(capsys, "convert", str(path), str(tmp_path / "out.safetensors"))
    assert str(path) in line and words in line


# -- item 5: dtypes and values -----------------------------------------------------------------------------


def _raw(path, state):
    from safetensors.numpy import save

    path.write_bytes(save({k: np.ascontiguousarray(v) for k, v in state.items()}))
    return path


@pytest.mark.parametrize("change,words", [(lambda v: np.full_like(v, np.nan), "NaN or inf 1: fc.bias"),
                                          (lambda v: np.full_like(v, -np.inf), "NaN or inf 1: fc.bias"),
                                          (lambda v: v.astype(np.int64), "fc.bias (int64)"),
                                          (lambda v: v > 0, "fc.bias (bool)"),
                                          (lambda v: v.astype(np.complex64), "fc.bias (complex64)")])
def test_convert_refuses_non_finite_and_non_float_tensors(tmp_path, capsys, change, words):
    spec = presets.get("resnet20")
    state = init_weights(spec, 1)
    state["fc.bias"] = change(state["fc.bias"])
    path = _raw(tmp_path / "bad.safetensors", state)
    line = one_line_error(capsys, "convert", str(path), str(tmp_path / "out.safetensors"), "--arch", "resnet20")
    assert str(path) in line and words in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]


def test_convert_converts_half_and_double_and_says_so(tmp_path, capsys):
    spec = presets.get("resnet20")
    state = init_weights(spec, 1)
    raw = {k: v.astype(np.float16) for k, v in state.items()}
    raw["fc.bias"] = state["fc.bias"].astype(np.float64)
    src = _raw(tmp_path / "half.safetensors", raw)
    report = convert(src, tmp_path / "out.safetensors", arch="resnet20")
    assert report["notes"] == [f"{len(raw) - 1} float16 tensors converted to float32 (conv1.weight, bn1.weight, "
                               "bn1.bias ...)", "1 float64 tensor converted to float32 (fc.bias)"]
    back = load_state(tmp_path / "out.safetensors", spec)
    assert back.notes == [] and all(v.dtype == np.float32 for v in back.values())
    assert main(["convert", str(src), str(tmp_path / "again.safetensors"), "--arch", "resnet20"]) == 0
    assert "note: 1 float64 tensor converted to float32 (fc.bias)" in capsys.readouterr().out


def test_the_python_api_refuses_nan_too(tmp_path):
    spec = presets.get("resnet20")
    state = init_weights(spec, 1)
    state["conv1.weight"] = np.full_like(state["conv1.weight"], np.nan)
    with pytest.raises(UserError, match="NaN or inf 1: conv1.weight"):
        convert(_raw(tmp_path / "nan.safetensors", state), tmp_path / "out.safetensors", arch=spec)
    assert not (tmp_path / "out.safetensors").exists()


# -- spec files given as --arch ----------------------------------------------------------------------------


def test_non_utf8_and_deep_spec_files_are_one_line(tmp_path, source, capsys):
    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'{"name": "caf\xe9"}')
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 100_000)
    for spec_file, words in ((bad, "not UTF-8"), (deep, "deep.toml: ")):
        assert words in one_line_error(capsys, "convert", str(source), str(tmp_path / "o.safetensors"),
                                       "--arch", str(spec_file))
