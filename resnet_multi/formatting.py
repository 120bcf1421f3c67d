"""Readable renderings of the commands' JSON reports (the JSON is the contract; this is for people)."""

from __future__ import annotations

from typing import Any, Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        line = "  ".join(c.rjust(w) if right[i] else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
        lines.append(line.rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def format_layer_table(report: dict[str, Any]) -> str:
    where = f"{report['backend']} on {report['device']}" if "backend" in report else "analytic"
    title = f"{report['name']}  input {_shape(report['input_shape'])}  ({where})"
    rows = [(r["name"], _shape(r["output_shape"]), f"{r['params']:,}", f"{r['buffers']:,}", f"{r['macs']:,}")
            for r in report["layers"]]
    rows.append(("total", "", f"{report['total_params']:,}", f"{report['total_buffers']:,}",
                 f"{report['total_macs']:,}"))
    table = table(("layer", "output (C,H,W)", "params", "buffers", "MACs"), rows,
                       (False, False, True, True, True))
    return f"{title}\n{table}"



def format_list(report: dict[str, Any]) -> str:
    rows = [(p["name"], p["block"], f"{p['params']:,}", p["description"]) for p in report["presets"]]
    return table(("preset", "block", "params", "what"), rows, (False, False, True, False))


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def format_parity(report: dict[str, Any]) -> str:
    tol_rel = report["tolerance"] / max(1.0, report["ref_max_abs"])
    head = (f"{report['name']} on {report['backend']} ({report['device']}, {report['framework_version']}) vs the "
            f"NumPy float64 reference: {report['mode']} mode, input {report['batch']}x{_shape(report['input_shape'])}, "
            f"seed {report['seed']}")
    rows = []
    for r in report["layers"]:
        bad = r["max_abs_diff"] is None or r["max_abs_diff"] > tol_rel * max(1.0, r["ref_max_abs"])
        rows.append((r["name"], _num(r["max_abs_diff"]), _num(r["ref_max_abs"]), _num(r["rel_diff"]),
                     "<-- over" if bad else ""))
    body = table(("layer", "max |diff|", "max |ref|", "relative", ""), rows, (False, True, True, True, False))
    verdict = "PASS" if report["ok"] else "FAIL"
    tail = (f"{verdict}: logits max |diff| {_num(report['max_abs_diff'])} <= tolerance {_num(report['tolerance'])}"
            if report["ok"] else
            f"{verdict}: logits max |diff| {_num(report['max_abs_diff'])} > tolerance {_num(report['tolerance'])}; "
            f"divergence starts at {report['first_divergent_layer']}")
    if "running_stats" in report:
        rs = report["running_stats"]
        tail += f"\nrunning statistics: worst {rs['worst']} max |diff| {_num(rs['max_abs_diff'])} (tolerance {_num(rs['tolerance'])})"
    return f"{head}\n{body}\n{tail}"
