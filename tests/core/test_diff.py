"""resnet-multi diff: the fields two specs differ in, and where their outputs part (NumPy reference only)."""

from __future__ import annotations

import json

import pytest

from resnet_multi.arch import presets
from resnet_multi.cli.commands import main
from resnet_multi.numerics.diff import diff_report, field_diff


def test_field_diff_names_the_padding_and_bn_fields():
    fields = field_diff(presets.get("d2l_resnet18"), presets.get("d2l_resnet18_tf"))
    assert [f["field"] for f in fields] == ["same_padding", "bn.eps", "bn.momentum", "bn.running_var"]
    assert fields[1] == {"field": "bn.eps", "a": 1e-5, "b": 1e-3}
    stages = field_diff(presets.get("resnet18"), presets.get("resnet34"))
    assert {"field": "stages[1].blocks", "a": 2, "b": 4} in stages


def test_even_size_parts_at_the_stem_odd_size_only_in_running_stats():
    even = diff_report("d2l_resnet18", "d2l_resnet18_jax", (1, 16, 16), batch=1)
    assert even["same_weights"] and even["eval"]["first_differing_layer"] == "stem"
    alone = {f["field"]: f["alone"] for f in even["fields"]}
    assert alone["same_padding"]["eval_first_differing_layer"] == "stem"
    assert alone["bn.momentum"]["eval_first_differing_layer"] is None  # momentum moves running stats only
    assert alone["bn.momentum"]["running_stats_differing"] > 0
    # Odd at every 'same' layer (33, 17, 9, 5, 3): 'same' pads as the symmetric padding does, and the
    # JAX tab's other fields (BN momentum, running variance) change the running statistics only.
    odd = diff_report("d2l_resnet18", "d2l_resnet18_jax", (1, 33, 33), batch=1)
    assert odd["eval"]["first_differing_layer"] is None and odd["train"]["first_differing_layer"] is None
    assert odd["train"]["running_stats"]["differing"] > 0 and not odd["identical"]
    # 13 is odd at the stem but the pool leaves 4: the first strided block parts.
    assert diff_report("d2l_resnet18", "d2l_resnet18_jax", (1, 13, 13), batch=1)["eval"][
        "first_differing_layer"] == "layer2.0"
    same = diff_report("d2l_resnet18", "d2l_resnet18", (1, 16, 16), batch=1)
    assert same["identical"] and same["fields"] == []


def test_specs_without_the_same_tensors_measure_nothing():
    report = diff_report("d2l_resnet18", "resnet18", batch=1)
    assert report["same_weights"] is False and report["eval"] is None and "conv1.weight" in report["why"]


def test_cli_json_and_table(capsys):
    assert main(["diff", "d2l_resnet18", "d2l_resnet18_tf", "--input-shape", "1,16,16", "--batch-size", "1",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["eval"]["first_differing_layer"] == "stem"
    assert {f["field"] for f in data["fields"]} >= {"same_padding", "bn.eps", "bn.momentum"}
    assert main(["diff", "d2l_resnet18", "d2l_resnet18_tf", "--input-shape", "1,16,16", "--batch-size", "1"]) == 0
    out = capsys.readouterr().out
    assert "same_padding" in out and "<-- first difference" in out


@pytest.mark.parametrize("argv,needle", [
    (["diff", "d2l_resnet18", "nope"], "unknown preset"),
    (["diff", "d2l_resnet18", "d2l_resnet18_tf", "--input-shape", "3,32,32"], "channels"),
    (["diff", "d2l_resnet18", "d2l_resnet18_tf", "--input-shape", "1,0,4"], "expected C,H,W"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
