"""resnet-multi command line (also ``python -m resnet_multi``).

Every command prints a readable table by default and one JSON object with
``--json``. User errors print one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Sequence

from resnet_multi import faces
from resnet_multi.arch import presets
from resnet_multi.cli.formatting import format_compare, format_layer_table, format_list, format_parity
from resnet_multi.errors import UserError

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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def backend_arg(text: str) -> str:
    try:
        return faces.canonical_name(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- commands ------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> dict[str, Any]:
    from resnet_multi.arch.shapes import param_count

    items = []
    for name in presets.names():
        spec = presets.get(name)
        items.append({"name": name, "block": spec.block, "params": param_count(spec),
                      "in_channels": spec.in_channels, "num_classes": spec.num_classes,
                      "description": spec.description})
    return {"presets": items}


def cmd_summary(args: argparse.Namespace) -> dict[str, Any]:
    from resnet_multi.arch.shapes import layer_table

    spec = presets.resolve(args.model)
    shape = args.input_shape or spec.input_shape
    if args.backend is None:
        return layer_table(spec, shape).to_dict()
    from resnet_multi.run.measure import measured_table

    table, info = measured_table(spec, args.backend, shape, device=args.device)
    return {**table.to_dict(), "backend": info["backend"], "device": info["device"]}


def cmd_parity(args: argparse.Namespace) -> dict[str, Any]:
    from resnet_multi.numerics.parity import parity_report

    return parity_report(args.model, args.backend, args.input_shape, seed=args.seed, mode=args.mode,
                         batch=args.batch_size, device=args.device)


def cmd_compare(args: argparse.Namespace) -> dict[str, Any]:
    from resnet_multi.run.compare import run_compare
    from resnet_multi.run.interpreters import parse_python_overrides

    backends = [faces.canonical_name(b) for b in args.backends.split(",") if b]
    progress = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    report = run_compare(args.model, backends, args.input_shape, batch=args.batch_size, seed=args.seed,
                         device=args.device, precision=args.precision, repeats=args.repeats,
                         train_steps=args.train_steps, python=parse_python_overrides(args.python),
                         progress=progress)
    if args.plot:
        from resnet_multi.cli.plot import plot_compare

        report["plot"] = str(plot_compare(report, args.plot))
    return report


def cmd_convert(args: argparse.Namespace) -> dict[str, Any]:
    from resnet_multi.run.convert import convert
    from resnet_multi.run.interpreters import parse_python_overrides

    return convert(args.src, args.dst, args.arch, args.src_format, args.dst_format,
                   python=parse_python_overrides(args.python))


def format_convert(report: dict[str, Any]) -> str:
    return (f"{report['source']} ({report['source_format']}) -> {report['destination']} "
            f"({report['destination_format']}): {report['arch']}, {report['tensors']} tensors")


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from resnet_multi.training.loop import Progress, TrainConfig, train

    config = TrainConfig(model=args.model, backend=args.backend, dataset=args.dataset, data_dir=args.data_dir,
                         epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                         resize=args.resize, seed=args.seed, device=args.device, precision=args.precision,
                         out=args.out, resume=args.resume)
    return train(config, Progress(enabled=not args.quiet))


def format_train(report: dict[str, Any]) -> str:
    final = report["final"] or {}
    return (f"{report['name']} on {report['backend']} ({report['device']}): {len(report['epochs'])} epochs, "
            f"val accuracy {final.get('val_accuracy', float('nan')):.4f}, val loss "
            f"{final.get('val_loss', float('nan')):.4f}\ncheckpoint {report['checkpoint']}\n"
            f"metrics {report['metrics']}\nplot {report['plot']}")


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    spec = presets.resolve(args.model)
    shape = args.input_shape or spec.input_shape
    from resnet_multi.arch.shapes import layer_table

    layer_table(spec, shape)  # a bad shape is a clear error before any framework work
    face = faces.backend(args.backend)
    model = face.build(spec, device=args.device)
    x = np.random.default_rng(0).standard_normal((args.batch_size, *shape)).astype(np.float32)
    result = face.benchmark(model, x, mode=args.mode, precision=args.precision, repeats=args.repeats,
                            warmup=args.warmup, compile=args.compile)
    return {"name": spec.name, "backend": face.name, "device": face.device_of(model),
            "framework_version": face.version(), "input_shape": list(shape), **result}


def format_bench(report: dict[str, Any]) -> str:
    mem = f", peak memory {report['peak_memory_mb']:.0f} MB" if report.get("peak_memory_mb") else ""
    return (f"{report['name']} on {report['backend']} {report['framework_version']} ({report['device']}), "
            f"{report['mode']}, batch {report['batch']}x{'x'.join(map(str, report['input_shape']))}, "
            f"{report['precision']}\n"
            f"median {report['median_s'] * 1e3:.1f} ms (min {report['min_s'] * 1e3:.1f}, max "
            f"{report['max_s'] * 1e3:.1f}, {report['repeats']} repeats after {report['warmup']} warm-up): "
            f"{report['images_per_s']:.1f} images/s{mem}\npractice: {report.get('practice', '')}")


COMMANDS: dict[str, tuple[Callable, Callable]] = {
    "list": (cmd_list, format_list),
    "summary": (cmd_summary, format_layer_table),
    "parity": (cmd_parity, format_parity),
    "compare": (cmd_compare, format_compare),
    "convert": (cmd_convert, format_convert),
    "train": (cmd_train, format_train),
    "bench": (cmd_bench, format_bench),
}


PRECISIONS = ("fp32", "bf16", "fp16")


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="NAME_OR_SPEC_FILE", help="a preset name or a .json/.toml spec file")


def _add_backend(p: argparse.ArgumentParser, required: bool = True, help: str | None = None) -> None:
    p.add_argument("--backend", type=backend_arg, required=required, metavar="NAME",
                   help=help or f"one of {', '.join(faces.names())}")


def _add_input_shape(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", type=input_shape_arg, metavar="C,H,W",
                   help="input size (default: the preset's own, e.g. 1,96,96 for the book's nets, "
                        "3,32,32 CIFAR, 3,224,224 ImageNet)")


def _add_device(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--device", default=default, metavar="DEVICE",
                   help=f"auto, cpu, gpu or gpu:N (default {default})")


def _add_python(p: argparse.ArgumentParser) -> None:
    p.add_argument("--python", action="append", default=[], metavar="BACKEND=PATH",
                   help="the interpreter of a backend's environment (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="resnet-multi", description=(
        "One ResNet/ResNeXt spec lowered to PyTorch, TensorFlow (Keras 3), Flax (NNX) and MXNet (Gluon)."))
    parser.add_argument("--version", action="version", version=f"resnet-multi {__import__('resnet_multi').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    with_json = argparse.ArgumentParser(add_help=False)
    with_json.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("list", parents=[with_json], help="list the preset zoo", description="List the preset zoo.")

    p = sub.add_parser("summary", parents=[with_json], help="per-layer table: shapes, params, buffers, MACs",
                       description="Per-layer table of a preset or spec file: output shape (C,H,W), "
                                   "trainable params, BN buffers, MACs. Analytic by default; with "
                                   "--backend, measured on that framework's real model.")
    _add_model(p)
    _add_input_shape(p)
    _add_backend(p, required=False, help=f"measure on a real model: {', '.join(faces.names())}")
    _add_device(p)

    p = sub.add_parser("parity", parents=[with_json], help="one backend against the NumPy reference, layer by layer",
                       description="Run a backend and the NumPy float64 reference on the same seeded weights "
                                   "(random BN statistics) and input; report each layer's max abs and relative "
                                   "difference and whether the logits are within 1e-4 x max(1, max|ref|). "
                                   "Exits 1 when they are not.")
    _add_model(p)
    _add_backend(p)
    _add_input_shape(p)
    p.add_argument("--batch-size", type=positive_int, default=2, metavar="N", help="batch size (default 2)")
    p.add_argument("--seed", type=int, default=0, help="weights and input seed (default 0)")
    p.add_argument("--mode", choices=("eval", "train"), default="eval",
                   help="eval: running statistics; train: batch statistics and their update (default eval)")
    _add_device(p)

    p = sub.add_parser("compare", parents=[with_json], help="every backend side by side, each in its own environment",
                       description="Run each backend in its own interpreter (MXNet and JAX cannot share one) on "
                                   "one seeded weights file and input; report layer shapes and params, parity "
                                   "with the NumPy reference, speed, and environments side by side. "
                                   "Interpreters: --python B=PATH, RESNET_MULTI_PYTHON_<B>, .nox/<B>/bin/python, "
                                   "or this one.")
    _add_model(p)
    p.add_argument("--backends", default=",".join(faces.names()), metavar="LIST",
                   help=f"comma-separated (default {','.join(faces.names())})")
    _add_input_shape(p)
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="N", help="default 8")
    p.add_argument("--seed", type=int, default=0, help="weights and input seed (default 0)")
    _add_device(p, default="cpu")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="timing precision")
    p.add_argument("--repeats", type=positive_int, default=5, metavar="N", help="timed repeats (default 5)")
    p.add_argument("--train-steps", type=int, default=0, metavar="N",
                   help="also show the loss of the first N plain-SGD steps per backend")
    _add_python(p)
    p.add_argument("--plot", metavar="FILE.png", help="write a chart: speed per backend, parity per layer")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")

    from resnet_multi.run.convert import FORMATS

    p = sub.add_parser("convert", parents=[with_json], help="convert weights between the canonical file and framework formats",
                       description="Convert weights: canonical .safetensors, torch/torchvision/timm .pth, Keras "
                                   ".weights.h5 (ours or keras.applications), Flax .msgpack, Gluon .params (ours "
                                   "or the model zoo). A file that does not fit the architecture is refused "
                                   "whole. Steps whose framework is not installed here run in that backend's "
                                   "environment.")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    p.add_argument("--arch", metavar="NAME_OR_SPEC_FILE",
                   help="the architecture (optional when SRC is a canonical file that names it)")
    p.add_argument("--from", dest="src_format", choices=list(FORMATS), help="SRC's format (default: from its name)")
    p.add_argument("--to", dest="dst_format", choices=list(FORMATS), help="DST's format (default: from its name)")
    _add_python(p)

    p = sub.add_parser("bench", parents=[with_json], help="time inference or a training step with the framework's best practice",
                       description="Time one backend: warm-up excluded, median and spread of several repeats, "
                                   "images/s. Practice per framework: torch channels_last (+ torch.compile with "
                                   "--compile), TensorFlow XLA, JAX jit with donated buffers, MXNet hybridize "
                                   "with static_alloc/static_shape.")
    _add_model(p)
    _add_backend(p)
    p.add_argument("--mode", choices=("infer", "train"), default="infer")
    p.add_argument("--batch-size", type=positive_int, default=16, metavar="N")
    _add_input_shape(p)
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    _add_device(p)
    p.add_argument("--repeats", type=positive_int, default=5, metavar="N")
    p.add_argument("--warmup", type=positive_int, default=2, metavar="N")
    p.add_argument("--compile", action="store_true", help="torch.compile (torch; others compile anyway)")

    p = sub.add_parser("train", parents=[with_json], help="train in one backend (the book's recipe by default)",
                       description="Train a preset or spec in one backend: the book's defaults (Fashion-MNIST "
                                   "96x96, batch 128, SGD lr 0.01, 10 epochs). Writes checkpoint.safetensors "
                                   "(weights + optimizer state), metrics.json and curves.png into --out after "
                                   "every epoch; --resume continues from there exactly.")
    _add_model(p)
    _add_backend(p)
    p.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "digits"),
                   help="fashion-mnist (downloaded and checked, or --data-dir) or digits (embedded, no network)")
    p.add_argument("--data-dir", metavar="DIR", help="folder with the Fashion-MNIST IDX .gz files")
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--resize", type=positive_int, default=96, help="image side (default 96, the book's)")
    p.add_argument("--seed", type=int, default=0)
    _add_device(p)
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--out", metavar="DIR", help="run folder (default runs/NAME-BACKEND)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
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
    # A check that ran but failed (parity outside tolerance) exits 1.
    return 0 if report.get("ok", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
