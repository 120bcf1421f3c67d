"""The HTML report: compare's results and the four lowerings' code side by side, in one self-contained file.

``resnet-multi report`` runs compare (resnet_multi.run.compare) and writes one
HTML page that opens offline: its stylesheet, its one small script and its
charts (hand-written SVG) are inline, and nothing on it points outside it.
The code view reads each backend's ``model.py`` as text at report time
(importing no framework), cuts it at its ``# -- <part>`` section comments
(docs/backends.md: every backend has the same sections) and puts the four
versions of each part next to each other, highlighted with Pygments, under
the part's output shape and parameters from the analytic layer table. For
one of the book's tabs (d2l_resnet18 and its _tf/_jax presets) the page also
compares the tabs through the NumPy reference (cli/tabs.py).
"""

from __future__ import annotations

import datetime
import importlib.resources
import re
from pathlib import Path
from typing import Any

from resnet_multi import faces
from resnet_multi.cli.formatting import format_compare
from resnet_multi.cli.svg import COLORS, bar_chart, escape, line_chart
from resnet_multi.cli.tabs import summary as tabs_summary
from resnet_multi.cli.tabs import tabs_section
from resnet_multi.errors import UserError
from resnet_multi.files import atomic_write, check_destination

PARTS = ("stem", "block", "stage", "head", "build")
SECTIONS = ("device handling", "layers", "stem", "block", "stage", "head", "build", "the contract")
_HEADER = re.compile(r"^# -- (.*?)[\s-]*$")


def _pygments():
    try:
        import pygments
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer
    except ImportError:
        raise UserError('the HTML report needs Pygments: pip install "resnet-multi[report]"') from None
    return pygments, HtmlFormatter, PythonLexer


def check_report_destination(path: str | Path) -> Path:
    """Before a long run: the page's folder exists, it is not a folder itself, and Pygments is here."""
    path = check_destination(path)
    _pygments()
    return path


# -- the code: each backend's model.py, cut at its section comments ---------------------------------------


def backend_source(backend: str) -> str:
    """The text of ``resnet_multi/backends/<backend>/model.py`` as installed (read, not imported)."""
    return importlib.resources.files("resnet_multi").joinpath("backends", backend, "model.py").read_text("utf-8")


def _section_name(title: str) -> str | None:
    head = re.split(r"[:(]", title, maxsplit=1)[0].strip().lower()
    if head in SECTIONS:
        return head
    last = head.split()[-1] if head.split() else ""
    return last if last in SECTIONS else None  # e.g. "residual block (basic and bottleneck ...)"


def split_sections(text: str) -> dict[str, tuple[int, str]]:
    """Section name -> (its first line number, its text from the ``# --`` comment to the next one)."""
    lines = text.splitlines()
    starts = [(i, _section_name(m.group(1))) for i, line in enumerate(lines) if (m := _HEADER.match(line))]
    out: dict[str, tuple[int, str]] = {}
    for k, (i, name) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else len(lines)
        if name is not None and name not in out:
            head = lines[i].rstrip("- ")  # the comment, without its run of dashes
            out[name] = (i + 1, "\n".join([head, *lines[i + 1:end]]).rstrip() + "\n")
    return out


def code_parts(backends: list[str]) -> dict[str, dict[str, tuple[int, str] | None]]:
    """Part -> backend -> (first line, code), or None where that backend's file has no such section."""
    sections = {b: split_sections(backend_source(b)) for b in backends}
    return {part: {b: sections[b].get(part) for b in backends} for part in PARTS}


# -- the analytic facts of each part ---------------------------------------------------------------------


def _shape(shape) -> str:
    return "\u00d7".join(str(d) for d in shape)


def part_facts(analytic: dict[str, Any]) -> dict[str, list[tuple[str, str, str]]]:
    """Part -> rows of (name, output C x H x W, trainable params) from the analytic layer table."""
    rows = analytic["layers"]
    blocks = [r for r in rows if r["name"].startswith("layer")]
    stages: dict[str, list[dict[str, Any]]] = {}
    for r in blocks:
        stages.setdefault(r["name"].split(".")[0], []).append(r)
    fact = {
        "stem": [r for r in rows if r["name"] == "stem"],
        "block": blocks,
        "head": [r for r in rows if r["name"] in ("post_bn", "avgpool", "fc")],
    }
    out = {part: [(r["name"], _shape(r["output_shape"]), f"{r['params']:,}") for r in fact[part]] for part in fact}
    out["stage"] = [(f"{name} ({len(rs)} blocks)", _shape(rs[-1]["output_shape"]), f"{sum(r['params'] for r in rs):,}")
                    for name, rs in stages.items()]
    out["build"] = [(f"input {_shape(analytic['input_shape'])} \u2192 logits", _shape(rows[-1]["output_shape"][:1]),
                     f"{analytic['total_params']:,}")]
    return {part: out[part] for part in PARTS}


