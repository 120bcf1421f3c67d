"""``resnet-multi predict``: images through a pretrained network, top-k class names and probabilities.

The weights are a registry or user entry (resnet_multi/weights/registry.py): its ``preprocessing`` is
applied once in NumPy (resnet_multi/weights/preprocess.py), so every framework gets the same input,
and its ``categories`` name the classes. The probabilities are a float64 softmax of the logits.
``predict_all`` runs each backend in its own environment (the worker's ``predict`` request, as
``compare`` does) and says whether they agree: the same top-k indices, and the largest difference
of any class's probability from the first backend's.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from resnet_multi import faces
from resnet_multi.arch.presets import resolve as resolve_spec
from resnet_multi.arch.spec import ResNetSpec
from resnet_multi.errors import UserError
from resnet_multi.files import atomic_write
from resnet_multi.run import fetch
from resnet_multi.weights import preprocess
from resnet_multi.weights.canonical import save_state
from resnet_multi.weights.registry import Entry


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities per row, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def top_k(probs: np.ndarray, k: int, labels: Sequence[str] | None) -> list[dict[str, Any]]:
    """The k most probable classes of one row (ties: the lower index first)."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"index": int(i), "label": labels[i] if labels else None, "probability": float(probs[i])}
            for i in order]


def entry_of(spec: ResNetSpec, weights: str) -> Entry:
    """The weights' entry: predict needs its preprocessing (a bare file has none)."""
    found = fetch.resolve(spec.name, weights)
    if isinstance(found, Path):
        raise UserError(f"--weights {weights}: a file has no preprocessing or class names; name it in a user "
                        "entry (--weights-file, with preprocessing = an entry's name) and pass that name")
    return found


def check_top(spec: ResNetSpec, top: int) -> None:
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= spec.num_classes:
        raise UserError(f"--top {top}: expected 1 to {spec.num_classes} (the classes of {spec.name})")


def prepare(model: str | ResNetSpec, images: Sequence[str], weights: str, top: int
            ) -> tuple[ResNetSpec, Entry, np.ndarray]:
    """The spec, the entry and the preprocessed batch; every user error before any weights are fetched."""
    spec = resolve_spec(model)
    check_top(spec, top)
    if not images:
        raise UserError("no image given")
    entry = entry_of(spec, weights)
    return spec, entry, preprocess.load_images(images, entry.preprocessing)


def _report(spec: ResNetSpec, entry: Entry, images: Sequence[str], logits: np.ndarray, top: int
            ) -> dict[str, Any]:
    labels = entry.categories
    probs = softmax(logits)
    return {"predictions": [{"image": str(image), "top": top_k(p, top, labels)} for image, p in zip(images, probs)],
            "model": spec.name, "weights": entry.name, "preprocessing": entry.to_dict()["preprocessing"]}


def predict(model: str | ResNetSpec, images: Sequence[str], weights: str, backend: str, top: int = 5,
            device: str = "auto", python: dict[str, str] | None = None, quiet: bool = False) -> dict[str, Any]:
    """Top-``top`` classes of each image in one backend, here."""
    spec, entry, x = prepare(model, images, weights, top)
    face = faces.backend(backend)
    face.module("model")  # a missing framework is its one line before any download
    state = fetch.load(spec, entry.name, quiet=quiet, python=python)
    # The fast path without its compile step: one batch does not repay a compilation.
    net = face.build_for_inference(spec, device=device, state=state, compile=False)
    logits = np.asarray(face.forward(net, x))
    return {**_report(spec, entry, images, logits, top), "backend": face.name, "device": face.device_of(net),
            "framework_version": face.version()}


def predict_all(model: str | ResNetSpec, images: Sequence[str], weights: str, backends: Sequence[str],
                top: int = 5, device: str = "cpu", python: dict[str, str] | None = None,
                progress: Callable[[str], None] | None = None, quiet: bool = False) -> dict[str, Any]:
    """Each backend in its own environment on the same input and weights file; do they agree?"""
    from resnet_multi.run.compare import run_worker

    spec, entry, x = prepare(model, images, weights, top)
    say = progress or (lambda _msg: None)
    state = fetch.load(spec, entry.name, quiet=quiet, python=python)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="resnet-multi-predict-") as tmp:
        weights_path = save_state(state, Path(tmp) / "weights.safetensors", spec)
        input_path = Path(tmp) / "input.npy"
        np.save(input_path, x)
        request_path = Path(tmp) / "request.json"
        atomic_write(request_path, json.dumps({"kind": "predict", "spec": spec.to_dict(), "weights": str(weights_path),
                                               "input": str(input_path), "device": device}))
        for backend in backends:
            say(f"[{backend}] starting")
            start = time.perf_counter()
            result = run_worker(backend, request_path, python or {})
            result["wall_s"] = round(time.perf_counter() - start, 2)
            results[backend] = result
            say(f"[{backend}] {'FAILED: ' + result['error'] if 'error' in result else 'done'} ({result['wall_s']} s)")
    columns: dict[str, Any] = {}
    probs: dict[str, np.ndarray] = {}
    for backend, result in results.items():
        if "error" in result:
            columns[backend] = {"error": result["error"]}
            continue
        logits = np.asarray(result["logits"], dtype=np.float64)
        probs[backend] = softmax(logits)
        columns[backend] = {**_report(spec, entry, images, logits, top),
                            **{k: result[k] for k in ("device", "framework_version", "python") if k in result}}
    report: dict[str, Any] = {"model": spec.name, "weights": entry.name,
                              "preprocessing": entry.to_dict()["preprocessing"], "backends": columns}
    if probs:
        first = next(iter(probs))
        report["backend"] = first
        report["predictions"] = columns[first]["predictions"]
        report["agreement"] = agreement(probs, top)
    report["failed"] = {b: c["error"] for b, c in columns.items() if "error" in c}
    report["ok"] = not report["failed"] and bool(probs) and report["agreement"]["same_top"]
    return report


def agreement(probs: dict[str, np.ndarray], top: int) -> dict[str, Any]:
    """Against the first backend: the same top-k indices per image, and the largest probability difference."""
    first = next(iter(probs))

    def order(p: np.ndarray) -> list[list[int]]:
        return [np.argsort(-row, kind="stable")[:top].tolist() for row in p]

    want = order(probs[first])
    per = {b: {"same_top": order(p) == want, "max_probability_diff": float(np.abs(p - probs[first]).max())}
           for b, p in probs.items()}
    return {"reference": first, "same_top": all(v["same_top"] for v in per.values()),
            "max_probability_diff": max(v["max_probability_diff"] for v in per.values()), "backends": per}
