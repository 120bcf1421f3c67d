"""Readable renderings of the commands' JSON reports (the JSON is the contract; this is for people)."""

from __future__ import annotations

import json
import math
from typing import Any, Sequence


def strict_json(report: Any) -> str:
    """The report as valid JSON: a non-finite number (a diverged loss, an empty maximum) becomes null."""
    return json.dumps(_finite(report), indent=2, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def with_notes(text: str, report: dict[str, Any]) -> str:
    """A readable report followed by its ``notes`` (what a command did that the table does not show)."""
    notes = report.get("notes") or []
    return "\n".join([text] + [f"note: {n}" for n in notes])


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool]) -> str:
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
    table = render_table(("layer", "output (C,H,W)", "params", "buffers", "MACs"), rows,
                       (False, False, True, True, True))
    if report.get("feature_info"):
        features = render_table(("feature", "row", "channels", "reduction"),
                                [(str(f["index"]), f["row"], str(f["channels"]), str(f["reduction"]))
                                 for f in report["feature_info"]], (True, False, True, True))
        table = f"{table}\n\nfeatures (the model returns these maps, in order)\n{features}"
    return f"{title}\n{table}"


def format_list(report: dict[str, Any]) -> str:
    rows = [(p["name"], p["block"], f"{p['params']:,}", p["description"]) for p in report["presets"]]
    return render_table(("preset", "block", "params", "what"), rows, (False, False, True, False))


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
    body = render_table(("layer", "max |diff|", "max |ref|", "relative", ""), rows, (False, True, True, True, False))
    verdict = "PASS" if report["ok"] else "FAIL"
    tail = (f"{verdict}: logits max |diff| {_num(report['max_abs_diff'])} <= tolerance {_num(report['tolerance'])}"
            if report["ok"] else
            f"{verdict}: logits max |diff| {_num(report['max_abs_diff'])} > tolerance {_num(report['tolerance'])}; "
            f"divergence starts at {report['first_divergent_layer']}")
    if "running_stats" in report:
        rs = report["running_stats"]
        tail += f"\nrunning statistics: worst {rs['worst']} max |diff| {_num(rs['max_abs_diff'])} (tolerance {_num(rs['tolerance'])})"
    return f"{head}\n{body}\n{tail}"


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _alone(m: dict[str, Any] | None) -> tuple[str, str, str]:
    if m is None:
        return ("not alone", "", "")
    first = [m[f"{k}_first_differing_layer"] for k in ("eval", "train")]
    return (*(f"from {f} ({_num(m[f'{k}_output_rel_diff'])})" if f else "same"
              for f, k in zip(first, ("eval", "train"))), f"{m['running_stats_differing']} differ")


