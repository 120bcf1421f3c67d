"""One backend's part of ``compare``, run inside that backend's environment.

``python -m resnet_multi.worker --backend B --request request.json`` reads
the shared spec, weights file and input, and prints one JSON line: measured
layer table, parity against the NumPy reference, timings, and the
environment. Internal: users run ``resnet-multi compare``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from typing import Any

import numpy as np

from . import reference, registry
from .measure import tabulate
from .parity import compare_activations, logits_verdict
from .shapes import layer_table
from .spec import spec_from_dict
from .weights import load_state


def run(backend: str, request: dict[str, Any]) -> dict[str, Any]:
    spec = spec_from_dict(request["spec"])
    module = registry.load(backend)
    native_weights = registry.load(backend, "weights")
    state = load_state(request["weights"], spec)
    x = np.load(request["input"])
    model = module.build(spec, device=request["device"], seed=request["seed"])
    native_weights.from_canonical(model, state)

    acts = module.activations(model, x, train=False)
    expected = layer_table(spec, x.shape[1:])
    table = tabulate(expected, acts, module.row_counts(model))
    ref = reference.activations(spec, state, x)
    rows = compare_activations(acts, ref)
    worst = max((r for r in rows if r["rel_diff"] is not None), key=lambda r: r["rel_diff"])
    result: dict[str, Any] = {
        "backend": backend,
        "environment": {"framework_version": module.framework_version(), "device": module.device_of(model),
                        "python": platform.python_version(), "numpy": np.__version__,
                        "platform": platform.platform()},
        "layers": [r.to_dict() for r in table.layers],
        "total_params": table.total_params, "total_buffers": table.total_buffers,
        "parity": {**logits_verdict(rows),
                   "worst_layer": worst["name"], "worst_rel_diff": worst["rel_diff"], "layers": rows},
    }
    result["timing"] = _timings(backend, model, x, request)
    if request.get("train_steps"):
        result["train"] = _train(backend, spec, state, x, request)
    return result


def _timings(backend: str, model, x: np.ndarray, request: dict[str, Any]) -> dict[str, Any]:
    try:
        bench = registry.load(backend, "bench")
    except ImportError as exc:
        return {"error": f"no bench module: {exc}"}
    out = {}
    for mode in ("infer", "train"):
        try:
            out[mode] = bench.benchmark(model, x, mode=mode, precision=request["precision"],
                                        repeats=request["repeats"])
        except Exception as exc:  # report in the column, keep the rest of the report
            out[mode] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def _train(backend: str, spec, state, x: np.ndarray, request: dict[str, Any]) -> dict[str, Any]:
    from .training_parity import backend_trajectory

    return backend_trajectory(backend, spec, state, request["train_steps"], request["seed"], x.shape[1:],
                              batch=x.shape[0], device=request["device"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet_multi.worker")
    parser.add_argument("--backend", required=True)
    parser.add_argument("--request", required=True)
    args = parser.parse_args(argv)
    with open(args.request) as f:
        request = json.load(f)
    result = run(registry.canonical_name(args.backend), request)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