# -- the page --------------------------------------------------------------------------------------------


def _num(value: float | None) -> str:
    return "\u2013" if value is None else f"{value:.2e}"


def _table(head: list[str], rows: list[list[str]], table_id: str, backend_cols: list[str | None]) -> str:
    """An HTML table; cells are HTML already. backend_cols: the backend of each column (or None)."""
    def cells(tag: str, row: list[str]) -> str:
        return "".join(f'<{tag}{f" data-backend={chr(34)}{b}{chr(34)}" if b else ""}>{c}</{tag}>'
                       for c, b in zip(row, backend_cols))
    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return (f'<div class="scroll"><table id="{table_id}"><thead><tr>{cells("th", head)}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _status_cell(result: dict[str, Any], failure: str | None) -> str:
    if "error" in result:
        return f'<span class="bad">failed</span><div class="why">{escape(failure)}</div>'
    if failure:
        return f'<span class="warn">incomplete</span><div class="why">{escape(failure)}</div>'
    return '<span class="good">ran</span>'


def _layers_section(report: dict[str, Any], names: list[str]) -> str:
    analytic = report["analytic"]
    head = ["layer", "spec: output", "spec: params"] + [escape(n) for n in names]
    cols: list[str | None] = [None, None, None] + names
    rows = [["status", "", ""] + [_status_cell(report["backends"][n], report["failed"].get(n)) for n in names]]
    for i, want in enumerate(analytic["layers"]):
        row = [escape(want["name"]), _shape(want["output_shape"]), f"{want['params']:,}"]
        for n in names:
            got = (report["backends"][n].get("layers") or [])
            if i >= len(got):
                row.append('<span class="muted">\u2013</span>')
                continue
            g = got[i]
            same = (g["name"], g["output_shape"], g["params"], g["buffers"]) == (
                want["name"], want["output_shape"], want["params"], want["buffers"])
            cell = f"{_shape(g['output_shape'])} \u00b7 {g['params']:,}"
            row.append(f'<span class="good">{cell}</span>' if same else f'<span class="bad">\u2260 {cell}</span>')
        rows.append(row)
    rows.append(["<b>total</b>", "", f"<b>{analytic['total_params']:,}</b>"]
                + [f"{r['total_params']:,}" if "total_params" in (r := report["backends"][n]) else "\u2013"
                   for n in names])
    return ("<section id=\"layers-section\"><h2>Layers per backend</h2><p>Each framework's real model, counted by the "
            "framework itself: output C\u00d7H\u00d7W \u00b7 trainable params, against the analytic table of the spec "
            "(green: equal, red \u2260: differs).</p>" + _table(head, rows, "layers", cols) + "</section>")


def _parity_section(report: dict[str, Any], names: list[str]) -> str:
    ok = [n for n in names if "error" not in report["backends"][n]]
    head = ["backend", "logits", "max |diff|", "tolerance", "worst layer (relative)"]
    rows = []
    for n in names:
        r = report["backends"][n]
        if "error" in r:
            rows.append([escape(n), '<span class="bad">failed</span>', f'<span class="why">{escape(r["error"])}</span>',
                         "", ""])
            continue
        p = r["parity"]
        rows.append([escape(n), '<span class="good">within tolerance</span>' if p["ok"] else '<span class="bad">FAIL</span>',
                     _num(p["max_abs_diff"]), _num(p["tolerance"]), f"{escape(p['worst_layer'])} ({_num(p['worst_rel_diff'])})"])
    summary = _table(head, rows, "parity-summary", [None] * len(head))
    analytic = [r["name"] for r in report["analytic"]["layers"]]
    per = {n: {r["name"]: r["rel_diff"] for r in report["backends"][n]["parity"]["layers"]} for n in ok}
    lrows = [[escape(name)] + [_num(per[n].get(name)) if n in per else '<span class="muted">\u2013</span>' for n in names]
             for name in analytic]
    layers = _table(["layer"] + [escape(n) for n in names], lrows, "parity", [None] + names)
    chart = line_chart({n: [per[n].get(name) for name in analytic] for n in ok}, analytic,
                       "max |diff| / max |reference|", log=True, title="parity per layer")
    return ("<section id=\"parity-section\"><h2>Parity with the NumPy float64 reference</h2><p>Eval mode, the same "
            f"weights file and input (batch {report['batch']}) in every backend. Per layer: max |diff| / max |reference|."
            f"</p>{summary}{chart}<details><summary>per layer</summary>{layers}</details></section>")


def _speed_section(report: dict[str, Any], names: list[str]) -> str:
    rows, bars = [], []
    for n in names:
        t = report["backends"][n].get("timing") or {}
        cells = [escape(n)]
        for mode in ("infer", "train"):
            m = t.get(mode)
            if not m:
                cells += ["\u2013", ""]
            elif "error" in m:
                cells += ['<span class="bad">failed</span>', f'<span class="why">{escape(m["error"])}</span>']
            else:
                cells += [f"{m['median_s'] * 1e3:.1f} ms ({m['images_per_s']:.0f} img/s)", escape(m.get("practice", ""))]
                bars.append((n, "inference" if mode == "infer" else "train step", m["median_s"] * 1e3))
        if "error" in report["backends"][n]:
            cells[1] = f'<span class="bad">failed</span> <span class="why">{escape(report["backends"][n]["error"])}</span>'
        mem = (t.get("infer") or {}).get("peak_memory_mb")
        rows.append(cells + [f"{mem:.0f} MB" if mem else "\u2013"])
    table = _table(["backend", "inference", "practice", "train step", "practice", "peak memory"], rows, "speed",
                   [None] * 6)
    return ("<section id=\"speed-section\"><h2>Speed</h2><p>Median of the timed repeats after warm-up, batch "
            f"{report['batch']}, {escape(report['device'])}, {escape(report['precision'])}; each framework with its own best "
            f"practice.</p>{table}{bar_chart(bars, 'ms', 'speed')}</section>")


def _training_section(report: dict[str, Any], names: list[str]) -> str:
    trained = {n: r["train"]["losses"] for n in names if "losses" in ((r := report["backends"][n]).get("train") or {})}
    failed = {n: r["train"]["error"] for n in names if "error" in ((r := report["backends"][n]).get("train") or {})}
    if not trained and not failed:
        return ("<section id=\"training-section\"><h2>Training trajectories</h2><p class=\"muted\">Not run: "
                "<code>--train-steps N</code> adds the loss of the first N plain-SGD steps per backend.</p></section>")
    steps = max((len(v) for v in trained.values()), default=0)
    rows = [[str(i + 1)] + [f"{trained[n][i]:.6f}" if n in trained and i < len(trained[n]) else "\u2013"
                            for n in names] for i in range(steps)]
    rows += [["failed"] + [f'<span class="why">{escape(failed.get(n, ""))}</span>' for n in names]] if failed else []
    table = _table(["step"] + [escape(n) for n in names], rows, "training", [None] + names)
    chart = line_chart(trained, [str(i + 1) for i in range(steps)], "loss", log=False, title="training losses")
    return ("<section id=\"training-section\"><h2>Training trajectories</h2><p>Plain SGD from the same weights and "
            f"batches: the losses agree step by step when the lowerings agree.</p>{table}{chart}</section>")


def _environment_section(report: dict[str, Any], names: list[str]) -> str:
    rows = []
    for n in names:
        r = report["backends"][n]
        env = r.get("environment") or {}
        rows.append([escape(n), escape(env.get("framework_version", "\u2013")), escape(env.get("device", "\u2013")),
                     escape(env.get("python", "\u2013")), escape(env.get("numpy", "\u2013")), escape(env.get("platform", "\u2013")),
                     f"<code>{escape(r.get('python', ''))}</code>", f"{r.get('wall_s', 0)} s",
                     f'<span class="why">{escape(r["error"])}</span>' if "error" in r else ""])
    table = _table(["backend", "framework", "device", "Python", "NumPy", "platform", "interpreter", "wall", "error"],
                   rows, "environments", [None] * 9)
    return f"<section id=\"environments-section\"><h2>Environments</h2><p>Each backend ran in its own interpreter.</p>{table}</section>"


def _code_section(report: dict[str, Any], facts: dict[str, list[tuple[str, str, str]]]) -> str:
    _, HtmlFormatter, PythonLexer = _pygments()
    from pygments import highlight

    code_backends = faces.names()
    parts = code_parts(code_backends)
    toggles = "".join(f'<label><input type="checkbox" data-toggle="{b}" checked> {b}</label>' for b in code_backends)
    out = ["<section id=\"code\"><h2>The four lowerings, part by part</h2><p>Each backend's <code>model.py</code> as "
           "installed, cut at its <code># --</code> section comments (docs/backends.md); line numbers are the file's. "
           "Under each part: its output shape and parameters from the analytic table.</p>",
           f'<div class="controls">show: {toggles} <label><input type="checkbox" id="wrap" checked> wrap long lines</label></div>',
           '<nav class="parts">' + " ".join(f'<a href="#part-{p}">{p}</a>' for p in PARTS) + "</nav>"]
    for part in PARTS:
        frows = "".join(f"<tr><td>{escape(a)}</td><td>{escape(b)}</td><td>{escape(c)}</td></tr>" for a, b, c in facts[part])
        out.append(f'<section class="part" id="part-{part}"><h3>{part}</h3><details class="facts"{" open" if len(facts[part]) <= 6 else ""}>'
                   f"<summary>output C\u00d7H\u00d7W and params ({len(facts[part])} row{'s' if len(facts[part]) != 1 else ''})"
                   f'</summary><table class="facts"><thead><tr><th>row</th><th>output</th><th>params</th></tr></thead>'
                   f'<tbody>{frows}</tbody></table></details><div class="panes">')
        for b in code_backends:
            where = parts[part][b]
            result = report["backends"].get(b)
            if result is None:
                status = '<span class="muted">not in this comparison</span>'
            elif "error" in result:
                status = f'<span class="bad" title="{escape(result["error"])}">failed: {escape(result["error"][:120])}</span>'
            else:
                status = '<span class="good">parity ok</span>' if result["parity"]["ok"] else '<span class="bad">parity FAIL</span>'
            if where is None:
                body = '<p class="muted">no such section in this file</p>'
                lines = ""
            else:
                start, text = where
                body = highlight(text, PythonLexer(), HtmlFormatter(cssclass="hl", linenos="inline", linenostart=start))
                lines = f"lines {start}\u2013{start + text.count(chr(10)) - 1}"
            out.append(f'<div class="pane" data-backend="{b}" data-part="{part}"><div class="pane-head" '
                       f'style="border-color:{COLORS.get(b, "#555")}"><b>{b}</b> <span class="muted">'
                       f"backends/{b}/model.py {lines}</span> {status}</div>{body}</div>")
        out.append("</div></section>")
    out.append("</section>")
    return "".join(out)


CSS = """
:root{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#222;background:#fff}
body{margin:0 auto;padding:1rem 1.5rem 3rem;max-width:1800px;font-size:14px;line-height:1.4}
h1{font-size:1.5rem;margin:.2rem 0}h2{font-size:1.2rem;margin:1.6rem 0 .4rem;border-bottom:1px solid #ddd}
h3{font-size:1.05rem;margin:1rem 0 .3rem}
table{border-collapse:collapse;font-size:13px;margin:.3rem 0}th,td{border:1px solid #ddd;padding:2px 8px;text-align:left;
vertical-align:top}th{background:#f4f4f4}td{font-variant-numeric:tabular-nums}
.scroll{overflow-x:auto}.good{color:#1b7a2f}.bad{color:#b3261e;font-weight:600}.warn{color:#a86400;font-weight:600}
.why{color:#666;font-size:12px;max-width:40ch;white-space:normal}.muted{color:#777}
.cards{display:flex;flex-wrap:wrap;gap:.6rem;margin:.6rem 0}.card{border:1px solid #ddd;border-left:5px solid;border-radius:4px;
padding:.4rem .7rem;min-width:14rem;max-width:30rem}
.chart{width:100%;max-width:900px;height:auto;font-size:11px;display:block;margin:.5rem 0}
.controls{margin:.4rem 0;position:sticky;top:0;background:#fff;padding:.3rem 0;z-index:2;border-bottom:1px solid #eee}
.controls label{margin-right:.8rem}nav.parts a{margin-right:.8rem}
.panes{display:grid;grid-auto-flow:column;grid-auto-columns:minmax(0,1fr);gap:.5rem}
.pane{border:1px solid #ddd;border-radius:4px;min-width:0;background:#fafafa}
.pane-head{border-top:4px solid;padding:.25rem .5rem;font-size:12px;background:#f2f2f2}
.pane .hl{margin:0;overflow-x:auto}.pane pre{margin:0;padding:.4rem .5rem;font-size:11.5px;line-height:1.35}
body.wrap .pane pre{white-space:pre-wrap;word-break:break-word}
table.facts{font-size:12px}details.facts{margin:.2rem 0 .4rem}
.hide-torch [data-backend=torch],.hide-tensorflow [data-backend=tensorflow],.hide-flax [data-backend=flax],
.hide-mxnet [data-backend=mxnet]{display:none}
@media print{
 body{max-width:none;padding:0;font-size:10pt}.controls,nav.parts{display:none}
 .pane,[data-backend]{display:revert!important}.panes{grid-auto-flow:row;grid-auto-columns:auto}
 .pane pre{white-space:pre-wrap;font-size:7.5pt}.pane .hl{overflow:visible}.scroll{overflow:visible}
 details>*{display:revert}section.part{break-before:auto}#code{break-before:page}
 .pane{break-inside:avoid-page}h2,h3{break-after:avoid-page}a{color:inherit;text-decoration:none}
}
"""

SCRIPT = """
(function(){
  var body=document.body;
  document.querySelectorAll('input[data-toggle]').forEach(function(box){
    box.addEventListener('change',function(){body.classList.toggle('hide-'+box.dataset.toggle,!box.checked);});
  });
  var wrap=document.getElementById('wrap');
  wrap.addEventListener('change',function(){body.classList.toggle('wrap',wrap.checked);});
  window.addEventListener('beforeprint',function(){document.querySelectorAll('details').forEach(function(d){d.open=true;});});
  body.dataset.ready='1';
})();
"""


def render_report(report: dict[str, Any]) -> str:
    """The whole page for one compare report, as a string."""
    _, HtmlFormatter, _ = _pygments()
    names = list(report["backends"])
    cards = []
    for n in names:
        r = report["backends"][n]
        failure = report["failed"].get(n)
        env = r.get("environment") or {}
        detail = (f"{escape(env.get('framework_version', ''))} on {escape(env.get('device', ''))}" if env else "")
        cards.append(f'<div class="card" data-backend="{n}" style="border-left-color:{COLORS.get(n, "#555")}"><b>{escape(n)}'
                     f"</b> {_status_cell(r, failure)} <div class=\"muted\">{detail}</div></div>")
    title = f"{report['name']}: {', '.join(names)}"
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    verdict = ('<span class="good">every backend ran and agrees</span>' if report["ok"]
               else f'<span class="bad">{len(report["failed"])} backend(s) failed</span>')
    facts = part_facts(report["analytic"])
    body = "".join([
        f"<header><h1>{escape(report['name'])} across frameworks</h1><p>input {report['batch']}\u00d7"
        f"{_shape(report['input_shape'])}, seed {report['seed']}, device {escape(report['device'])}, "
        f"{escape(report['precision'])}; {report['analytic']['total_params']:,} parameters; {verdict}. "
        f"<span class=\"muted\">Written by resnet-multi report, {escape(when)}.</span></p>"
        '<nav class="parts"><a href="#layers-section">layers</a> <a href="#parity-section">parity</a> '
        '<a href="#speed-section">speed</a> <a href="#training-section">training</a> '
        + ('<a href="#tabs-section">the book\u2019s tabs</a> ' if report.get("book_tabs") else "")
        + '<a href="#environments-section">environments</a> <a href="#code">code side by side</a></nav>'
        f'<div class="cards" id="backends">{"".join(cards)}</div></header>',
        _layers_section(report, names), _parity_section(report, names), _speed_section(report, names),
        _training_section(report, names), tabs_section(report["book_tabs"]) if report.get("book_tabs") else "",
        _environment_section(report, names), _code_section(report, facts)])
    style = CSS + HtmlFormatter(style="default").get_style_defs(".hl")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{style}</style></head>"
            f"<body class=\"wrap\">{body}<script>{SCRIPT}</script></body></html>\n")


def write_report(report: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """Write the page atomically; the summary that ``--json`` prints."""
    path = atomic_write(path, render_report(report))
    return {"path": str(path), "name": report["name"], "parts": list(PARTS), "backends": list(report["backends"]),
            "code_backends": faces.names(), "failed": report["failed"], "ok": report["ok"],
            **({"book_tabs": tabs_summary(report["book_tabs"])} if report.get("book_tabs") else {}),
            **({"plot": report["plot"]} if "plot" in report else {})}


def format_report(summary: dict[str, Any]) -> str:
    table = format_compare(summary["compare"]) + "\n\n" if "compare" in summary else ""
    tabs = "".join(f"\nthe book's {tab} tab ({t['preset']}): " + (
        f"differs in {', '.join(t['fields'])}; outputs part from {t['eval_first_differing_layer'] or '-'} (eval), "
        f"{t['train_first_differing_layer'] or '-'} (train)" if t["fields"] else "the network compared")
        for tab, t in summary.get("book_tabs", {}).items())
    return (f"{table}HTML report: {summary['path']} (parts {', '.join(summary['parts'])}; code of "
            f"{', '.join(summary['code_backends'])}){tabs}")
