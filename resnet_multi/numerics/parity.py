"""Numerical parity of one backend against the NumPy reference, layer by layer."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from resnet_multi import faces
from resnet_multi.arch.presets import resolve
from resnet_multi.arch.spec import ResNetSpec
from resnet_multi.numerics import reference
from resnet_multi.weights.canonical import init_weights

# Logits must agree within RTOL * max(1, max |reference logits|) in fp32.
RTOL = 1e-4


def seeded_input(input_shape, batch: int, seed: int) -> np.ndarray:
    """The fixed input every backend sees for a seed (standard normal, float32, NCHW)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1A9E]))
    return rng.standard_normal((batch, *input_shape)).astype(np.float32)


def compare_activations(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per row: max abs diff, the reference's max abs, and their ratio (relative diff)."""
    rows = []
    for name, want in ref.items():
        if name not in ours:
            rows.append({"name": name, "max_abs_diff": None, "ref_max_abs": float(np.abs(want).max()),
                         "rel_diff": None, "error": "missing from the backend's activations"})
            continue
        got = np.asarray(ours[name], dtype=np.float64).reshape(want.shape)
        diff = float(np.abs(got - want).max())
        scale = float(np.abs(want).max())
        rows.append({"name": name, "max_abs_diff": diff, "ref_max_abs": scale, "rel_diff": diff / max(scale, 1e-30)})
    return rows


def logits_verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The last row (the logits) against the bar: max |diff| <= RTOL * max(1, max |ref|)."""
    logits = rows[-1]
    tolerance = RTOL * max(1.0, logits["ref_max_abs"])
    return {"max_abs_diff": logits["max_abs_diff"], "ref_max_abs": logits["ref_max_abs"], "tolerance": tolerance,
            "ok": logits["max_abs_diff"] is not None and logits["max_abs_diff"] <= tolerance}


def parity_report(spec: ResNetSpec | str, backend: str, input_shape=None, seed: int = 0, mode: str = "eval",
                  batch: int = 2, device: str = "auto", allow_large: bool = False,
                  state: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Run the backend and the reference on the same weights and seeded input.

    Weights are ``state`` (e.g. pretrained ones), else the spec's seeded init
    with random BN statistics and affine parameters (so that no BN is an
    identity). In train mode the running
    statistics each side computed are compared too. What cannot fit in memory
    is refused (TooLarge) before anything is allocated, unless ``allow_large``.
    """
    if mode not in ("eval", "train"):
        raise ValueError(f"mode must be eval or train, got {mode!r}")
    spec = resolve(spec)
    input_shape = tuple(input_shape or spec.input_shape)
    from resnet_multi.arch.memory import check_model_fits
    from resnet_multi.arch.shapes import layer_table

    layer_table(spec, input_shape)  # a clear error for a bad input before any framework work
    check_model_fits(spec, input_shape, batch, allow_large=allow_large)  # forward passes only
    face = faces.backend(backend)
    face.module("model")  # a missing framework is its one-line error before anything is allocated
    state = init_weights(spec, seed, perturb_bn=True) if state is None else state
    x = seeded_input(input_shape, batch, seed)
    model = face.build(spec, device=device, state=state)
    train = mode == "train"
    ours = face.activations(model, x, train=train)
    ref, ref_state = reference.run(spec, state, x, train=train)
    layers = compare_activations(ours, ref)
    verdict = logits_verdict(layers)
    report: dict[str, Any] = {
        "backend": face.name, "name": spec.name, "mode": mode,
        "input_shape": list(input_shape), "batch": batch, "seed": seed, "device": face.device_of(model),
        "framework_version": face.version(),
        "max_abs_diff": verdict["max_abs_diff"], "ref_max_abs": verdict["ref_max_abs"],
        "tolerance": verdict["tolerance"],
        "layers": layers,
    }
    ok = verdict["ok"]
    if train:
        after = face.to_canonical(model)
        stats = [k for k in ref_state if k.endswith(("running_mean", "running_var"))]
        worst = max(stats, key=lambda k: np.abs(after[k] - ref_state[k]).max() / max(1.0, np.abs(ref_state[k]).max()))
        diff = float(np.abs(after[worst] - ref_state[worst]).max())
        bound = RTOL * max(1.0, float(np.abs(ref_state[worst]).max()))
        report["running_stats"] = {"worst": worst, "max_abs_diff": diff, "tolerance": bound}
        ok = ok and diff <= bound
    report["ok"] = bool(ok)
    first = next((r["name"] for r in layers if r["max_abs_diff"] is None
                  or r["max_abs_diff"] > RTOL * max(1.0, r["ref_max_abs"])), None)
    report["first_divergent_layer"] = first
    return report