def format_diff(report: dict[str, Any]) -> str:
    a, b = report["a"], report["b"]
    fields = report["fields"]
    lines = [f"{a} vs {b}: {len(fields)} field{'s' if len(fields) != 1 else ''} differ" if fields
             else f"{a} vs {b}: no field differs"]
    if fields and any("alone" in f for f in fields):  # each field measured alone: a with only that field of b
        rows = [(f["field"], _value(f["a"]), _value(f["b"]), *_alone(f.get("alone"))) for f in fields]
        lines.append(render_table(("field", a, b, "alone: eval (output rel.)", "train (output rel.)",
                                   "running stats"), rows, (False,) * 6))
    elif fields:
        lines.append(render_table(("field", a, b), [(f["field"], _value(f["a"]), _value(f["b"])) for f in fields],
                                  (False, False, False)))
    if not report["same_weights"]:
        return "\n".join(lines + [report["why"]])
    lines.append(f"\nthe same weights (seed {report['seed']}, random BN statistics) and input "
                 f"{report['batch']}x{_shape(report['input_shape'])}, through the NumPy float64 reference:")
    ev, tr = report["eval"], report["train"]
    train_rows = {r["name"]: r for r in tr["layers"]}
    rows = []
    for r in ev["layers"]:
        t = train_rows.get(r["name"], {})
        shape = _shape(r["output_shape_a"] or r["output_shape_b"] or [])
        if r["output_shape_a"] != r["output_shape_b"]:
            shape = f"{_shape(r['output_shape_a'] or [])} / {_shape(r['output_shape_b'] or [])}"
        mark = "<-- first difference" if r["name"] == ev["first_differing_layer"] else ""
        rows.append((r["name"], shape, _num(r["max_abs_diff"]), _num(r["rel_diff"]), _num(t.get("rel_diff")), mark))
    heads = ("layer", "output", "eval max |a-b|", "relative", "train relative", "")
    keep = 6 if ev["first_differing_layer"] else 5  # no empty last column
    lines.append(render_table(heads[:keep], [r[:keep] for r in rows], (False, False, True, True, True, False)[:keep]))
    rs = tr["running_stats"]
    if report["identical"]:
        lines.append("identical: no layer differs in either mode, nor any running statistic")
    else:
        where = (f"eval: first difference at {ev['first_differing_layer'] or '-'}; train: at "
                 f"{tr['first_differing_layer'] or '-'}" if ev["first_differing_layer"] or tr["first_differing_layer"]
                 else "no layer output differs in eval or train mode")
        lines.append(f"{where}; running statistics after one train-mode pass: "
                     f"{rs['differing']} of {rs['of']} differ (worst {rs['worst'] or '-'}, max |a-b| "
                     f"{_num(rs['max_abs_diff'])})")
    return "\n".join(lines)


def _cell(res: dict[str, Any], row: dict[str, Any], want: dict[str, Any]) -> str:
    same = (row["output_shape"], row["params"], row["buffers"]) == (want["output_shape"], want["params"],
                                                                    want["buffers"])
    return f"{_shape(row['output_shape'])} {row['params']:,}" + ("" if same else " !=")


def _ms(timing: dict[str, Any] | None) -> str:
    if not timing:
        return "-"
    if "error" in timing:
        return "failed"
    return f"{timing['median_s'] * 1e3:.1f} ms ({timing['images_per_s']:.0f} img/s)"


def format_compare(report: dict[str, Any]) -> str:
    names = list(report["backends"])
    ok = {n: r for n, r in report["backends"].items() if "error" not in r}
    out = [f"{report['name']}: input {report['batch']}x{_shape(report['input_shape'])}, seed {report['seed']}, "
           f"device {report['device']}, {report['precision']}"]
    analytic = report["analytic"]["layers"]
    rows = []
    for i, want in enumerate(analytic):
        line = [want["name"], f"{_shape(want['output_shape'])} {want['params']:,}"]
        for n in names:
            layers = ok.get(n, {}).get("layers", [])
            line.append(_cell(ok[n], layers[i], want) if i < len(layers) else "-")
        rows.append(line)
    rows.append(["total params", f"{report['analytic']['total_params']:,}"]
                + [f"{ok[n]['total_params']:,}" if n in ok else "-" for n in names])
    out += ["", "Layers: output (C,H,W) and trainable params; '!=' marks a disagreement with the spec",
            render_table(["layer", "spec"] + names, rows, [False] * (2 + len(names)))]
    prows = []
    for n in names:
        r = report["backends"][n]
        if "error" in r:
            prows.append([n, "failed", r["error"], "", ""])
            continue
        p = r["parity"]
        prows.append([n, "ok" if p["ok"] else "FAIL", _num(p["max_abs_diff"]), _num(p["tolerance"]),
                      f"{p['worst_layer']} ({_num(p['worst_rel_diff'])})"])
    out += ["", "Parity with the NumPy float64 reference (eval mode, same weights file and input)",
            render_table(["backend", "logits", "max |diff|", "tolerance", "worst layer (relative)"], prows,
                  [False, False, True, True, False])]
    trows = []
    for n in names:
        t = ok.get(n, {}).get("timing", {})
        mem = (t.get("infer") or {}).get("peak_memory_mb")
        trows.append([n, _ms(t.get("infer")), _ms(t.get("train")), f"{mem:.0f} MB" if mem else "-"])
    out += ["", "Speed (median of repeats after warm-up)",
            render_table(["backend", "inference", "train step", "peak memory"], trows, [False] * 4)]
    erows = [[n, r["environment"]["framework_version"], r["environment"]["device"], r.get("python", "")]
             for n, r in ok.items()]
    out += ["", "Environments", render_table(["backend", "framework", "device", "interpreter"], erows, [False] * 4)]
    if any("losses" in r.get("train", {}) or "parallel" in r.get("train", {}) for r in ok.values()):
        out += ["", format_trajectories(report)]
    return "\n".join(out)


