"""resnet-multi command line (also ``python -m resnet_multi``).

Every command prints a readable table by default and one JSON object with
``--json``. User errors print one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Sequence

from . import presets, registry
from .errors import UserError

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def input_shape_arg(text: str) -> tuple[int, int, int]:
    parts = text.replace("x", ",").split(",")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W with three positive integers, got {text!r}")
    return dims  # type: ignore[return-value]


def backend_arg(text: str) -> str:
    try:
        return registry.canonical_name(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- readable output ---------------------------------------------------------------


def _fmt_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool]) -> str:
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
    table = _fmt_table(("layer", "output (C,H,W)", "params", "buffers", "MACs"), rows,
                       (False, False, True, True, True))
    return f"{title}\n{table}"


# -- commands ------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> dict[str, Any]:
    from .shapes import param_count

    items = []
    for name in presets.names():
        spec = presets.get(name)
        items.append({"name": name, "block": spec.block, "params": param_count(spec),
                      "in_channels": spec.in_channels, "num_classes": spec.num_classes,
                      "description": spec.description})
    return {"presets": items}


def format_list(report: dict[str, Any]) -> str:
    rows = [(p["name"], p["block"], f"{p['params']:,}", p["description"]) for p in report["presets"]]
    return _fmt_table(("preset", "block", "params", "what"), rows, (False, False, True, False))


def cmd_summary(args: argparse.Namespace) -> dict[str, Any]:
    from .measure import default_input_shape
    from .shapes import layer_table

    spec = presets.resolve(args.model)
    shape = args.input_shape or default_input_shape(spec)
    if args.backend is None:
        return layer_table(spec, shape).to_dict()
    from .measure import measured_table

    table, info = measured_table(spec, args.backend, shape, device=args.device)
    return {**table.to_dict(), "backend": info["backend"], "device": info["device"]}


COMMANDS: dict[str, tuple[Callable, Callable]] = {
    "list": (cmd_list, format_list),
    "summary": (cmd_summary, format_layer_table),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="resnet-multi", description=(
        "One ResNet/ResNeXt spec lowered to PyTorch, TensorFlow (Keras 3), Flax (NNX) and MXNet (Gluon)."))
    parser.add_argument("--version", action="version", version=f"resnet-multi {__import__('resnet_multi').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("list", help="list the preset zoo", description="List the preset zoo.")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("summary", help="per-layer table: shapes, params, buffers, MACs",
                       description="Per-layer table of a preset or spec file: output shape (C,H,W), "
                                   "trainable params, BN buffers, MACs. Analytic by default; with "
                                   "--backend, measured on that framework's real model.")
    p.add_argument("model", metavar="NAME_OR_SPEC_FILE", help="a preset name or a .json/.toml spec file")
    p.add_argument("--input-shape", type=input_shape_arg, metavar="C,H,W",
                   help="input size (default: 96x96 for the book's nets, 32x32 CIFAR, 224x224 ImageNet)")
    p.add_argument("--backend", type=backend_arg, metavar="NAME",
                   help=f"measure on a real model: {', '.join(registry.names())}")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"), help="with --backend (default auto)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run, fmt = COMMANDS[args.command]
    try:
        report = run(args)
    except UserError as exc:
        print(f"resnet-multi {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"resnet-multi {args.command}: interrupted", file=sys.stderr)
        return 130
    try:
        print(json.dumps(report, indent=2) if args.json else fmt(report))
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
