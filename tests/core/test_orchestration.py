"""compare and convert, as far as they go without any framework in this environment."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from resnet_multi.arch import presets
from resnet_multi.errors import UserError
from resnet_multi.run.compare import run_compare
from resnet_multi.run.convert import convert, guess_format
from resnet_multi.run.interpreters import parse_python_overrides
from resnet_multi.weights.canonical import init_weights, load_state, save_state


def test_compare_reports_a_missing_environment_in_its_column(tmp_path):
    report = run_compare("resnet20", ["torch", "mxnet"], (3, 16, 16), batch=2,
                         python={"torch": str(tmp_path / "nope" / "python"), "mxnet": str(tmp_path / "gone")})
    assert set(report["backends"]) == {"torch", "mxnet"}
    assert "does not exist" in report["backends"]["torch"]["error"]
    assert report["analytic"]["total_params"] == 272_474
    assert report["agreement"]["torch"] == {"shapes": None, "parity": None}
    assert not report["ok"] and set(report["failed"]) == {"torch", "mxnet"}


def compare_cli(*args):
    return subprocess.run([sys.executable, "-m", "resnet_multi", "compare", "resnet20", "--input-shape", "3,16,16",
                           *args], capture_output=True, text=True, timeout=120)


def test_compare_cli_json_with_a_broken_interpreter(tmp_path):
    # issue 14, item 2: a failed backend exits 1 and says why in one line, --quiet or not; --json is whole.
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'boom: no framework' >&2\nexit 3\n")
    broken.chmod(0o755)
    out = compare_cli("--backends", "flax", "--python", f"flax={broken}", "--json", "--quiet")
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    column = report["backends"]["flax"]
    assert column["error"].startswith("exit 3") and "boom" in column["error"]
    assert report["ok"] is False and report["failed"] == {"flax": column["error"]}
    assert out.stderr.splitlines() == [f"resnet-multi compare: flax failed: {column['error']}"]


@pytest.mark.parametrize("quiet", [True, False])
def test_compare_every_failed_backend_is_one_line_and_exit_1(tmp_path, quiet):
    # A missing interpreter and a directory given as one: each backend fails with its reason (issue 14, item 7).
    out = compare_cli("--backends", "torch,mxnet", "--python", f"torch={tmp_path / 'gone'}",
                      "--python", f"mxnet={tmp_path}", *(["--quiet"] if quiet else []))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    failures = [ln for ln in out.stderr.splitlines() if ln.startswith("resnet-multi compare:")]
    assert len(failures) == 2, out.stderr
    assert "torch failed" in failures[0] and "does not exist" in failures[0]
    assert "mxnet failed" in failures[1] and "is a directory" in failures[1]
    assert len(out.stderr.splitlines()) == (2 if quiet else 6)  # progress: starting + FAILED per backend
    assert "Parity" in out.stdout  # the readable report is still printed


def test_python_override_naming_a_directory_is_one_line_for_convert(tmp_path):
    spec = presets.get("resnet20")
    src = save_state(init_weights(spec, 0), tmp_path / "a.safetensors", spec)
    out = subprocess.run([sys.executable, "-m", "resnet_multi", "convert", str(src), str(tmp_path / "b.pth"),
                          "--python", f"torch={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr
    assert "is a directory" in out.stderr and not (tmp_path / "b.pth").exists()


def test_python_overrides_are_checked():
    assert parse_python_overrides(["jax=/x/python"]) == {"flax": "/x/python"}
    with pytest.raises(UserError):
        parse_python_overrides(["torch"])
    with pytest.raises(UserError, match="no path"):
        parse_python_overrides(["torch="])


def test_canonical_to_canonical_and_refusal(tmp_path):
    spec = presets.get("resnet20")
    state = init_weights(spec, 4)
    src = save_state(state, tmp_path / "a.safetensors", spec)
    report = convert(src, tmp_path / "b.safetensors")  # the file names its spec: no --arch needed
    assert report["arch"] == "resnet20"
    back = load_state(tmp_path / "b.safetensors", spec)
    assert all(np.array_equal(back[k], state[k]) for k in state)
    with pytest.raises(UserError, match="do not fit resnet32"):
        convert(src, tmp_path / "c.safetensors", arch="resnet32")


def test_format_guessing():
    keras_spec, gluon_spec = presets.get("resnet50_v1"), presets.get("gluon_resnet50_v1")
    assert guess_format("w.pth", None) == "torch"
    assert guess_format("w.weights.h5", keras_spec) == "keras-applications"
    assert guess_format("w.weights.h5", presets.get("resnet50")) == "keras"
    assert guess_format("w.params", gluon_spec) == "gluon-zoo"
    assert guess_format("w.msgpack", None) == "flax"
    with pytest.raises(UserError, match="--from/--to"):
        guess_format("w.bin2", None)
