"""The command line, run as a user would: a subprocess, exit codes, stdout and stderr."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from resnet_multi.arch import presets
from resnet_multi.arch.spec import save_spec


def cli(*args):
    return subprocess.run([sys.executable, "-m", "resnet_multi", *args], capture_output=True, text=True, timeout=120)


def test_list_json_and_table():
    out = cli("list", "--json")
    assert out.returncode == 0
    names = [p["name"] for p in json.loads(out.stdout)["presets"]]
    assert names == presets.names()
    table = cli("list")
    assert table.returncode == 0 and "d2l_resnet18" in table.stdout and "11,178,378" in table.stdout


def test_summary_json_schema_and_counts():
    out = cli("summary", "resnet50", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["name"] == "resnet50" and data["input_shape"] == [3, 224, 224]
    assert data["total_params"] == 25_557_032
    assert data["layers"][0]["name"] == "stem" and data["layers"][-1]["output_shape"] == [1000, 1, 1]


def test_summary_table_for_the_book():
    out = cli("summary", "d2l_resnet18")
    assert out.returncode == 0
    assert "64x24x24" in out.stdout and "512x3x3" in out.stdout and "11,178,378" in out.stdout


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_summary_of_a_custom_spec_file(tmp_path, suffix):
    spec = presets.get("resnet20").replace(name="my_net", num_classes=7)
    path = save_spec(spec, tmp_path / f"net{suffix}")
    out = cli("summary", str(path), "--input-shape", "3,20,24", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["name"] == "my_net" and data["input_shape"] == [3, 20, 24]
    assert data["layers"][-1]["output_shape"] == [7, 1, 1]


@pytest.mark.parametrize("args,needle", [
    (("summary", "resnet5"), "did you mean"),
    (("summary", "resnet50", "--input-shape", "3,x,4"), "C,H,W"),
    (("summary", "resnet50", "--input-shape", "3,0,4"), "C,H,W"),
    (("summary", "d2l_resnet18", "--input-shape", "3,96,96"), "channels"),
    (("summary", "resnet50", "--backend", "caffe"), "known backends"),
    (("summary", "missing.toml"), "missing.toml"),
    (("frobnicate",), "invalid choice"),
])
def test_user_errors_are_one_line_exit_2(args, needle):
    out = cli(*args)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_bad_spec_file_names_file_and_field(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\nblock = "basic"\n[[stages]]\nblocks = 2\nchannels = 8\nstride = -1\n')
    out = cli("summary", str(path))
    assert out.returncode == 2 and str(path) in out.stderr and "stages[0].stride" in out.stderr


def test_help_lists_commands():
    out = cli("--help")
    assert out.returncode == 0 and "summary" in out.stdout and "list" in out.stdout
