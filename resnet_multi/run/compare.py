"""Side by side: every backend in its own environment and process, one merged report.

MXNet and JAX can never share an environment, so ``compare`` writes one
seeded weights file and one input, starts each backend's interpreter
(resnet_multi.run.interpreters) on ``python -m resnet_multi.run.worker``, and
merges the JSON they print. A missing or broken environment fills its column
with the reason; the others still run. The report's ``failed`` names each
backend that failed (whole, or one of its timings or its training steps) with
a one-line reason, and ``ok`` is false then (the CLI exits 1).

``workers=N`` (with ``train_steps``): each worker also runs the steps on its
framework's data-parallel engine over N workers with BN over the global batch
(numerics/training_parity.py: ``parallel_trajectory``, in a fresh process of
the backend's interpreter); ``train.parallel`` holds those losses and their
largest gap to the single worker's.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
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
from resnet_multi.errors import UserError
from resnet_multi.files import atomic_write
from resnet_multi.numerics.parity import seeded_input
from resnet_multi.run import fetch
from resnet_multi.run.interpreters import child_env, find_python
from resnet_multi.weights.canonical import init_weights, save_state

WORKER_TIMEOUT_S = 1800


def run_compare(spec: ResNetSpec | str, backends: list[str], input_shape=None, batch: int = 8, seed: int = 0,
                device: str = "cpu", precision: str = "fp32", repeats: int = 5, train_steps: int = 0,
                python: dict[str, str] | None = None, progress: Callable[[str], None] | None = None,
                allow_large: bool = False, weights: str | None = None, workers: int = 1) -> dict[str, Any]:
    """``weights`` (a weights name or file: run/fetch.py) replaces the seeded weights with random BN statistics;
    ``workers`` > 1 adds the data-parallel trajectories (the CLI checks it: training/parallel.check_workers)."""
    spec = resolve(spec)
    if workers > 1 and not train_steps:
        raise UserError(f"workers {workers} needs train steps: the data-parallel trajectory is a training run")
    input_shape = tuple(input_shape or spec.input_shape)
    analytic = layer_table(spec, input_shape)
    # Every worker times a training step (and may run --train-steps): the training bound, before init_weights.
    check_model_fits(spec, input_shape, batch, train=True, allow_large=allow_large)
    say = progress or (lambda _msg: None)
    report: dict[str, Any] = {
        "name": spec.name, "input_shape": list(input_shape), "batch": batch, "seed": seed, "device": device,
        "precision": precision, "analytic": analytic.to_dict(), "backends": {},
        **({"workers": workers} if workers > 1 else {}),
        **({"weights": str(weights)} if weights is not None else {}),
    }
    state = init_weights(spec, seed, perturb_bn=True) if weights is None else fetch.load(spec, weights, python=python)
    with tempfile.TemporaryDirectory(prefix="resnet-multi-compare-") as tmp:
        weights_path = save_state(state, Path(tmp) / "weights.safetensors", spec)
        input_path = Path(tmp) / "input.npy"
        np.save(input_path, seeded_input(input_shape, batch, seed))
        request = {"spec": spec.to_dict(), "weights": str(weights_path), "input": str(input_path),
                   "device": device, "precision": precision, "repeats": repeats, "seed": seed,
                   "train_steps": train_steps, "workers": workers, "sync_bn": True}
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
    parallel = (result.get("train") or {}).get("parallel") or {}
    if "error" in parallel:
        parts.append(f"data-parallel training steps: {_first_line(parallel['error'])}")
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
    return read_worker_output(out, python)


def run_in_own_group(cmd: list[str], timeout_s: float) -> subprocess.CompletedProcess | str:
    """Run ``cmd`` in its own process group, all of it killed at the timeout or on any interruption (the
    workers it may launch too); the finished process, or one line saying why it did not finish."""
    try:
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True)
    except OSError as exc:
        return f"{cmd[0]} could not start: {exc.strerror or exc}"
    try:
        stdout, stderr = child.communicate(timeout=timeout_s)
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        if isinstance(exc, subprocess.TimeoutExpired):
            return f"timed out after {timeout_s:g} s"
        raise
    return subprocess.CompletedProcess(cmd, child.returncode, stdout, stderr)


def read_worker_output(out: subprocess.CompletedProcess, python: str) -> dict[str, Any]:
    """A worker's report: the last JSON line it printed, or one line saying why there is none."""
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
