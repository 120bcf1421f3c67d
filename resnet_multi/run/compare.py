"""Side by side: every backend in its own environment and process, one merged report.

MXNet and JAX can never share an environment, so ``compare`` writes one
seeded weights file and one input, starts each backend's interpreter
(resnet_multi.run.interpreters) on ``python -m resnet_multi.run.worker``, and
merges the JSON they print. A missing or broken environment fills its column
with the reason; the others still run. The report's ``failed`` names each
backend that failed (whole, or one of its timings or its training steps) with
a one-line reason, and ``ok`` is false then (the CLI exits 1).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from resnet_multi.arch.memory import check_model_fits
from resnet_multi.arch.presets import resolve
from resnet_multi.arch.shapes import layer_table
from resnet_multi.arch.spec import ResNetSpec
from resnet_multi.files import atomic_write
from resnet_multi.numerics.parity import seeded_input
from resnet_multi.run import fetch
from resnet_multi.run.interpreters import child_env, find_python
from resnet_multi.weights.canonical import init_weights, save_state

WORKER_TIMEOUT_S = 1800


def run_compare(spec: ResNetSpec | str, backends: list[str], input_shape=None, batch: int = 8, seed: int = 0,
                device: str = "cpu", precision: str = "fp32", repeats: int = 5, train_steps: int = 0,
                python: dict[str, str] | None = None, progress: Callable[[str], None] | None = None,
                allow_large: bool = False, weights: str | None = None) -> dict[str, Any]:
    """``weights`` (a weights name or file: run/fetch.py) replaces the seeded weights with random BN statistics."""
    spec = resolve(spec)
    input_shape = tuple(input_shape or spec.input_shape)
    analytic = layer_table(spec, input_shape)
    # Every worker times a training step (and may run --train-steps): the training bound, before init_weights.
    check_model_fits(spec, input_shape, batch, train=True, allow_large=allow_large)
    say = progress or (lambda _msg: None)
    report: dict[str, Any] = {
        "name": spec.name, "input_shape": list(input_shape), "batch": batch, "seed": seed, "device": device,
        "precision": precision, "analytic": analytic.to_dict(), "backends": {},
        **({"weights": str(weights)} if weights is not None else {}),
    }
    state = init_weights(spec, seed, perturb_bn=True) if weights is None else fetch.load(spec, weights, python=python)
    with tempfile.TemporaryDirectory(prefix="resnet-multi-compare-") as tmp:
        weights_path = save_state(state, Path(tmp) / "weights.safetensors", spec)
        input_path = Path(tmp) / "input.npy"
        np.save(input_path, seeded_input(input_shape, batch, seed))
        request = {"spec": spec.to_dict(), "weights": str(weights_path), "input": str(input_path),
                   "device": device, "precision": precision, "repeats": repeats, "seed": seed,
                   "train_steps": train_steps}
        request_path = Path(tmp) / "request.json"
        atomic_write(request_path, json.dumps(request))
        for backend in backends:
            say(f"[{backend}] starting")
            start = time.perf_counter()
            result = run_worker(backend, request_path, python or {})
            result["wall_s"] = round(time.perf_counter() - start, 2)
            report["backends"][backend] = result
            failure = backend_failure(result)
            say(f"[{backend}] {'done' if failure is None else 'FAILED: ' + failure} ({result['wall_s']} s)")
    report["agreement"] = _agreement(report)
    report["failed"] = {b: why for b, r in report["backends"].items() if (why := backend_failure(r)) is not None}
    report["ok"] = not report["failed"]
    return report


def backend_failure(result: dict[str, Any]) -> str | None:
    """One line saying why a backend's column is incomplete, or None when everything it was asked for ran."""
    if "error" in result:
        return _first_line(result["error"])
    parts = [f"{mode} timing: {_first_line(t['error'])}" for mode, t in (result.get("timing") or {}).items()
             if isinstance(t, dict) and "error" in t]
    if "error" in (result.get("train") or {}):
        parts.append(f"training steps: {_first_line(result['train']['error'])}")
    return "; ".join(parts) or None


def _first_line(text: str) -> str:
    return (str(text).strip().splitlines() or ["(no message)"])[0]


def run_worker(backend: str, request_path: Path, overrides: dict[str, str]) -> dict[str, Any]:
    python, source = find_python(backend, overrides)
    if python is None:
        return {"error": source}
    cmd = [python, "-m", "resnet_multi.run.worker", "--backend", backend, "--request", str(request_path)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, env=child_env())
    except OSError as exc:  # checked by find_python, yet it can vanish, or be no program (exec format error)
        return {"error": f"interpreter {python} ({source}) could not start: {exc.strerror or exc}"}
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {WORKER_TIMEOUT_S} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {out.returncode}: {tail[:300]}", "python": python}
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"error": f"the worker printed something that is not its report: {lines[-1][:200]}",
                "python": python}
    result["python"] = python
    return result


def _agreement(report: dict[str, Any]) -> dict[str, Any]:
    """Which backends agree with the analytic table and with the reference."""
    analytic = report["analytic"]["layers"]
    out: dict[str, Any] = {}
    for name, res in report["backends"].items():
        if "error" in res:
            out[name] = {"shapes": None, "parity": None}
            continue
        mismatch = [m["name"] for m, a in zip(res["layers"], analytic)
                    if (m["name"], m["output_shape"], m["params"], m["buffers"])
                    != (a["name"], a["output_shape"], a["params"], a["buffers"])]
        if len(res["layers"]) != len(analytic):
            mismatch.append("(row count)")
        out[name] = {"shapes": not mismatch, "mismatched_layers": mismatch, "parity": res["parity"]["ok"]}
    return out
