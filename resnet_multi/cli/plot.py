"""PNG charts for compare (matplotlib, imported only when a plot is asked for)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resnet_multi.errors import UserError
from resnet_multi.files import atomic_write, check_destination


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError('plots need matplotlib: pip install "resnet-multi[plot]"') from None
    return plt


def check_plot_destination(path: str | Path) -> Path:
    """Before a long run: the plot's folder exists, it is not a folder itself, matplotlib is here and knows the format."""
    path = check_destination(path)
    _pyplot()
    from matplotlib.backend_bases import FigureCanvasBase

    kinds = FigureCanvasBase.get_supported_filetypes()
    if (path.suffix[1:] or "png").lower() not in kinds:
        raise UserError(f"{path}: matplotlib cannot write {path.suffix!r} files; use one of "
                        f"{', '.join('.' + k for k in sorted(kinds))}")
    return path


def plot_compare(report: dict[str, Any], path: str | Path) -> Path:
    """Latency per backend (inference, train step) and parity per layer, side by side."""
    plt = _pyplot()
    ok = {n: r for n, r in report["backends"].items() if "error" not in r}
    trained = {n: r["train"] for n, r in ok.items() if "train" in r and "losses" in r["train"]}
    ratios = [1, 2] + ([1.2] if trained else [])
    fig, axes = plt.subplots(1, len(ratios), figsize=(6.5 * len(ratios), 4.8), gridspec_kw={"width_ratios": ratios})
    speed, parity = axes[0], axes[1]
    if trained:
        losses = axes[2]
        for n, t in trained.items():
            line, = losses.plot(range(1, len(t["losses"]) + 1), t["losses"], marker="o", markersize=3, label=n)
            many = (t.get("parallel") or {}).get("losses")
            if many:  # compare --workers N: the data-parallel run, dashed in the same colour
                losses.plot(range(1, len(many) + 1), many, linestyle="--", color=line.get_color(),
                            label=f"{n} x{report.get('workers', len(many))}")
        losses.set_xlabel("SGD step")
        losses.set_ylabel("loss")
        losses.set_title("Training losses, same weights and batches")
        losses.legend(fontsize=8)
    names = list(ok)
    width = 0.38
    for k, mode in enumerate(("infer", "train")):
        values = [((ok[n].get("timing") or {}).get(mode) or {}).get("median_s") or 0.0 for n in names]
        bars = speed.bar([i + (k - 0.5) * width for i in range(len(names))], [v * 1e3 for v in values], width,
                         label="inference" if mode == "infer" else "train step")
        for bar, v in zip(bars, values):
            if v:
                speed.annotate(f"{report['batch'] / v:.0f}/s", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                               ha="center", va="bottom", fontsize=7)
    speed.set_xticks(range(len(names)), names)
    speed.set_ylabel(f"ms per batch of {report['batch']} (images/s on top)")
    speed.set_title("Speed")
    speed.legend(fontsize=8)
    for n in names:
        layers = ok[n]["parity"]["layers"]
        rel = [max(r["rel_diff"] or 0.0, 1e-18) for r in layers]
        parity.semilogy(range(len(rel)), rel, marker=".", label=n)
    if names:
        labels = [r["name"] for r in ok[names[0]]["parity"]["layers"]]
        step = max(1, len(labels) // 20)
        parity.set_xticks(range(0, len(labels), step), labels[::step], rotation=60, fontsize=7)
    parity.axhline(1e-4, color="grey", linestyle="--", linewidth=1, label="tolerance (logits)")
    parity.set_ylabel("max |diff| / max |reference|")
    parity.set_title("Parity with the NumPy float64 reference, per layer")
    parity.legend(fontsize=8)
    fig.suptitle(f"{report['name']}: input {report['batch']}x{'x'.join(map(str, report['input_shape']))}, "
                 f"{report['device']}, {report['precision']}")
    fig.tight_layout()
    try:
        # The format comes from the destination's suffix (compare.png, compare.pdf, ...).
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format=Path(path).suffix[1:] or "png"))
    finally:
        plt.close(fig)
