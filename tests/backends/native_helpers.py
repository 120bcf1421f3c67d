"""Small helpers the backend test files share: tiny specs, batches, tolerances, seeded models, skips."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from resnet_multi.arch import presets
from resnet_multi.arch.spec import Stage
from resnet_multi.run.interpreters import child_env, find_python
from resnet_multi.weights.canonical import init_weights

ROOT = Path(__file__).resolve().parents[2]

RTOL = 1e-4  # logits within RTOL * max(1, max |logits|), as the parity suite
TIMING_KEYS = {"median_s", "min_s", "max_s", "stdev_s", "images_per_s", "repeats", "warmup", "batch"}


def tol(logits) -> float:
    return RTOL * max(1.0, float(np.abs(logits).max()))


def tiny(name: str):
    """A preset's every choice (block, shortcut, BN convention, stem) with two small stages."""
    spec = presets.get(name)
    if spec.block == "bottleneck":
        stages = (Stage(1, 32, 1, 2, 8), Stage(1, 64, 2, 2, 8))
    else:
        stages = (Stage(1, 8, 1), Stage(2, 16, 2))
    return dataclasses.replace(spec, name=f"tiny_{name}", stages=stages, num_classes=5,
                               stem=dataclasses.replace(spec.stem, channels=8))


def cross_entropy(logits, labels) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(labels)), labels]))


def batch(spec, n=4, size=(9, 11), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, spec.in_channels, *size)).astype(np.float32)
    return x, (np.arange(n) % spec.num_classes).astype(np.int64)


def model(face, spec, seed=0):
    """The backend's model on the CPU holding seeded weights with random BN affine parameters and statistics."""
    return face.build(spec, device="cpu", seed=seed, state=init_weights(spec, seed, perturb_bn=True))


def only(backend_name: str, fixture_name: str):
    """A fixture ``fixture_name``: the face of ``backend_name``; under every other backend the test skips
    before that face is asked for (so a native file is collected everywhere, and runs in its own environment)."""

    @pytest.fixture(scope="module", name=fixture_name)
    def the_face(backend, request):
        if backend != backend_name:
            pytest.skip(f"{backend_name}-only test")
        return request.getfixturevalue("face")

    return the_face


def check_bench(result, mode, batch, precision="fp32"):
    """What every benchmark result holds, whichever backend and model timed it."""
    assert TIMING_KEYS | {"mode", "precision", "practice"} <= set(result)
    assert result["mode"] == mode and result["precision"] == precision and result["batch"] == batch
    assert result["median_s"] > 0 and result["images_per_s"] > 0


def run_in_torch_env(script: str, out: Path) -> None:
    """Run ``script`` (argv: out, the checkout) in the torch environment, where torchvision itself makes the
    checkpoints and reference outputs other backends are checked against; skipped where torch is missing."""
    python, why = find_python("torch", {})
    if python is None:
        pytest.skip(f"torch is missing: {why}")
    done = subprocess.run([python, "-c", script, str(out), str(ROOT)], capture_output=True, text=True,
                          env=child_env(), timeout=300)
    if done.returncode != 0 and "No module named" in done.stderr:
        pytest.skip(f"the torch environment lacks a package: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr[-2000:]


def run_in_mxnet_env(script: str, out: Path) -> None:
    """run_in_torch_env's twin for the mxnet environment, where Gluon and GluonCV make their own checkpoints; skipped
    where mxnet or a package the script needs is missing, except in the mxnet nox session
    (RESNET_MULTI_REQUIRE_BACKEND=mxnet), where that is a failure."""
    required = os.environ.get("RESNET_MULTI_REQUIRE_BACKEND") == "mxnet"
    python, why = find_python("mxnet", {})
    if python is None:
        if required:
            pytest.fail(f"mxnet is missing: {why}")
        pytest.skip(f"mxnet is missing: {why}")
    done = subprocess.run([python, "-c", script, str(out), str(ROOT)], capture_output=True, text=True,
                          env=child_env(), timeout=300)
    if done.returncode != 0 and "No module named" in done.stderr and not required:
        pytest.skip(f"the mxnet environment lacks a package: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr[-2000:]
