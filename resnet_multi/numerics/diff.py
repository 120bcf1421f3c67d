"""What separates two specs: the fields that differ, and, on the same weights, where their outputs part.

``field_diff(a, b)`` lists every spec field whose value differs (dotted paths:
``bn.eps``, ``stem.pool_padding``, ``stages[1].stride``; the name and the
description are not compared). ``diff_report(a, b)`` adds the measurement:
when the two specs hold the same tensors (names and shapes), one seeded
canonical state (random BN statistics, so no BN is an identity) and one
seeded input go through the NumPy float64 reference for each, row by row,
in eval mode (running statistics) and in train mode (batch statistics, and
the running statistics each spec's BN rule leaves after the pass). The first
row whose outputs differ is where the two networks part. With more than one
field differing, each field is measured alone too (a with only that field
of b), so that each framework default's own effect shows. No framework runs.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from resnet_multi.arch.memory import check_model_fits
from resnet_multi.arch.presets import resolve
from resnet_multi.arch.shapes import layer_table
from resnet_multi.arch.spec import ResNetSpec, spec_from_dict
from resnet_multi.errors import SpecError, UserError
from resnet_multi.numerics import reference
from resnet_multi.numerics.parity import seeded_input
from resnet_multi.weights.canonical import expected_shapes, init_weights

# Rows "differ" past float64 round-off: the same computation agrees to about 1e-15.
DIFF_RTOL = 1e-9
NOT_COMPARED = ("name", "description")


def _flatten(value: Any, path: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(item, f"{path}.{key}" if path else str(key), out)
    else:
        out[path] = value


def field_diff(a: ResNetSpec, b: ResNetSpec) -> list[dict[str, Any]]:
    """Every field whose value differs, in the spec's field order: {field, a, b}.

    Stages are compared one by one (``stages[i].channels``) when both specs have as many;
    otherwise ``stages`` is one field. Lists of roles (``conv_bias``, ``same_padding``) are
    compared whole.
    """
    da, db = a.to_dict(), b.to_dict()
    flat_a: dict[str, Any] = {}
    flat_b: dict[str, Any] = {}
    for key in da:
        if key in NOT_COMPARED:
            continue
        if key == "stages" and len(da[key]) == len(db[key]):
            for i, (sa, sb) in enumerate(zip(da[key], db[key])):
                _flatten(sa, f"stages[{i}]", flat_a)
                _flatten(sb, f"stages[{i}]", flat_b)
        else:
            _flatten(da[key], key, flat_a)
            _flatten(db[key], key, flat_b)
    return [{"field": k, "a": flat_a[k], "b": flat_b[k]} for k in flat_a if flat_a[k] != flat_b.get(k)]


def _row(name: str, ya: np.ndarray | None, yb: np.ndarray | None) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name, "output_shape_a": None if ya is None else list(ya.shape[1:]),
                           "output_shape_b": None if yb is None else list(yb.shape[1:])}
    if ya is None or yb is None or ya.shape != yb.shape:
        why = "only in one of the two" if ya is None or yb is None else "shapes differ"
        return {**row, "max_abs_diff": None, "a_max_abs": None, "rel_diff": None, "differs": True, "why": why}
    diff = float(np.abs(ya - yb).max()) if ya.size else 0.0
    scale = float(np.abs(ya).max()) if ya.size else 0.0
    return {**row, "max_abs_diff": diff, "a_max_abs": scale, "rel_diff": diff / max(scale, 1e-30),
            "differs": diff > DIFF_RTOL * max(1.0, scale)}


def compare_rows(acts_a: Mapping[str, np.ndarray], acts_b: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """Row by row (a's rows in order, then any only b has): shapes, max |a - b|, max |a|, relative diff."""
    names = list(acts_a) + [n for n in acts_b if n not in acts_a]
    return [_row(n, acts_a.get(n), acts_b.get(n)) for n in names]


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    first = next((r for r in rows if r["differs"]), None)
    last = rows[-1]
    return {"first_differing_layer": first["name"] if first else None,
            "output": {k: last[k] for k in ("name", "max_abs_diff", "rel_diff", "differs")}}


def _running_stats(state_a: Mapping[str, np.ndarray], state_b: Mapping[str, np.ndarray]) -> dict[str, Any]:
    names = [k for k in state_a if k.endswith(("running_mean", "running_var"))]
    diffs = {k: float(np.abs(state_a[k] - state_b[k]).max()) for k in names}
    differing = [k for k in names if diffs[k] > DIFF_RTOL * max(1.0, float(np.abs(state_a[k]).max()))]
    worst = max(names, key=lambda k: diffs[k]) if names else None
    return {"differing": len(differing), "of": len(names), "first": differing[0] if differing else None,
            "worst": worst, "max_abs_diff": diffs[worst] if worst else None}


def diff_report(a: ResNetSpec | str, b: ResNetSpec | str, input_shape=None, seed: int = 0, batch: int = 2,
                allow_large: bool = False) -> dict[str, Any]:
    """The fields that differ and, given the same weights and input, the rows where the outputs part.

    ``input_shape`` (C, H, W) defaults to a's own (``spec.input_shape``). Where the two
    specs do not hold the same tensors (names and shapes), no weights can be shared:
    the report says which tensor differs and measures nothing.
    """
    spec_a, spec_b = resolve(a), resolve(b)
    shape = tuple(int(d) for d in (input_shape or spec_a.input_shape))
    report: dict[str, Any] = {"a": spec_a.name, "b": spec_b.name, "fields": field_diff(spec_a, spec_b),
                              "input_shape": list(shape), "batch": batch, "seed": seed, "tolerance": DIFF_RTOL}
    layer_table(spec_a, shape)  # a bad input is its one-line error
    shapes_a, shapes_b = expected_shapes(spec_a), expected_shapes(spec_b)
    if shapes_a != shapes_b:
        name = next((k for k in [*shapes_a, *shapes_b] if shapes_a.get(k) != shapes_b.get(k)), "?")
        report.update(same_weights=False, why=f"the two specs do not hold the same tensors ({name}: "
                      f"{_dims(shapes_a.get(name))} against {_dims(shapes_b.get(name))}); nothing to run on both",
                      eval=None, train=None, identical=False)
        return report
    layer_table(spec_b, shape)
    check_model_fits(spec_a, shape, 2 * batch, allow_large=allow_large)  # float64: twice float32's bytes
    state = init_weights(spec_a, seed, perturb_bn=True)
    x = seeded_input(shape, batch, seed)
    runs_a = {mode: reference.run(spec_a, state, x, train=mode == "train") for mode in ("eval", "train")}
    report["same_weights"] = True
    report.update(_measure(runs_a, spec_b, state, x, rows=True))
    if len(report["fields"]) > 1:  # what each field does alone: a with only that field of b
        for f in report["fields"]:
            f["alone"] = _alone(spec_a, f, runs_a, state, x)
    return report


def _measure(runs_a, spec_b: ResNetSpec, state, x, rows: bool = False) -> dict[str, Any]:
    """spec_b on the same state and input against a's runs: per mode the first differing row and the output."""
    out: dict[str, Any] = {}
    for mode, (acts_a, after_a) in runs_a.items():
        acts_b, after_b = reference.run(spec_b, state, x, train=mode == "train")
        compared = compare_rows(acts_a, acts_b)
        out[mode] = {**_summary(compared), **({"layers": compared} if rows else {})}
        if mode == "train":
            out[mode]["running_stats"] = _running_stats(after_a, after_b)
    train = out["train"]
    out["identical"] = not (out["eval"]["first_differing_layer"] or train["first_differing_layer"]
                            or train["running_stats"]["differing"])
    return out


def _alone(spec_a: ResNetSpec, field: dict[str, Any], runs_a, state, x) -> dict[str, Any] | None:
    """The measurement with a changed in this one field (None where a cannot take it alone)."""
    data = spec_a.to_dict()
    *parents, leaf = field["field"].replace("[", ".").replace("]", "").split(".")
    where: Any = data
    for key in parents:
        where = where[int(key)] if key.isdigit() else where[key]
    where[int(leaf) if leaf.isdigit() else leaf] = field["b"]
    try:
        spec = spec_from_dict(data)
    except SpecError:
        return None
    if expected_shapes(spec) != expected_shapes(spec_a):
        return None
    try:
        layer_table(spec, tuple(x.shape[1:]))
    except UserError:
        return None
    m = _measure(runs_a, spec, state, x)
    return {"eval_first_differing_layer": m["eval"]["first_differing_layer"],
            "eval_output_rel_diff": m["eval"]["output"]["rel_diff"],
            "train_first_differing_layer": m["train"]["first_differing_layer"],
            "train_output_rel_diff": m["train"]["output"]["rel_diff"],
            "running_stats_differing": m["train"]["running_stats"]["differing"], "identical": m["identical"]}


def _dims(shape) -> str:
    return "absent" if shape is None else "x".join(map(str, shape))
