"""Training parity: the loss of the first steps of plain SGD, the same in every backend.

Every backend starts from the same canonical weights and sees the same
seeded batches; fp32 SGD then gives losses that agree to about 1e-6
relative. A golden trajectory (produced by one backend, see ``main``) is
committed, and each backend's CI session checks itself against it.

Regenerate the golden file (after a deliberate change of the spec, the
init, the data or the step):

    .nox/torch/bin/python -m resnet_multi.numerics.training_parity --backend torch \\
        --write tests/golden/train_trajectory.json
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from resnet_multi import faces
from resnet_multi.arch.plan import plan
from resnet_multi.arch.presets import resolve
from resnet_multi.arch.spec import ResNetSpec
from resnet_multi.files import atomic_write
from resnet_multi.weights.canonical import init_weights

GOLDEN = {"name": "d2l_resnet18", "input_shape": [1, 64, 64], "batch": 16, "steps": 10, "lr": 0.0005, "seed": 0}
# Losses within RTOL x max(1, |golden|) for the first STRICT_STEPS steps, LOOSE after;
# the size of each fingerprinted tensor's total update within UPDATE_RTOL.
# Measured on CPU (d2l_resnet18, the GOLDEN setting): torch fp32 stays within
# 4e-6 of the same run in float64 for all 10 steps; flax, mxnet and tensorflow
# agree to 1e-5..1e-4 for 4 steps, then drift as fitting two batches sharpens
# the loss (tensorflow 1.7e-4 at step 5, flax up to 1e-3 at step 9).
RTOL = 1e-4
STRICT_STEPS = 4
LOOSE = 2e-3
UPDATE_RTOL = 5e-3  # measured: within 1.5e-3 in all four


def fingerprinted(spec: ResNetSpec) -> tuple[str, ...]:
    """The tensors whose update size is fingerprinted: the stem conv, the last block's last conv, the classifier.

    Taken from the plan, so every net has them (the golden net's are conv1,
    layer4.1.conv2 and fc, the keys of tests/golden/train_trajectory.json).
    """
    p = plan(spec)
    last = p.blocks[-1].convs[-1] if p.blocks else p.stem.conv
    return tuple(dict.fromkeys(f"{m.name}.weight" for m in (p.stem.conv, last, p.head.fc)))


def step_batch(input_shape, batch: int, num_classes: int, seed: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """The batch of one step: seeded, the same in every environment.

    Two batches alternate, so the loss falls steadily (the net fits them).
    The golden setting (64x64 input, so layer4 is 2x2 rather than 1x1; batch
    16; lr 0.0005) keeps BN's batch statistics well conditioned and the steps
    small; see RTOL for what was measured.
    """
    rng = np.random.default_rng([seed, step % 2, 0x7A1])
    x = rng.standard_normal((batch, *input_shape)).astype(np.float32)
    y = rng.integers(0, num_classes, batch).astype(np.int64)
    return x, y


def backend_trajectory(backend: str, spec: ResNetSpec | str, state: dict[str, np.ndarray] | None, steps: int,
                       seed: int, input_shape, batch: int = 8, lr: float = GOLDEN["lr"],
                       device: str = "cpu") -> dict[str, Any]:
    """Losses of ``steps`` plain-SGD steps (no momentum, no weight decay), and weight fingerprints after."""
    spec = resolve(spec)
    face = faces.backend(backend)
    start = state if state is not None else init_weights(spec, seed)
    model = face.build(spec, device=device, state=start)
    step = face.make_train_step(model, lr=lr)
    losses = []
    for i in range(steps):
        x, y = step_batch(tuple(input_shape), batch, spec.num_classes, seed, i)
        losses.append(float(step(x, y)))
    return {"backend": backend, "losses": losses, "fingerprint": _fingerprint(spec, start, face.to_canonical(model)),
            "lr": lr, "batch": batch, "input_shape": list(input_shape), "steps": steps, "seed": seed}


def _fingerprint(spec: ResNetSpec, start: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> dict[str, float]:
    # How far training moved each tensor (L2 norm of the update): a sum of the
    # weights themselves cancels, and round-off flips its last digits.
    return {k: float(np.linalg.norm(np.asarray(after[k], np.float64) - np.asarray(start[k], np.float64)))
            for k in fingerprinted(spec)}


def parallel_trajectory(backend: str, spec: ResNetSpec | str, state: dict[str, np.ndarray] | None, steps: int,
                        seed: int, input_shape, batch: int = 8, workers: int = 2, sync_bn: bool = True,
                        lr: float = GOLDEN["lr"], device: str = "cpu") -> dict[str, Any]:
    """``backend_trajectory`` on the backend's data-parallel engine (``face.data_parallel``): the same start
    weights and batches, each step's global batch split over ``workers``; adds ``workers``, ``sync_bn``,
    ``engine`` and ``device``.

    Flax and TensorFlow set their devices up before the framework starts: call this in a fresh process
    (run/worker.py does). Engines with one process per worker (torch) are launched here through
    ``engine.launch``; worker 0 writes the result to a file this process reads.
    """
    spec = resolve(spec)
    if batch % workers:
        raise ValueError(f"a batch of {batch} does not split over {workers} workers")
    face = faces.backend(backend)
    engine = face.data_parallel(workers, sync_bn=sync_bn, device=device)  # first: it may set the devices up
    start = state if state is not None else init_weights(spec, seed)
    job = (backend, spec, start, steps, seed, tuple(input_shape), batch, workers, sync_bn, lr, device)
    if not engine.launcher:
        return _on_engine(face, engine, *job)
    with tempfile.TemporaryDirectory(prefix="resnet-multi-trajectory-") as tmp:
        out = Path(tmp) / "trajectory.json"
        engine.launch(parallel_worker_main, (job, str(out)))  # bounded: set-up and collectives time out
        return json.loads(out.read_text())


def parallel_worker_main(job: tuple, out: str) -> None:
    """One launched worker process (engine.launch): the steps as one worker; worker 0 writes the result."""
    backend, _spec, _start, _steps, _seed, _shape, _batch, workers, sync_bn, _lr, device = job
    face = faces.backend(backend)
    engine = face.data_parallel(workers, sync_bn=sync_bn, device=device)
    result = _on_engine(face, engine, *job)
    if engine.rank == 0:
        atomic_write(out, json.dumps(result))


def _on_engine(face, engine, backend, spec, start, steps, seed, input_shape, batch, workers, sync_bn, lr,
               device) -> dict[str, Any]:
    try:
        model = engine.build(spec, device=device, seed=seed, state=start)
        step = engine.make_train_step(model, lr=lr)
        # This process's workers' slices of each global batch (training/parallel.py's process_share; numerics
        # sits below training): one process per worker takes its own, one process for all takes the whole.
        per = batch // engine.processes
        losses = []
        for i in range(steps):
            x, y = step_batch(input_shape, batch, spec.num_classes, seed, i)
            part = slice(engine.rank * per, (engine.rank + 1) * per)
            losses.append(float(step(x[part], y[part])))  # the global batch's loss
        engine.gather(step)  # functional engines copy their state back into the model
        after = face.to_canonical(model)
    finally:
        engine.close()
    return {"backend": backend, "losses": losses, "fingerprint": _fingerprint(spec, start, after), "lr": lr,
            "batch": batch, "input_shape": list(input_shape), "steps": steps, "seed": seed, "workers": workers,
            "sync_bn": sync_bn, "engine": engine.name, "device": engine.device}


def max_relative_gap(one: list[float], many: list[float]) -> float:
    """The largest |difference| of two trajectories' losses, step by step, relative to max(1, |loss|)
    (NaN when a loss is not finite)."""
    gaps = [abs(a - b) / max(1.0, abs(a)) for a, b in zip(one, many)]
    return max(gaps, default=0.0) if all(math.isfinite(g) for g in gaps) else math.nan


def golden_trajectory(backend: str) -> dict[str, Any]:
    g = GOLDEN
    return backend_trajectory(backend, g["name"], None, g["steps"], g["seed"], g["input_shape"], g["batch"], g["lr"])


def compare_to_golden(result: dict[str, Any], golden: dict[str, Any]) -> list[str]:
    """Lines naming each step or fingerprint outside tolerance (empty when all agree)."""
    problems = []
    for i, (got, want) in enumerate(zip(result["losses"], golden["losses"])):
        if abs(got - want) > (RTOL if i < STRICT_STEPS else LOOSE) * max(1.0, abs(want)):
            problems.append(f"step {i + 1}: loss {got:.7f}, golden {want:.7f}")
    for key, want in golden["fingerprint"].items():
        got = result["fingerprint"][key]
        if abs(got - want) > UPDATE_RTOL * abs(want):
            problems.append(f"size of the update of {key}: {got:.6g}, golden {want:.6g}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet_multi.numerics.training_parity",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", required=True)
    parser.add_argument("--write", metavar="FILE.json", help="write the trajectory as the golden file")
    args = parser.parse_args(argv)
    result = golden_trajectory(faces.canonical_name(args.backend))
    text = json.dumps({**GOLDEN, **result}, indent=2) + "\n"
    if args.write:
        atomic_write(args.write, text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
