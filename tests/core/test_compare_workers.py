"""compare --workers N without any framework: the argument checks, the request each worker gets, the merged
report (text, strict JSON, a failed engine in its column). The workers are fakes that print a report."""

from __future__ import annotations

import json
import math
import sys

import pytest

from resnet_multi.cli.commands import main
from resnet_multi.cli.formatting import format_compare, strict_json
from resnet_multi.numerics.training_parity import max_relative_gap
from resnet_multi.run.compare import run_compare


@pytest.mark.parametrize("args, says", [
    (["--workers", "2"], "--workers needs --train-steps"),
    (["--workers", "1", "--train-steps", "2"], "pass 2 or more"),
    (["--workers", "3", "--train-steps", "2"], "batch size 8 does not split evenly over 3 workers"),
    (["--workers", "0", "--train-steps", "2"], "expected a positive integer"),
])
def test_bad_workers_are_one_line_and_exit_2(capsys, tmp_path, args, says):
    # A fake interpreter that would fail loudly: the check comes before any worker starts.
    code = main(["compare", "resnet20", "--input-shape", "3,12,12", "--python", f"torch={tmp_path / 'none'}",
                 "--backends", "torch", *args])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and says in err, err


FAKE = r'''#!{python}
import json, shutil, sys
from resnet_multi.arch.shapes import layer_table
from resnet_multi.arch.spec import spec_from_dict

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
request = json.load(open(args["--request"]))
shutil.copy(args["--request"], {seen!r} + "-" + args["--backend"] + ".json")
layers = layer_table(spec_from_dict(request["spec"]), (3, 12, 12)).to_dict()["layers"]
rows = [{{"name": r["name"], "max_abs_diff": 0.0, "rel_diff": 0.0}} for r in layers]
one = [2.0, 1.5, 1.25]
if args["--backend"] == "mxnet":
    parallel = {{"error": "DeviceUnavailable: 2 workers need 2 cpu devices", "workers": 2}}
else:
    parallel = {{"losses": [2.0, 1.5, 1.25 + 3e-7], "workers": 2, "engine": "fake engine", "max_rel_diff": 2.4e-7}}
print(json.dumps({{
    "backend": args["--backend"], "layers": layers,
    "total_params": sum(r["params"] for r in layers), "total_buffers": 0,
    "environment": {{"framework_version": "0", "device": "cpu"}},
    "parity": {{"ok": True, "max_abs_diff": 0.0, "tolerance": 1e-4, "worst_layer": "fc", "worst_rel_diff": 0.0,
                "layers": rows}},
    "timing": {{}}, "train": {{"losses": one, "parallel": parallel}},
}}))
'''


def test_workers_reach_every_worker_and_both_trajectories_are_shown(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(FAKE.format(python=sys.executable, seen=str(tmp_path / "request")))
    fake.chmod(0o755)
    report = run_compare("resnet20", ["torch", "mxnet"], (3, 12, 12), batch=8, train_steps=3, workers=2,
                         python={"torch": str(fake), "mxnet": str(fake)})
    request = json.loads((tmp_path / "request-torch.json").read_text())
    assert request["workers"] == 2 and request["sync_bn"] is True and request["train_steps"] == 3
    assert report["workers"] == 2
    # The failed engine is its backend's failure; the rest of its column stays.
    assert set(report["failed"]) == {"mxnet"} and "data-parallel training steps: DeviceUnavailable" in \
        report["failed"]["mxnet"]
    assert report["backends"]["mxnet"]["train"]["losses"] == [2.0, 1.5, 1.25]
    text = format_compare(report)
    header = next(ln for ln in text.splitlines() if ln.startswith("step"))
    assert header.split() == ["step", "torch", "torch", "x2", "mxnet", "mxnet", "x2"]
    rows = {ln.split()[0]: ln.split()[1:] for ln in text.splitlines() if ln[:1].isdigit()}
    assert rows["3"] == ["1.250000", "1.250000", "1.250000", "failed"]
    gaps = next(ln for ln in text.splitlines() if ln.startswith("max |diff|"))
    assert gaps.split()[2:] == ["2.4e-07"]  # under torch x2; nothing under a failed or a single-worker column
    assert any(ln.split()[:3] == ["torch", "2.4e-07", "fake"] for ln in text.splitlines())
    assert any(ln.split()[:3] == ["mxnet", "failed", "DeviceUnavailable:"] for ln in text.splitlines())
    json.loads(strict_json(report))


def test_max_relative_gap():
    assert max_relative_gap([2.0, 0.5], [2.0 + 4e-6, 0.5 + 1e-6]) == pytest.approx(2e-6)
    assert math.isnan(max_relative_gap([1.0], [math.nan]))
    assert strict_json({"gap": max_relative_gap([1.0], [math.inf])}) == '{\n  "gap": null\n}'
