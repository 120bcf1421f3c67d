"""Careless and hostile input to the command line (issue 14): one line and exit 2, or the documented behaviour.

In-process (``main(argv)`` with capsys): an exception escaping main fails the test, which is the point.
"""

from __future__ import annotations

import json

import pytest

from resnet_multi import faces
from resnet_multi.arch import presets
from resnet_multi.arch.plan import plan
from resnet_multi.arch.spec import Stage, save_spec
from resnet_multi.cli import commands
from resnet_multi.cli.formatting import strict_json, with_notes
from resnet_multi.numerics.training_parity import fingerprinted


def run(capsys, *argv):
    code = commands.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(capsys, *argv) -> str:
    code, stdout, stderr = run(capsys, *argv)
    assert code == 2, (code, stderr)
    assert stdout == "" and "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def missing_backend() -> str:
    """A backend whose framework is not installed here (the core environment has none)."""
    missing = [b for b in faces.names() if not faces.importable(b)]
    if not missing:
        pytest.skip("every framework is installed here")
    return missing[0]


@pytest.mark.parametrize("argv,needle", [
    (("train", "resnet20", "--backend", "torch", "--lr", "nan"), "learning rate"),
    (("train", "resnet20", "--backend", "torch", "--lr", "inf"), "learning rate"),
    (("train", "resnet20", "--backend", "torch", "--lr", "-0.1"), "learning rate"),
    (("train", "resnet20", "--backend", "torch", "--lr", "0"), "learning rate"),
    (("train", "resnet20", "--backend", "torch", "--momentum", "1"), "momentum"),
    (("train", "resnet20", "--backend", "torch", "--momentum", "nan"), "momentum"),
    (("train", "resnet20", "--backend", "torch", "--seed", "-1"), "seed"),
    (("train", "resnet20", "--backend", "torch", "--epochs", "0"), "positive integer"),
    (("parity", "resnet20", "--backend", "torch", "--seed", "-3"), "seed"),
    (("compare", "resnet20", "--seed", str(2**32)), "seed"),
    (("compare", "resnet20", "--seed", "1e3"), "seed"),
    (("compare", "resnet20", "--train-steps", "-1"), ">= 0"),
    (("compare", "resnet20", "--repeats", "0"), "positive integer"),
    (("compare", "resnet20", "--backends", ","), "backends"),
    (("compare", "resnet20", "--device", "gpu:x"), "gpu:N"),
    (("bench", "resnet20", "--backend", "torch", "--warmup", "-1"), ">= 0"),
    (("bench", "resnet20", "--backend", "torch", "--batch-size", "0"), "positive integer"),
    (("bench", "resnet20", "--backend", "torch", "--batch-size", "9" * 5000), "positive integer"),
])
def test_numbers_are_refused_at_parse_time(capsys, argv, needle):
    line = one_line_error(capsys, *argv)
    assert line.startswith(f"resnet-multi {argv[0]}: error:") and needle in line


def huge_spec_file(tmp_path):
    # ~241e9 parameters: one basic block of 163,600 channels (two 3x3 convs).
    spec = presets.get("resnet20").replace(name="huge", stages=(Stage(blocks=1, channels=163_600, stride=1),))
    return save_spec(spec, tmp_path / "huge.toml")


@pytest.mark.parametrize("argv", [
    ("summary", "resnet20", "--backend", "torch", "--input-shape", "3,100000,100000"),
    ("parity", "resnet20", "--backend", "torch", "--input-shape", "3,100000,100000"),
    ("bench", "resnet20", "--backend", "torch", "--batch-size", "10000000"),
    ("bench", "resnet20", "--backend", "torch", "--mode", "train", "--input-shape", "3,100000,100000"),
    ("compare", "resnet20", "--input-shape", "3,100000,100000", "--backends", "torch"),
])
def test_what_cannot_fit_is_refused_before_anything_is_built(capsys, argv):
    # Before the backend is even looked at: the core environment has no torch, yet the error is the size.
    line = one_line_error(capsys, *argv)
    assert "needs at least" in line and "--allow-large" in line


