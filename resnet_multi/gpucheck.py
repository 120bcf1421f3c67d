"""The prepared GPU check: ``python -m resnet_multi.gpucheck`` (one command, no nox).

On a machine whose Python already has some of the frameworks, it builds
every backend it can import on the GPU, checks the measured layer table
against the analytic one, checks fp32 parity against the NumPy reference
(TF32 off), and times inference and, where the backend has a training step,
a ResNet-50 training step. Backends whose framework is missing are listed
as skipped. ``--device cpu`` rehearses the same script on a CPU machine.
Exit status: 0 when every importable backend passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from . import registry
from .errors import UserError
from .measure import first_difference, measured_table
from .parity import parity_report
from .presets import get
from .shapes import layer_table


def _time(fn, repeats: int) -> dict[str, float]:
    fn()  # warm-up: compilation, autotuning, allocation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": float(np.median(times)), "min_s": float(np.min(times)), "max_s": float(np.max(times))}


def check_backend(backend: str, device: str, batch: int, size: int, repeats: int) -> dict[str, Any]:
    result: dict[str, Any] = {"backend": backend}
    module = registry.load(backend)
    result["framework_version"] = module.framework_version()
    result["device"] = module.resolve_device(device)

    spec = get("resnet50")
    shape = (3, size, size)
    measured, _ = measured_table(spec, backend, shape, device=device, batch=2)
    result["table_matches_spec"] = first_difference(layer_table(spec, shape), measured) or "yes"
    result["layers"] = [r.to_dict() for r in measured.layers]

    parity = parity_report("resnet50", backend, (3, 64, 64), seed=0, mode="eval", batch=2, device=device)
    result["parity"] = {k: parity[k] for k in ("max_abs_diff", "tolerance", "ok", "first_divergent_layer")}

    model = module.build(spec, device=device)
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    infer = _time(lambda: module.forward(model, x), repeats)
    infer["images_per_s"] = batch / infer["median_s"]
    result["inference"] = infer
    try:
        train = registry.load(backend, "train")
    except ImportError:
        train = None
    if train is not None and hasattr(train, "make_train_step"):
        labels = np.arange(batch, dtype=np.int64) % spec.num_classes
        step = train.make_train_step(model, lr=0.01)
        timing = _time(lambda: step(x, labels), repeats)
        timing["images_per_s"] = batch / timing["median_s"]
        result["train_step"] = timing
    result["ok"] = result["table_matches_spec"] == "yes" and parity["ok"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet_multi.gpucheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="gpu", choices=("gpu", "cpu", "auto"))
    parser.add_argument("--backends", default=",".join(registry.names()), help="comma-separated (default: all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=224, help="image size for timing (default 224)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = []
    for name in args.backends.split(","):
        start = time.perf_counter()
        try:
            res = check_backend(registry.canonical_name(name), args.device, args.batch_size, args.size, args.repeats)
        except UserError as exc:  # framework missing, no GPU
            res = {"backend": name, "skipped": str(exc)}
        except Exception as exc:  # a real failure: report it, keep checking the others
            res = {"backend": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        res["seconds"] = round(time.perf_counter() - start, 1)
        results.append(res)
        if not args.json:
            _print(res)
    checked = [r for r in results if "skipped" not in r]
    ok = bool(checked) and all(r.get("ok") for r in checked)
    if args.json:
        print(json.dumps({"device": args.device, "results": results, "ok": ok}, indent=2))
    else:
        print(f"\n{'PASS' if ok else 'FAIL'}: {len(checked)} backend(s) checked, "
              f"{len(results) - len(checked)} skipped")
    return 0 if ok else 1


def _print(res: dict[str, Any]) -> None:
    name = res["backend"]
    if "skipped" in res:
        print(f"== {name}: skipped: {res['skipped']}")
        return
    if "error" in res:
        print(f"== {name}: ERROR {res['error']}")
        return
    print(f"== {name} {res['framework_version']} on {res['device']} ({res['seconds']} s)")
    for row in res["layers"]:
        print(f"   {row['name']:<10} {'x'.join(map(str, row['output_shape'])):>14} {row['params']:>12,} "
              f"{row['buffers']:>8,}")
    print(f"   layer table equals the spec: {res['table_matches_spec']}")
    p = res["parity"]
    print(f"   fp32 parity vs NumPy (resnet50, 2x3x64x64): max |diff| {p['max_abs_diff']:.3g} "
          f"(tolerance {p['tolerance']:.3g}) {'ok' if p['ok'] else 'FAIL at ' + str(p['first_divergent_layer'])}")
    inf = res["inference"]
    print(f"   inference: {inf['median_s'] * 1e3:.1f} ms/batch median, {inf['images_per_s']:.0f} images/s")
    if "train_step" in res:
        tr = res["train_step"]
        print(f"   train step: {tr['median_s'] * 1e3:.1f} ms/batch median, {tr['images_per_s']:.0f} images/s")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
