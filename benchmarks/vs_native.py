"""Our lowering against the framework's own ResNet-50, same machine, same run, same batch and precision.

Run it in a backend's environment (one per framework):

    .nox/torch/bin/python benchmarks/vs_native.py --backend torch
    .nox/tensorflow/bin/python benchmarks/vs_native.py --backend tensorflow --json

What "theirs" is, per backend (``resnet_multi.backend(B).native`` says it in words):
torch: torchvision.models.resnet50 vs our resnet50; tensorflow: keras.applications.ResNet50
vs our resnet50_v1; mxnet: gluon.model_zoo.vision.resnet50_v1 vs our gluon_resnet50_v1;
flax: the architecture of Flax's ImageNet example ResNet-50 (Linen, written out in
resnet_multi/backends/flax/bench.py) vs our resnet50 (NNX).

Prints images/s for both and the ratio ours/theirs (> 1: we are faster) for
inference and for one SGD training step. Runs ours and theirs alternately, so
that drift in machine load hits both.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import resnet_multi  # noqa: E402
from resnet_multi.arch.presets import get  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", required=True, choices=resnet_multi.backend_names())
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--device", default="cpu", help="auto, cpu, gpu or gpu:N (default cpu)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="alternate ours/theirs this many times")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import numpy as np

    face = resnet_multi.backend(args.backend)
    spec = get(face.native_preset)
    x = np.random.default_rng(0).standard_normal((args.batch_size, 3, args.size, args.size)).astype(np.float32)
    results = {}
    for mode in ("infer", "train"):
        ours_runs, theirs_runs = [], []
        for _ in range(args.rounds):
            ours = face.build(spec, device=args.device)
            ours_runs.append(face.benchmark(ours, x, mode=mode, precision=args.precision, repeats=args.repeats))
            del ours
            theirs_runs.append(face.benchmark_native(x, mode=mode, precision=args.precision, repeats=args.repeats,
                                                     device=args.device, num_classes=spec.num_classes))
        best = lambda runs: max(runs, key=lambda r: r["images_per_s"])  # noqa: E731 (least disturbed)
        o, t = best(ours_runs), best(theirs_runs)
        results[mode] = {"ours_images_per_s": o["images_per_s"], "theirs_images_per_s": t["images_per_s"],
                         "ratio": o["images_per_s"] / t["images_per_s"], "ours": o, "theirs": t}
    report = {"backend": face.name, "ours": spec.name, "theirs": face.native,
              "framework_version": face.version(), "batch": args.batch_size,
              "input": [3, args.size, args.size], "precision": args.precision, "device": args.device,
              "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}",
              "results": results}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{face.name} {report['framework_version']}: ours = {spec.name}, theirs = {face.native}; "
              f"batch {args.batch_size}x3x{args.size}x{args.size}, {args.precision}, {args.device}")
        for mode, r in results.items():
            print(f"  {mode:5s}  ours {r['ours_images_per_s']:8.1f} img/s   theirs {r['theirs_images_per_s']:8.1f} "
                  f"img/s   ours/theirs {r['ratio']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