def test_a_spec_of_241e9_parameters(capsys, tmp_path):
    path = huge_spec_file(tmp_path)
    code, stdout, _ = run(capsys, "summary", str(path), "--json")  # arithmetic only: allowed
    assert code == 0 and json.loads(stdout)["total_params"] > 240e9
    line = one_line_error(capsys, "compare", str(path), "--backends", "torch")  # init_weights would allocate it
    assert "needs at least" in line and "huge" in line


def test_allow_large_skips_the_guard(capsys, missing_backend):
    line = one_line_error(capsys, "bench", "resnet20", "--backend", missing_backend, "--batch-size", "10000000",
                          "--allow-large")
    assert "needs at least" not in line and "pip install" in line  # got past the guard to the missing framework
    line = one_line_error(capsys, "train", "resnet20", "--backend", missing_backend, "--dataset", "digits",
                          "--resize", "8", "--allow-large")
    assert "pip install" in line


def test_train_out_naming_a_file(capsys, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    for out in (target, target / "run"):
        line = one_line_error(capsys, "train", "resnet20", "--backend", "torch", "--dataset", "digits",
                              "--out", str(out))
        assert str(target) in line and "not a folder" in line
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("where,needle", [("missing/compare.png", "does not exist"), (".", "is a directory"),
                                          ("compare.nope", "cannot write")])
def test_compare_plot_destination_is_checked_before_the_run(capsys, tmp_path, where, needle):
    # One line and no worker started (no "[torch] starting" progress line), not a failure after the whole run.
    line = one_line_error(capsys, "compare", "resnet20", "--backends", "torch", "--input-shape", "3,16,16",
                          "--python", f"torch={tmp_path / 'python'}", "--plot", str(tmp_path / where))
    assert needle in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_json_is_strict():
    text = strict_json({"loss": float("nan"), "rows": [1.0, float("inf"), {"x": -float("inf")}], "n": 3})
    assert json.loads(text) == {"loss": None, "rows": [1.0, None, {"x": None}], "n": 3}


def test_notes_follow_the_readable_table(capsys, monkeypatch):
    assert with_notes("table", {}) == "table"
    report = {"presets": [], "notes": ["12 float16 tensors converted to float32", "second"]}
    monkeypatch.setitem(commands.COMMANDS, "list", (lambda args: report, commands.COMMANDS["list"][1]))
    code, stdout, _ = run(capsys, "list")
    assert code == 0
    assert stdout.splitlines()[-2:] == ["note: 12 float16 tensors converted to float32", "note: second"]
    code, stdout, _ = run(capsys, "list", "--json")
    assert json.loads(stdout)["notes"] == report["notes"]


def _raising(exc):
    def command(args):
        raise exc
    return command


def test_main_turns_file_errors_into_one_line_and_keeps_bugs(capsys, monkeypatch):
    fmt = commands.COMMANDS["list"][1]
    monkeypatch.setitem(commands.COMMANDS, "list",
                        (_raising(PermissionError(13, "Permission denied", "/data/w.safetensors")), fmt))
    assert one_line_error(capsys, "list") == "resnet-multi list: error: /data/w.safetensors: Permission denied"
    for bug in (OSError("no file named"), KeyError("layers")):  # not about a file the user named: a traceback
        monkeypatch.setitem(commands.COMMANDS, "list", (_raising(bug), fmt))
        with pytest.raises(type(bug)):
            commands.main(["list"])


def test_main_returns_the_status_of_help_and_usage_errors(capsys):
    assert run(capsys, "--help")[0] == 0
    assert run(capsys, "frobnicate")[0] == 2


def test_fingerprinted_tensors_exist_in_every_preset():
    # issue 14, item 3: the trajectory fingerprint hard-coded layer4.1, which CIFAR nets do not have.
    for name in presets.names():
        spec = presets.get(name)
        keys = fingerprinted(spec)
        assert len(keys) == 3 and set(keys) <= set(plan(spec).param_shapes()), name
    assert fingerprinted(presets.get("resnet20")) == ("conv1.weight", "layer3.2.conv2.weight", "fc.weight")


def test_golden_fingerprint_keys_are_still_the_golden_nets():
    from pathlib import Path

    golden = json.loads((Path(__file__).parents[1] / "golden" / "train_trajectory.json").read_text())
    assert fingerprinted(presets.get(golden["name"])) == tuple(golden["fingerprint"])
