"""The prepared GPU check: ``python -m resnet_multi.gpucheck`` (one command, no nox).

On a machine whose Python already has some of the frameworks, it builds
every backend it can import on the GPU, checks the measured layer table
against the analytic one, checks fp32 parity against the NumPy reference
(TF32 off; also a ResNet-50 backbone's four stage maps, the book's TensorFlow tab with its
'same' padding at an odd size, and the inference fast path, for_inference, with its BNs folded),
and times inference (on the fast path) and, where the backend has a training step,
a ResNet-50 training step, in fp32 and bf16 with the backend's bench. Backends whose framework is missing are listed
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

from resnet_multi import faces
from resnet_multi.arch.presets import get
from resnet_multi.arch.shapes import layer_table
from resnet_multi.arch.spec import with_head
from resnet_multi.errors import UserError
from resnet_multi.numerics import reference
from resnet_multi.numerics.parity import RTOL, parity_report
from resnet_multi.run.measure import first_difference, measured_table
from resnet_multi.weights.canonical import init_weights


def check_backend(backend: str, device: str, batch: int, size: int, repeats: int,
                  precisions: tuple[str, ...] = ("fp32",)) -> dict[str, Any]:
    result: dict[str, Any] = {"backend": backend}
    face = faces.backend(backend)
    result["framework_version"] = face.version()
    result["device"] = face.resolve_device(device)
    result["devices"] = face.devices()

    spec = get("resnet50")
    shape = (3, size, size)
    measured, _ = measured_table(spec, backend, shape, device=device, batch=2)
    result["table_matches_spec"] = first_difference(layer_table(spec, shape), measured) or "yes"
    result["layers"] = [r.to_dict() for r in measured.layers]

    keys = ("max_abs_diff", "tolerance", "ok", "first_divergent_layer")
    parity = parity_report("resnet50", backend, (3, 64, 64), seed=0, mode="eval", batch=2, device=device)
    result["parity"] = {k: parity[k] for k in keys}
    # A backbone (every stage's map) and TensorFlow's 'same' padding at an odd size, on the device too.
    backbone = parity_report(with_head(spec, features=(1, 2, 3, 4)), backend, (3, 64, 64), seed=0, mode="eval",
                             batch=2, device=device)
    result["backbone_parity"] = {k: backbone[k] for k in keys}
    same = parity_report("d2l_resnet18_tf", backend, (1, 33, 33), seed=0, mode="eval", batch=2, device=device)
    result["same_padding_parity"] = {k: same[k] for k in keys}

    result["fast_path_parity"] = fast_path_parity(face, spec, device)

    model = face.build(spec, device=device)
    fast = face.for_inference(model)
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    result["timings"] = {}
    for precision in precisions:
        for mode in ("infer", "train"):
            key = f"{mode}_{precision}"
            try:  # the backend's best practice: for inference its fast path (folded BN, compiled)
                timing = face.benchmark(fast if mode == "infer" else model, x, mode=mode, precision=precision,
                                        repeats=repeats)
            except Exception as exc:  # one precision unsupported: say so, keep going
                timing = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            result["timings"][key] = timing
    result["ok"] = (result["table_matches_spec"] == "yes" and parity["ok"] and backbone["ok"] and same["ok"]
                    and result["fast_path_parity"]["ok"])
    return result


def fast_path_parity(face: faces.BackendFace, spec, device: str, size: int = 64) -> dict[str, Any]:
    """for_inference's logits against the reference's for the plain net (BN statistics far from 0 and 1)."""
    state = init_weights(spec, seed=0, perturb_bn=True)
    x = np.random.default_rng(1).standard_normal((2, spec.in_channels, size, size)).astype(np.float32)
    want = reference.forward(spec, state, x)
    got = face.forward(face.build_for_inference(spec, device=device, state=state), x)
    diff = float(np.abs(np.asarray(got, np.float64) - want).max())
    tolerance = RTOL * max(1.0, float(np.abs(want).max()))
    return {"max_abs_diff": diff, "tolerance": tolerance, "ok": diff <= tolerance}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet_multi.gpucheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="gpu", choices=("gpu", "cpu", "auto"))
    parser.add_argument("--backends", default=",".join(faces.names()), help="comma-separated (default: all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=224, help="image size for timing (default 224)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--precisions", default="fp32,bf16", help="timed precisions (default fp32,bf16)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = []
    for name in args.backends.split(","):
        start = time.perf_counter()
        try:
            res = check_backend(faces.canonical_name(name), args.device, args.batch_size, args.size, args.repeats,
                                tuple(args.precisions.split(",")))
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
    print(f"== {name} {res['framework_version']} on {res['device']} ({res['seconds']} s; sees "
          f"{', '.join(res['devices'])})")
    for row in res["layers"]:
        print(f"   {row['name']:<10} {'x'.join(map(str, row['output_shape'])):>14} {row['params']:>12,} "
              f"{row['buffers']:>8,}")
    print(f"   layer table equals the spec: {res['table_matches_spec']}")
    p = res["parity"]
    print(f"   fp32 parity vs NumPy (resnet50, 2x3x64x64): max |diff| {p['max_abs_diff']:.3g} "
          f"(tolerance {p['tolerance']:.3g}) {'ok' if p['ok'] else 'FAIL at ' + str(p['first_divergent_layer'])}")
    for key, what in (("backbone_parity", "resnet50 backbone, 4 stage maps, 2x3x64x64"),
                      ("same_padding_parity", "d2l_resnet18_tf, 'same' padding, 2x1x33x33")):
        q = res[key]
        print(f"   fp32 parity vs NumPy ({what}): max |diff| {q['max_abs_diff']:.3g} (tolerance "
              f"{q['tolerance']:.3g}) {'ok' if q['ok'] else 'FAIL at ' + str(q['first_divergent_layer'])}")
    q = res["fast_path_parity"]
    print(f"   fp32 parity vs NumPy (for_inference, folded BN, resnet50, 2x3x64x64): max |diff| "
          f"{q['max_abs_diff']:.3g} (tolerance {q['tolerance']:.3g}) {'ok' if q['ok'] else 'FAIL'}")
    for key, timing in res["timings"].items():
        mode, precision = key.split("_")
        if "error" in timing:
            print(f"   {mode:5s} {precision}: {timing['error']}")
            continue
        mem = f", peak {timing['peak_memory_mb']:.0f} MB" if timing.get("peak_memory_mb") else ""
        print(f"   {mode:5s} {precision}: {timing['median_s'] * 1e3:8.1f} ms/batch median, "
              f"{timing['images_per_s']:7.0f} images/s{mem}  [{timing.get('practice', 'forward')}]")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
