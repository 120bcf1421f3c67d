"""Our lowering against the framework's own ResNet-50, same machine, same run, same batch and precision.

Run it in a backend's environment (one per framework), on a quiet machine:

    .nox/torch/bin/python benchmarks/vs_native.py --backend torch
    .nox/tensorflow/bin/python benchmarks/vs_native.py --backend tensorflow --json

What "theirs" is, per backend (``resnet_multi.backend(B).native`` says it in words):
torch: torchvision.models.resnet50 vs our resnet50; tensorflow: keras.applications.ResNet50
vs our resnet50_v1; mxnet: gluon.model_zoo.vision.resnet50_v1 vs our gluon_resnet50_v1;
flax: the architecture of Flax's ImageNet example ResNet-50 (Linen, written out in
resnet_multi/backends/flax/bench.py) vs our resnet50 (NNX).

Ours is what a user gets: for inference the fast path (``for_inference``: BNs folded, the
framework's fastest compilation), for training the step ``resnet-multi train`` runs. Theirs is
timed by the same code path, the way its users run it. Ours and theirs alternate, so that drift
in machine load hits both; the best round of each counts. Prints images/s, the ratio ours/theirs
(> 1: we are faster) and how much of the machine's conv throughput each reaches: the model's
FLOPs per second against one large 3x3 conv's, measured here in the same framework.
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
from resnet_multi.arch.shapes import layer_table  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", required=True, choices=resnet_multi.backend_names())
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--device", default="cpu", help="auto, cpu, gpu or gpu:N (default cpu)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="alternate ours/theirs this many times")
    parser.add_argument("--modes", default="infer,train", help="comma-separated: infer, train")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import numpy as np

    face = resnet_multi.backend(args.backend)
    spec = get(face.native_preset)
    shape = (3, args.size, args.size)
    flops_per_image = 2 * layer_table(spec, shape).total_macs
    x = np.random.default_rng(0).standard_normal((args.batch_size, *shape)).astype(np.float32)
    conv = max((face.conv_throughput(device=args.device) for _ in range(args.rounds)), key=lambda r: r["gflops"])
    results = {}
    for mode in args.modes.split(","):
        ours_runs, theirs_runs = [], []
        ours = face.build_for_inference(spec, device=args.device) if mode == "infer" else face.build(spec, device=args.device)
        for _ in range(args.rounds):
            ours_runs.append(face.benchmark(ours, x, mode=mode, precision=args.precision, repeats=args.repeats))
            theirs_runs.append(face.benchmark_native(x, mode=mode, precision=args.precision, repeats=args.repeats,
                                                     device=args.device, num_classes=spec.num_classes))
        del ours
        best = lambda runs: max(runs, key=lambda r: r["images_per_s"])  # noqa: E731 (least disturbed)
        o, t = best(ours_runs), best(theirs_runs)
        # A training step is about three forward passes of work (forward, two backward products).
        work = flops_per_image * (3 if mode == "train" else 1) / 1e9
        results[mode] = {"ours_images_per_s": o["images_per_s"], "theirs_images_per_s": t["images_per_s"],
                         "ratio": o["images_per_s"] / t["images_per_s"],
                         "ours_conv_fraction": o["images_per_s"] * work / conv["gflops"],
                         "theirs_conv_fraction": t["images_per_s"] * work / conv["gflops"],
                         "ours": o, "theirs": t}
    report = {"backend": face.name, "ours": spec.name, "theirs": face.native,
              "framework_version": face.version(), "batch": args.batch_size,
              "input": list(shape), "precision": args.precision, "device": args.device,
              "gflops_per_image": flops_per_image / 1e9, "conv_throughput": conv,
              "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}",
              "results": results}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{face.name} {report['framework_version']}: ours = {spec.name}, theirs = {face.native}; "
              f"batch {args.batch_size}x3x{args.size}x{args.size}, {args.precision}, {args.device}; "
              f"one 3x3 conv {conv['gflops']:.0f} GFLOP/s")
        for mode, r in results.items():
            print(f"  {mode:5s}  ours {r['ours_images_per_s']:8.1f} img/s ({r['ours_conv_fraction']:4.0%} of conv)   "
                  f"theirs {r['theirs_images_per_s']:8.1f} img/s ({r['theirs_conv_fraction']:4.0%})   "
                  f"ours/theirs {r['ratio']:.3f}")
            print(f"         ours: {r['ours'].get('practice', '')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