def format_trajectories(report: dict[str, Any]) -> str:
    workers = report.get("workers")
    if workers:
        return _format_parallel_trajectories(report, workers)
    ok = {n: r["train"] for n, r in report["backends"].items()
          if "error" not in r and "losses" in r.get("train", {})}
    steps = max(len(t["losses"]) for t in ok.values())
    rows = [[str(i + 1)] + [f"{t['losses'][i]:.6f}" if i < len(t["losses"]) else "-" for t in ok.values()]
            for i in range(steps)]
    return "Training losses, plain SGD from the same weights and batches\n" + render_table(
        ["step"] + list(ok), rows, [True] * (1 + len(ok)))


def _format_parallel_trajectories(report: dict[str, Any], workers: int) -> str:
    """Each backend's single-worker losses beside its N workers' (a failed run: 'failed' in its column), the
    largest gap between them, and each engine (or why it failed)."""
    trained = {n: r["train"] for n, r in report["backends"].items() if "error" not in r and r.get("train")}
    columns: list[tuple[str, list[float] | None, str]] = []  # header, losses (None: failed), last row
    engines = []
    for n, t in trained.items():
        par = t.get("parallel") or {}
        columns.append((n, t.get("losses"), ""))
        columns.append((f"{n} x{workers}", par.get("losses"), _num(par.get("max_rel_diff")) if "losses" in par else ""))
        engines.append([n, _num(par.get("max_rel_diff")) if "losses" in par else "failed",
                        par.get("engine", "") if "losses" in par else par.get("error", "not run")])
    steps = max((len(c) for _, c, _ in columns if c), default=0)
    rows = [[str(i + 1)] + ["failed" if c is None else f"{c[i]:.6f}" if i < len(c) else "-" for _, c, _ in columns]
            for i in range(steps)]
    rows.append(["max |diff|"] + [last for _, _, last in columns])
    right = [False] + [True] * len(columns)
    return "\n".join([
        f"Training losses, plain SGD from the same weights and batches: one worker, and {workers} data-parallel "
        f"workers (x{workers}: the batch split over them, BN over the whole batch)",
        render_table(["step"] + [h for h, _, _ in columns], rows, right), "",
        f"Data-parallel engines ({workers} workers); max |diff|: the largest gap to one worker's loss, relative "
        "to max(1, |loss|)",
        render_table(["backend", "max |diff|", "engine"], engines, [False, True, False])])


def format_convert(report: dict[str, Any]) -> str:
    return (f"{report['source']} ({report['source_format']}) -> {report['destination']} "
            f"({report['destination_format']}): {report['arch']}, {report['tensors']} tensors")


def format_train(report: dict[str, Any]) -> str:
    final = report["final"] or {}
    return (f"{report['name']} on {report['backend']} ({report['device']}): {len(report['epochs'])} epochs, "
            f"val accuracy {final.get('val_accuracy', float('nan')):.4f}, val loss "
            f"{final.get('val_loss', float('nan')):.4f}\ncheckpoint {report['checkpoint']}\n"
            f"metrics {report['metrics']}\nplot {report['plot']}")


