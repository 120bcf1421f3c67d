"""Side by side: every backend in its own environment and process, one merged report.

MXNet and JAX can never share an environment, so ``compare`` writes one
seeded weights file and one input, starts each backend's interpreter on
``python -m resnet_multi.worker``, and merges the JSON they print. A missing
or broken environment fills its column with the reason; the others still run.

Interpreters, first match wins:
1. ``--python BACKEND=PATH`` on the command line;
2. the environment variable ``RESNET_MULTI_PYTHON_<BACKEND>`` (e.g. RESNET_MULTI_PYTHON_TORCH);
3. ``.nox/<backend>/bin/python`` in the project folder (what ``nox`` builds);
4. this interpreter, if it can import the framework.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import registry
from .errors import UserError
from .measure import default_input_shape
from .parity import seeded_input
from .presets import resolve
from .shapes import layer_table
from .spec import ResNetSpec
from .weights import init_weights, save_state

WORKER_TIMEOUT_S = 1800


def project_root() -> Path:
    here = Path(__file__).resolve().parent.parent
    return here if (here / "noxfile.py").exists() else Path.cwd()


def find_python(backend: str, overrides: dict[str, str]) -> tuple[str | None, str]:
    """The interpreter for a backend and where that choice came from."""
    if backend in overrides:
        return overrides[backend], "--python"
    var = f"RESNET_MULTI_PYTHON_{backend.upper()}"
    if os.environ.get(var):
        return os.environ[var], var
    nox_python = project_root() / ".nox" / backend / "bin" / "python"
    if nox_python.exists():
        return str(nox_python), "nox"
    modules = registry.BACKENDS[backend][0]
    import importlib.util

    if all(importlib.util.find_spec(m) for m in modules):
        return sys.executable, "this interpreter"
    return None, (f"no environment found: run 'nox -s {backend} --install-only', set {var}, "
                  f"or pass --python {backend}=PATH")


def parse_python_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--python expects BACKEND=PATH, got {item!r}")
        name, path = item.split("=", 1)
        out[registry.canonical_name(name)] = path
    return out


def run_compare(spec: ResNetSpec | str, backends: list[str], input_shape=None, batch: int = 8, seed: int = 0,
                device: str = "cpu", precision: str = "fp32", repeats: int = 5, train_steps: int = 0,
                python: dict[str, str] | None = None,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    spec = resolve(spec)
    input_shape = tuple(input_shape or default_input_shape(spec))
    analytic = layer_table(spec, input_shape)
    say = progress or (lambda _msg: None)
    report: dict[str, Any] = {
        "name": spec.name, "input_shape": list(input_shape), "batch": batch, "seed": seed, "device": device,
        "precision": precision, "analytic": analytic.to_dict(), "backends": {},
    }
    with tempfile.TemporaryDirectory(prefix="resnet-multi-compare-") as tmp:
        weights_path = save_state(init_weights(spec, seed, perturb_bn=True), Path(tmp) / "weights.safetensors", spec)
        input_path = Path(tmp) / "input.npy"
        np.save(input_path, seeded_input(input_shape, batch, seed))
        request = {"spec": spec.to_dict(), "weights": str(weights_path), "input": str(input_path),
                   "device": device, "precision": precision, "repeats": repeats, "seed": seed,
                   "train_steps": train_steps}
        request_path = Path(tmp) / "request.json"
        request_path.write_text(json.dumps(request))
        for backend in backends:
            say(f"[{backend}] starting")
            start = time.perf_counter()
            result = _run_worker(backend, request_path, python or {})
            result["wall_s"] = round(time.perf_counter() - start, 2)
            report["backends"][backend] = result
            say(f"[{backend}] {'done' if 'error' not in result else 'FAILED: ' + result['error']} "
                f"({result['wall_s']} s)")
    report["agreement"] = _agreement(report)
    return report


def _run_worker(backend: str, request_path: Path, overrides: dict[str, str]) -> dict[str, Any]:
    python, source = find_python(backend, overrides)
    if python is None:
        return {"error": source}
    cmd = [python, "-m", "resnet_multi.worker", "--backend", backend, "--request", str(request_path)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(project_root()),
                                                                      os.environ.get("PYTHONPATH")]))}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, env=env)
    except FileNotFoundError:
        return {"error": f"interpreter {python} ({source}) does not exist"}
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {WORKER_TIMEOUT_S} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {out.returncode}: {tail[:300]}", "python": python}
    result = json.loads(lines[-1])
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
