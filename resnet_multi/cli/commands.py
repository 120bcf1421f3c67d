"""resnet-multi command line (also ``python -m resnet_multi``).

Every command prints a readable table by default and one JSON object with
``--json``. User errors print one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from resnet_multi import faces
from resnet_multi.arch import presets
from resnet_multi.arch.memory import check_model_fits
from resnet_multi.cli import formatting as fmt
from resnet_multi.cli.parser import EXIT_USER_ERROR, build_parser
from resnet_multi.cli.report import format_report
from resnet_multi.errors import UserError

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
    from resnet_multi.arch.shapes import feature_info, layer_table
    from resnet_multi.arch.spec import with_head

    whole = presets.resolve(args.model)
    try:
        spec = with_head(whole, args.num_classes, args.features)
    except UserError as exc:  # name the flag the user gave
        raise UserError(f"--features: {str(exc).split(': ', 1)[-1]}") from None
    shape = args.input_shape or spec.input_shape
    _register_weights_file(args)
    extra = {"feature_info": feature_info(spec)} if spec.features else {}
    if args.backend is None:  # arithmetic only: any size is fine
        if args.weights is not None:
            raise UserError("--weights: the analytic table has no weights; add --backend to measure a model with them")
        return {**layer_table(spec, shape).to_dict(), **extra}
    from resnet_multi.run.measure import measured_table

    state = _pretrained(whole, args)
    if state is not None and spec != whole:  # the published network's weights, for its backbone or a new head
        from resnet_multi.weights.canonical import with_new_head

        state = with_new_head(state, spec, seed=0)
    table, info = measured_table(spec, args.backend, shape, device=args.device, allow_large=args.allow_large,
                                 state=state)
    return {**table.to_dict(), **extra, "backend": info["backend"], "device": info["device"],
            **({"weights": args.weights} if args.weights is not None else {})}


def cmd_parity(args: argparse.Namespace) -> dict[str, Any]:
    from resnet_multi.numerics.parity import parity_report

    _register_weights_file(args)
    state = None
    if args.weights is not None:  # a bad input or what cannot fit: its one line before any download
        from resnet_multi.arch.memory import check_model_fits

        spec = presets.resolve(args.model)
        check_model_fits(spec, args.input_shape or spec.input_shape, args.batch_size, allow_large=args.allow_large)
        state = _pretrained(spec, args)
    report = parity_report(args.model, args.backend, args.input_shape, seed=args.seed, mode=args.mode,
                           batch=args.batch_size, device=args.device, allow_large=args.allow_large, state=state)
    return {**report, "weights": args.weights} if args.weights is not None else report


def cmd_diff(args: argparse.Namespace) -> dict[str, Any]:
    from resnet_multi.numerics.diff import diff_report

    return diff_report(args.a, args.b, args.input_shape, seed=args.seed, batch=args.batch_size,
                       allow_large=args.allow_large)


def cmd_compare(args: argparse.Namespace) -> dict[str, Any]:
    from resnet_multi.run.compare import run_compare
    from resnet_multi.run.interpreters import parse_python_overrides

    python = parse_python_overrides(args.python)
    if args.workers is not None:  # before anything runs, as train checks its workers
        from resnet_multi.training.parallel import check_workers

        if args.workers < 2:
            raise UserError(f"--workers {args.workers}: pass 2 or more (the single worker's steps are always shown)")
        if not args.train_steps:
            raise UserError("--workers needs --train-steps K: the workers run those training steps")
        check_workers(args.workers, args.batch_size, True)
    _register_weights_file(args)
    if args.plot:  # before the run, not after it
        from resnet_multi.cli.plot import check_plot_destination

        check_plot_destination(args.plot)
    progress = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    report = run_compare(args.model, args.backends, args.input_shape, batch=args.batch_size, seed=args.seed,
                         device=args.device, precision=args.precision, repeats=args.repeats,
                         train_steps=args.train_steps, python=python, progress=progress,
                         allow_large=args.allow_large, weights=args.weights, workers=args.workers or 1)
    if args.plot:
        from resnet_multi.cli.plot import plot_compare

        report["plot"] = str(plot_compare(report, args.plot))
    # The exit status is 1 then (report["ok"]); each failure is one line, --quiet or not.
    for backend, why in report["failed"].items():
        print(f"resnet-multi compare: {backend} failed: {why}", file=sys.stderr)
    return report


def cmd_report(args: argparse.Namespace) -> dict[str, Any]:
    from resnet_multi.cli.report import check_report_destination, write_report

    check_report_destination(args.html)  # before the run: its folder, and Pygments
    report = cmd_compare(args)
    from resnet_multi.cli.tabs import book_tabs_comparison

    # The book's tabs (a d2l_resnet18 preset): where they part, through the NumPy reference.
    tabs = book_tabs_comparison(report["name"], report["input_shape"], seed=args.seed)
    if tabs is not None:
        report["book_tabs"] = tabs
    summary = write_report(report, args.html)
    return summary if args.json else {**summary, "compare": report}  # the readable form prints compare's table


def cmd_convert(args: argparse.Namespace) -> dict[str, Any]:
    from resnet_multi.run.convert import convert
    from resnet_multi.run.interpreters import parse_python_overrides

    return convert(args.src, args.dst, args.arch, args.src_format, args.dst_format,
                   python=parse_python_overrides(args.python))


def _check_run_folder(out: str) -> None:
    """--out must be a folder or a path one can create as one: no file there or above it."""
    path = Path(out)
    for where in (path, *path.parents):
        if where.exists():
            if not where.is_dir():
                raise UserError(f"--out {out}: {where} is a file, not a folder")
            return


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from resnet_multi.training.loop import Progress, TrainConfig, train

    if args.out:
        _check_run_folder(args.out)
    _register_weights_file(args)
    config = TrainConfig(model=args.model, backend=args.backend, dataset=args.dataset, data_dir=args.data_dir,
                         epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                         resize=args.resize, seed=args.seed, device=args.device, precision=args.precision,
                         out=args.out, resume=args.resume, allow_large=args.allow_large, weights=args.weights,
                         num_classes=args.num_classes, workers=args.workers, sync_bn=args.sync_bn,
                         check_replicas=args.check_replicas)
    pretrained = None if args.resume else _pretrained(presets.resolve(args.model), args)  # resume: the checkpoint's
    return train(config, Progress(enabled=not args.quiet), pretrained=pretrained)


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from resnet_multi.arch.shapes import layer_table

    spec = presets.resolve(args.model)
    shape = args.input_shape or spec.input_shape
    layer_table(spec, shape)  # a bad shape is a clear error before any framework work
    # Refuse what cannot fit in memory before anything is built (--allow-large skips it).
    check_model_fits(spec, shape, args.batch_size, train=args.mode == "train", allow_large=args.allow_large)
    _register_weights_file(args)
    face = faces.backend(args.backend)
    fast = args.mode == "infer" and not args.plain
    build = face.build_for_inference if fast else face.build
    model = build(spec, device=args.device, state=_pretrained(spec, args))
    x = np.random.default_rng(0).standard_normal((args.batch_size, *shape)).astype(np.float32)
    result = face.benchmark(model, x, mode=args.mode, precision=args.precision, repeats=args.repeats,
                            warmup=args.warmup, compile=args.compile)
    return {"name": spec.name, "backend": face.name, "device": face.device_of(model),
            "framework_version": face.version(), "input_shape": list(shape), "fast_path": fast,
            **({"weights": args.weights} if args.weights is not None else {}), **result}


def _register_weights_file(args: argparse.Namespace) -> None:
    """--weights-file FILE (repeatable): the user entries it holds, registered before --weights is looked up."""
    from resnet_multi.weights import registry

    for path in args.weights_file or []:
        registry.register(path)


def _pretrained(spec, args: argparse.Namespace):
    """The canonical state of --weights for the spec (downloaded, verified, converted once), or None."""
    if args.weights is None:
        return None
    from resnet_multi.run import fetch

    faces.backend(args.backend).module("model")  # a missing framework is its one line before any download
    return fetch.load(spec, args.weights, quiet=getattr(args, "quiet", False))


def cmd_predict(args: argparse.Namespace) -> dict[str, Any]:
    from resnet_multi.run import predict

    _register_weights_file(args)
    if args.backends is not None:
        from resnet_multi.run.interpreters import parse_python_overrides

        progress = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
        report = predict.predict_all(args.model, args.images, args.weights, args.backends, top=args.top,
                                     device=args.device, python=parse_python_overrides(args.python),
                                     progress=progress, quiet=args.quiet)
        for backend, why in report["failed"].items():
            print(f"resnet-multi predict: {backend} failed: {why}", file=sys.stderr)
        return report
    from resnet_multi.run.interpreters import parse_python_overrides

    return predict.predict(args.model, args.images, args.weights, args.backend, top=args.top, device=args.device,
                           python=parse_python_overrides(args.python), quiet=args.quiet)


def cmd_weights_list(args: argparse.Namespace) -> dict[str, Any]:
    from resnet_multi.weights import registry

    found = [e.to_dict() for e in registry.entries(args.arch)]
    notes = [f"no published weights for {args.arch}"] if args.arch and not found else []
    return {"weights": found, **({"notes": notes} if notes else {})}


def cmd_weights_show(args: argparse.Namespace) -> dict[str, Any]:
    from resnet_multi.weights import registry

    entry = registry.get(args.arch, args.name)
    return {**entry.to_dict(), "host": entry.host,
            "preprocessing_text": registry.describe_preprocessing(entry.preprocessing),
            "category_count": len(registry.categories(entry.data["categories"]))}


COMMANDS: dict[str, tuple[Callable, Callable]] = {
    "list": (cmd_list, fmt.format_list),
    "summary": (cmd_summary, fmt.format_layer_table),
    "parity": (cmd_parity, fmt.format_parity),
    "diff": (cmd_diff, fmt.format_diff),
    "compare": (cmd_compare, fmt.format_compare),
    "report": (cmd_report, format_report),
    "convert": (cmd_convert, fmt.format_convert),
    "train": (cmd_train, fmt.format_train),
    "bench": (cmd_bench, fmt.format_bench),
    "predict": (cmd_predict, fmt.format_predict),
    "weights list": (cmd_weights_list, fmt.format_weights_list),
    "weights show": (cmd_weights_show, fmt.format_weights_show),
}


def _one_line(text: str) -> str:
    return (str(text).strip().splitlines() or ["(no message)"])[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit status: 0 done, 1 a check failed, 2 a user error, 130 interrupted.

    The one place that turns user errors into one line on stderr: every
    UserError, and an OSError about a file (the user named it, or its folder:
    permission denied, no space left, read-only file system). Anything else is
    a bug and keeps its traceback.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (already one line)
        return exc.code if isinstance(exc.code, int) else EXIT_USER_ERROR
    command = args.command + (f" {args.weights_command}" if args.command == "weights" else "")
    run, render = COMMANDS[command]
    try:
        report = run(args)
    except UserError as exc:
        return _fail(command, _one_line(str(exc)))
    except OSError as exc:
        if exc.filename is None:  # not about a file: a bug, or the system's own trouble
            raise
        names = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
        return _fail(command, f"{names}: {exc.strerror or type(exc).__name__}")
    except KeyboardInterrupt:
        print(f"resnet-multi {command}: interrupted", file=sys.stderr)
        return 130
    text = fmt.strict_json(report) if args.json else fmt.with_notes(render(report), report)
    try:
        print(_printable(text, sys.stdout))
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stderr.close()
    # A check that ran but failed (parity outside tolerance, a backend of compare) exits 1.
    return 0 if report.get("ok", True) else 1


def _fail(command: str, message: str) -> int:
    print(_printable(f"resnet-multi {command}: error: {message}", sys.stderr), file=sys.stderr)
    return EXIT_USER_ERROR


def _printable(text: str, stream) -> str:
    # A name from the command line that is not valid in the terminal's encoding (surrogate-escaped bytes): \x.. form.
    encoding = getattr(stream, "encoding", None) or "utf-8"
    return text.encode(encoding, "backslashreplace").decode(encoding)


if __name__ == "__main__":
    raise SystemExit(main())
