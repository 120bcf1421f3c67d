"""One backend's part of ``compare``, run inside that backend's environment.

``python -m resnet_multi.run.worker --backend B --request request.json`` reads
the shared spec, weights file and input, and prints one JSON line: measured
layer table, parity against the NumPy reference, timings, and the
environment (a ``"kind": "predict"`` request: the logits only; ``"kind": "train_parallel"``: the
data-parallel trajectory only, which ``workers`` > 1 runs in a fresh process of this interpreter). Internal:
users run ``resnet-multi compare``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from resnet_multi import faces
from resnet_multi.arch.shapes import layer_table
from resnet_multi.arch.spec import spec_from_dict
from resnet_multi.numerics import reference
from resnet_multi.numerics.parity import compare_activations, logits_verdict
from resnet_multi.run.measure import tabulate
from resnet_multi.weights.canonical import load_state


def run(backend: str, request: dict[str, Any]) -> dict[str, Any]:
    if request.get("kind") == "predict":
        return predict(backend, request)
    if request.get("kind") == "train_parallel":
        return train_parallel(backend, request)
    spec = spec_from_dict(request["spec"])
    face = faces.backend(backend)
    state = load_state(request["weights"], spec)
    x = np.load(request["input"])
    model = face.build(spec, device=request["device"], state=state)

    acts = face.activations(model, x, train=False)
    expected = layer_table(spec, x.shape[1:])
    table = tabulate(expected, acts, face.row_counts(model))
    ref = reference.activations(spec, state, x)
    rows = compare_activations(acts, ref)
    worst = max((r for r in rows if r["rel_diff"] is not None), key=lambda r: r["rel_diff"])
    result: dict[str, Any] = {
        "backend": backend,
        "environment": {"framework_version": face.version(), "device": face.device_of(model),
                        "python": platform.python_version(), "numpy": np.__version__,
                        "platform": platform.platform()},
        "layers": [r.to_dict() for r in table.layers],
        "total_params": table.total_params, "total_buffers": table.total_buffers,
        "parity": {**logits_verdict(rows),
                   "worst_layer": worst["name"], "worst_rel_diff": worst["rel_diff"], "layers": rows},
    }
    result["timing"] = _timings(face, model, x, request)
    if request.get("train_steps"):
        try:
            result["train"] = _train(backend, spec, state, x, request)
        except Exception as exc:  # the column says why; parity and speed above are kept
            result["train"] = {"error": _reason(exc)}
    return result


def predict(backend: str, request: dict[str, Any]) -> dict[str, Any]:
    """``predict --backends``: the logits of the shared input with the shared weights (run/predict.py)."""
    spec = spec_from_dict(request["spec"])
    face = faces.backend(backend)
    model = face.build_for_inference(spec, device=request["device"], state=load_state(request["weights"], spec),
                                     compile=False)  # as predict does in one backend
    logits = np.asarray(face.forward(model, np.load(request["input"])), dtype=np.float64)
    return {"backend": backend, "logits": logits.tolist(), "device": face.device_of(model),
            "framework_version": face.version()}


def _reason(exc: Exception) -> str:
    """One line for the report; the whole traceback goes to stderr (compare shows stderr when a worker dies)."""
    traceback.print_exc(file=sys.stderr)
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:300]


def _timings(face: faces.BackendFace, model, x: np.ndarray, request: dict[str, Any]) -> dict[str, Any]:
    """Inference on the fast path (for_inference), a training step on the plain model."""
    out = {}
    for mode in ("infer", "train"):
        try:
            timed = face.for_inference(model) if mode == "infer" else model
            out[mode] = face.benchmark(timed, x, mode=mode, precision=request["precision"],
                                       repeats=request["repeats"])
        except Exception as exc:  # report in the column, keep the rest of the report
            out[mode] = {"error": _reason(exc)}
    return out


# The data-parallel run's own bound (the whole worker has compare's WORKER_TIMEOUT_S); its engine's set-up and
# collectives time out sooner (RESNET_MULTI_DIST_TIMEOUT).
PARALLEL_TIMEOUT_S = 900


def _train(backend: str, spec, state, x: np.ndarray, request: dict[str, Any]) -> dict[str, Any]:
    from resnet_multi.numerics.training_parity import backend_trajectory, max_relative_gap

    try:
        one = backend_trajectory(backend, spec, state, request["train_steps"], request["seed"], x.shape[1:],
                                 batch=x.shape[0], device=request["device"])
    except Exception as exc:  # the column says why; the data-parallel run still runs
        one = {"error": _reason(exc)}
    if request.get("workers", 1) > 1:
        one["parallel"] = many = _parallel_in_fresh_process(backend, request)
        many.setdefault("workers", request["workers"])
        if "losses" in many and "losses" in one:
            many["max_rel_diff"] = max_relative_gap(one["losses"], many["losses"])
    return one


def _parallel_in_fresh_process(backend: str, request: dict[str, Any]) -> dict[str, Any]:
    """The data-parallel trajectory in a new process of this interpreter: flax and tensorflow set their devices
    up before the framework starts, and this process has started it (parity, timings)."""
    from resnet_multi.run.compare import read_worker_output, run_in_own_group

    with tempfile.TemporaryDirectory(prefix="resnet-multi-parallel-") as tmp:
        path = Path(tmp) / "request.json"
        path.write_text(json.dumps({**request, "kind": "train_parallel"}))
        cmd = [sys.executable, "-m", "resnet_multi.run.worker", "--backend", backend, "--request", str(path)]
        done = run_in_own_group(cmd, PARALLEL_TIMEOUT_S)
    if isinstance(done, str):
        return {"error": f"{request['workers']} workers: {done}"}
    result = read_worker_output(done, sys.executable)
    result.pop("python", None)
    if "error" in result:
        sys.stderr.write(done.stderr)  # the traceback, where compare shows a dead worker's stderr
    return result


def train_parallel(backend: str, request: dict[str, Any]) -> dict[str, Any]:
    """``"kind": "train_parallel"``: ``parallel_trajectory`` from the shared weights, on the input's shape."""
    from resnet_multi.numerics.training_parity import parallel_trajectory

    spec = spec_from_dict(request["spec"])
    x = np.load(request["input"], mmap_mode="r")
    try:
        return parallel_trajectory(backend, spec, load_state(request["weights"], spec), request["train_steps"],
                                   request["seed"], x.shape[1:], batch=x.shape[0], workers=request["workers"],
                                   sync_bn=request.get("sync_bn", True), device=request["device"])
    except Exception as exc:  # the column says why (a UserError of the engine is its one line)
        return {"error": _reason(exc), "workers": request["workers"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet_multi.run.worker")
    parser.add_argument("--backend", required=True)
    parser.add_argument("--request", required=True)
    args = parser.parse_args(argv)
    with open(args.request) as f:
        request = json.load(f)
    result = run(faces.canonical_name(args.backend), request)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
