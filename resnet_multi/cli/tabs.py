"""The report's section on the book's tabs: where its PyTorch/MXNet, TensorFlow and JAX networks part.

The book writes one network in four tabs and never checks that they compute
the same thing. For a preset that is one of those tabs (``presets.book_tabs``)
the report runs ``resnet-multi diff`` (resnet_multi.numerics.diff: the NumPy
float64 reference, no framework) from the PyTorch tab's preset to each tab's,
at the report's input size: the fields each tab sets differently, the first
layer whose output leaves the PyTorch tab's on the same weights, by how much,
and what each field does alone.
"""

from __future__ import annotations

from typing import Any

from resnet_multi.arch import presets
from resnet_multi.cli.svg import escape
from resnet_multi.numerics.diff import diff_report

BATCH = 2  # the reference runs each tab in eval and train mode, each field alone too: a small batch


def book_tabs_comparison(name: str, input_shape, seed: int = 0) -> dict[str, Any] | None:
    """Each tab of the book's network that ``name`` is one of, against its PyTorch tab; None for other presets."""
    tabs = presets.book_tabs(name)
    if tabs is None:
        return None
    base = tabs["PyTorch"]
    diffs: dict[str, dict[str, Any]] = {}
    rows = []
    for tab, preset in tabs.items():
        if preset not in diffs:
            diffs[preset] = diff_report(base, preset, input_shape, seed=seed, batch=BATCH)
        d = diffs[preset]
        rows.append({"tab": tab, "preset": preset, "fields": d["fields"], "identical": d["identical"],
                     "eval": {k: d["eval"][k] for k in ("first_differing_layer", "output")},
                     "train": {k: d["train"][k] for k in ("first_differing_layer", "output", "running_stats")}})
    return {"base": base, "input_shape": list(input_shape), "batch": BATCH, "seed": seed, "tabs": rows}


def summary(comparison: dict[str, Any]) -> dict[str, Any]:
    """What ``report --json`` says of it: per tab, its preset, the fields it differs in, where it parts."""
    return {t["tab"]: {"preset": t["preset"], "fields": [f["field"] for f in t["fields"]],
                       "eval_first_differing_layer": t["eval"]["first_differing_layer"],
                       "train_first_differing_layer": t["train"]["first_differing_layer"]}
            for t in comparison["tabs"]}


def _value(value: Any) -> str:
    if isinstance(value, list):
        return escape(", ".join(map(str, value)) or "none")
    return escape(f"{value:g}" if isinstance(value, float) else value)


def _parts(first: str | None, rel: float | None) -> str:
    if first is None:
        return '<span class="good">same output</span>'
    return f'<span class="bad">from {escape(first)}</span> (output {rel:.2e} relative)'


def _cell_rows(rows: list[list[str]], head: list[str], table_id: str) -> str:
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return (f'<div class="scroll"><table id="{table_id}"><thead><tr>{"".join(f"<th>{h}</th>" for h in head)}'
            f"</tr></thead><tbody>{body}</tbody></table></div>")


def tabs_section(comparison: dict[str, Any]) -> str:
    """The HTML section: one row per tab, then each field alone for the tabs that differ in several."""
    base = comparison["base"]
    rows = []
    for t in comparison["tabs"]:
        fields = ", ".join(f"<code>{escape(f['field'])}</code>" for f in t["fields"]) or '<span class="muted">none</span>'
        rs = t["train"]["running_stats"]
        rows.append([escape(t["tab"]), f"<code>{escape(t['preset'])}</code>", fields,
                     _parts(t["eval"]["first_differing_layer"], t["eval"]["output"]["rel_diff"]),
                     _parts(t["train"]["first_differing_layer"], t["train"]["output"]["rel_diff"]),
                     f"{rs['differing']} of {rs['of']}"])
    shape = "\u00d7".join(map(str, [comparison["batch"], *comparison["input_shape"]]))
    out = [f'<section id="tabs-section"><h2>The book\u2019s four tabs</h2><p>The same weights (seed '
           f"{comparison['seed']}, random BN statistics) and input ({shape}) through each tab\u2019s network, in the NumPy "
           f"float64 reference, against the PyTorch tab (<code>{escape(base)}</code>): where the outputs part "
           "(eval mode: running statistics; train mode: batch statistics) and how many BN running statistics "
           "differ after one train-mode pass. TensorFlow\u2019s <code>padding='same'</code> pads the odd pixel "
           "after, so it changes the outputs only where a padded input is even; BN momentum and the running "
           "variance change the running statistics only. <code>resnet-multi diff</code> prints the same.</p>",
           _cell_rows(rows, ["tab", "preset", f"differs from {escape(base)} in", "eval", "train",
                             "running statistics differing"], "book-tabs")]
    shown = set()
    for t in comparison["tabs"]:
        if len(t["fields"]) < 2 or t["preset"] in shown:
            continue
        shown.add(t["preset"])
        alone = []
        for f in t["fields"]:
            m = f.get("alone")
            cells = [f"<code>{escape(f['field'])}</code>", _value(f["a"]), _value(f["b"])]
            if m is None:
                cells += ['<span class="muted">cannot change alone</span>', "", ""]
            else:
                cells += [_parts(m["eval_first_differing_layer"], m["eval_output_rel_diff"]),
                          _parts(m["train_first_differing_layer"], m["train_output_rel_diff"]),
                          str(m["running_stats_differing"])]
            alone.append(cells)
        out.append(f"<details open><summary>{escape(t['tab'])} tab: each field alone (the PyTorch tab with only "
                   f"that field of <code>{escape(t['preset'])}</code>)</summary>"
                   + _cell_rows(alone, ["field", escape(base), escape(t["preset"]), "eval", "train",
                                        "running statistics differing"], f"alone-{escape(t['preset'])}")
                   + "</details>")
    out.append("</section>")
    return "".join(out)