def format_bench(report: dict[str, Any]) -> str:
    mem = f", peak memory {report['peak_memory_mb']:.0f} MB" if report.get("peak_memory_mb") else ""
    return (f"{report['name']} on {report['backend']} {report['framework_version']} ({report['device']}), "
            f"{report['mode']}, batch {report['batch']}x{'x'.join(map(str, report['input_shape']))}, "
            f"{report['precision']}\n"
            f"median {report['median_s'] * 1e3:.1f} ms (min {report['min_s'] * 1e3:.1f}, max "
            f"{report['max_s'] * 1e3:.1f}, {report['repeats']} repeats after {report['warmup']} warm-up): "
            f"{report['images_per_s']:.1f} images/s{mem}\npractice: {report.get('practice', '')}")


def _top1(entry: dict[str, Any]) -> str:
    top1 = entry.get("accuracy", {}).get("top1")
    return "-" if top1 is None else f"{top1:.3f}"


def format_weights_list(report: dict[str, Any]) -> str:
    from urllib.parse import urlsplit

    rows = [(e["arch"], e["name"], e["format"], _top1(e), urlsplit(e["url"]).hostname or "")
            for e in report["weights"]]
    if not rows:
        return "no entries"
    table = render_table(("arch", "name", "format", "top-1 %", "source host"), rows,
                         (False, False, False, True, False))
    return f"{table}\n{len(rows)} entries; 'resnet-multi weights show ARCH NAME' for one's every field"


def format_weights_show(report: dict[str, Any]) -> str:
    checksum, pre = report["checksum"], report["preprocessing"]
    lines = [f"{report['arch']} {report['name']}",
             f"url:           {report['url']}",
             f"format:        {report['format']}"]
    if "archive" in report:
        lines.append(f"archive:       {report['archive']['kind']}, holding {report['archive']['member']}")
    of = "" if checksum["of"] == "file" else f" (of the {checksum['of']})"
    lines.append(f"checksum:      {checksum['algorithm']} {checksum['value']}{of}")
    if "sha256" in report:
        lines.append(f"sha256:        {report['sha256']}")
    lines.append(f"preprocessing: {report['preprocessing_text']}")
    lines.append(f"categories:    {report['categories']} ({report['category_count']} class names)")
    if "accuracy" in report:
        acc = report["accuracy"]
        lines.append(f"accuracy:      top-1 {acc['top1']}%, top-5 {acc['top5']}% on {acc['dataset']}")
    else:
        lines.append("accuracy:      not published by the source")
    lines += ["sources:", f"  entry:         {report['source']}", f"  checksum:      {checksum['source']}",
              f"  preprocessing: {pre['source']}"]
    if "accuracy" in report:
        lines.append(f"  accuracy:      {report['accuracy']['source']}")
    if "note" in report:
        lines.append(f"note: {report['note']}")
    return "\n".join(lines)


def _predictions(predictions: list[dict[str, Any]]) -> list[str]:
    lines = []
    for item in predictions:
        lines.append(item["image"])
        rows = [(t["index"], t["label"] if t["label"] is not None else "", f"{t['probability']:.4f}")
                for t in item["top"]]
        lines.append(render_table(("class", "label", "probability"), rows, (True, False, True)))
    return lines


def format_predict(report: dict[str, Any]) -> str:
    if "backends" not in report:  # one backend, here
        title = f"{report['model']} with {report['weights']} on {report['backend']} ({report['device']})"
        return "\n".join([title, *_predictions(report["predictions"])])
    lines = [f"{report['model']} with {report['weights']}: " + ", ".join(report["backends"])]
    if "predictions" in report:
        lines += [f"predictions of {report['backend']}:", *_predictions(report["predictions"])]
    agreement = report.get("agreement") or {"backends": {}}
    rows = []
    for backend, column in report["backends"].items():
        if "error" in column:
            rows.append((backend, "FAILED", column["error"]))
            continue
        mine = agreement["backends"][backend]
        rows.append((backend, "yes" if mine["same_top"] else "NO", f"{mine['max_probability_diff']:.2e}"))
    lines.append(render_table(("backend", "same top-k", "max probability diff"), rows, (False, False, True)))
    return "\n".join(lines)
