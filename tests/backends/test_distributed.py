"""Data-parallel training in every backend, on its framework's own engine (docs/distributed.md).

Each run is the command line in a fresh process: an engine sets its devices up before the framework starts
(XLA's host device count, TensorFlow's logical CPUs), which this test process has long done; one device's
references (ghost batch norm) and MXNet's engine, whose contexts need no set-up, run in this process.
Smallest settings that show each property: a two-stage net on the embedded digits at 12x12.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from resnet_multi.arch.plan import plan
from resnet_multi.arch.presets import resolve
from resnet_multi.arch.spec import BatchNorm, ResNetSpec, Stage, Stem, save_spec
from resnet_multi.training import data as datasets
from resnet_multi.training.checkpoints import load_checkpoint
from resnet_multi.training.parallel import worker_slice
from resnet_multi.weights.canonical import init_weights

PROCESS_ENGINES = ("torch",)  # one process per worker: a worker that can be killed on its own
NOT_YET: tuple[str, ...] = ()  # backends with no data-parallel engine wired in yet


def needs_engine(backend: str) -> None:
    if backend in NOT_YET:
        pytest.skip(f"{backend}: data-parallel training is not wired in yet")


def tiny_spec(tmp_path: Path) -> str:
    spec = ResNetSpec(name="tiny_digits", stages=(Stage(1, 8, 1), Stage(1, 16, 2)), block="basic",
                      in_channels=1, num_classes=10, stem=Stem(kind="cifar", channels=8),
                      bn=BatchNorm(momentum=0.3))
    return str(save_spec(spec, tmp_path / "tiny.toml"))


def command(backend: str, spec: str, out: Path, *extra: str, epochs: int = 1, batch: int = 16) -> list[str]:
    return [sys.executable, "-m", "resnet_multi", "train", spec, "--backend", backend, "--dataset", "digits",
            "--resize", "12", "--batch-size", str(batch), "--epochs", str(epochs), "--lr", "0.05",
            "--momentum", "0.5", "--device", "cpu", "--out", str(out), "--quiet", "--json", *extra]


def train(*args, **kwargs) -> dict:
    done = subprocess.run(command(*args, **kwargs), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_two_workers_with_sync_bn_compute_what_one_worker_computes(backend, face, tmp_path):
    needs_engine(backend)
    spec = tiny_spec(tmp_path)
    one = train(backend, spec, tmp_path / "one")
    two = train(backend, spec, tmp_path / "two", "--workers", "2", "--sync-bn", "--check-replicas")
    assert one["workers"] == 1 and two["workers"] == 2 and two["engine"] and two["images_per_s"] > 0
    assert len(two["steps"]) == len(one["steps"]) == 90  # 1,438 images in batches of 16
    for a, b in zip(one["steps"][:4], two["steps"][:4]):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * max(1.0, abs(a["loss"])), (a, b)
    spreads = [s["weights_spread"] for s in two["steps"]]
    assert max(spreads) == 0.0, f"the workers' weights differ after a step: {max(spreads)}"


def test_without_sync_bn_two_workers_compute_ghost_batch_norm(backend, face, tmp_path):
    """Without --sync-bn: one process's SGD on the global batch with BN over each worker's slice on its own.

    The reference, in this process on one device: with momentum 0 the gradient of the global batch's mean loss
    is the mean of the slices' gradients, so one step is the sum of the updates that steps of lr / 2 on each
    slice alone make from the same weights; the loss is the mean of the slices' losses.
    """
    needs_engine(backend)
    path = tiny_spec(tmp_path)
    two = train(backend, path, tmp_path / "ghost", "--workers", "2", "--momentum", "0", "--check-replicas")
    spec, steps = resolve(path), 4
    data = datasets.load("digits", 12, show_progress=False)
    trainable = list(plan(spec).param_shapes())
    state = init_weights(spec, 0)
    for i, idx in zip(range(steps), datasets.batches(len(data.train_y), 16, 0, 0)):
        x, y = data.train_x[idx], data.train_y[idx]
        new, losses = dict(state), []
        for k in range(2):
            model = face.build(spec, device="cpu", state=state)
            losses.append(face.make_train_step(model, lr=0.05 / 2)(worker_slice(x, 2, k), worker_slice(y, 2, k)))
            after = face.to_canonical(model)
            for name in trainable:
                new[name] = new[name] + (after[name] - state[name])
        loss, got = float(np.mean(losses)), two["steps"][i]["loss"]
        assert abs(loss - got) <= 1e-4 * max(1.0, abs(loss)), (i + 1, loss, got)
        state = new
    assert max(s["weights_spread"] for s in two["steps"]) == 0.0


def test_sync_bn_running_statistics_and_momentum_are_one_workers(backend, face, tmp_path):
    """--sync-bn's running statistics follow the spec's rule over the global batch (its unbiased variance counts
    every worker's images): after two steps the whole state and the momentum are one worker's."""
    if backend != "mxnet":
        pytest.skip(f"{backend}'s engine sets its devices up before the framework starts, which this process "
                    "has long done")
    spec = resolve(tiny_spec(tmp_path))
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 1, 12, 12), dtype=np.float32), rng.integers(0, 10, 16)
    one = face.build(spec, device="cpu")
    step_one = face.make_train_step(one, lr=0.05, momentum=0.5)
    engine = face.data_parallel(2, sync_bn=True, device="cpu")
    try:
        two = engine.build(spec, device="cpu")
        step_two = engine.make_train_step(two, lr=0.05, momentum=0.5)
        for _ in range(2):
            assert step_one(x, y) == pytest.approx(step_two(x, y), rel=1e-6)
        assert engine.replica_spread(step_two) == 0.0
        a, b = face.to_canonical(one), face.to_canonical(two)
        opt_a, opt_b = face.optimizer_state(step_one), face.optimizer_state(step_two)
    finally:
        engine.close()
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst <= 1e-5 and max(float(np.abs(opt_a[k] - opt_b[k]).max()) for k in opt_a) <= 1e-5, worst


def test_resume_with_two_workers_equals_the_uninterrupted_run(backend, face, tmp_path):
    needs_engine(backend)
    spec = tiny_spec(tmp_path)
    full = train(backend, spec, tmp_path / "full", "--workers", "2", epochs=2, batch=64)
    train(backend, spec, tmp_path / "split", "--workers", "2", epochs=1, batch=64)
    resumed = train(backend, spec, tmp_path / "split", "--workers", "2", "--resume", epochs=2, batch=64)
    a, opt_a, _ = load_checkpoint(tmp_path / "full" / "checkpoint.safetensors")
    b, opt_b, meta = load_checkpoint(tmp_path / "split" / "checkpoint.safetensors")
    assert meta["epoch"] == 2 and set(a) == set(b) and opt_a.keys() == opt_b.keys() and opt_a
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in [*a])
    worst = max(worst, max(float(np.abs(opt_a[k] - opt_b[k]).max()) for k in opt_a))
    assert worst <= 1e-6, f"resumed run differs from the uninterrupted one by {worst}"
    assert resumed["steps"] == full["steps"]  # the first epoch's trajectory survives the resume
    assert resumed["final"]["val_accuracy"] == pytest.approx(full["final"]["val_accuracy"], abs=1e-9)


def test_batch_that_does_not_split_over_the_workers_is_one_line(backend, face, tmp_path):
    done = subprocess.run(command(backend, tiny_spec(tmp_path), tmp_path / "odd", "--workers", "3"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and "does not split evenly over 3 workers" in done.stderr
    assert not (tmp_path / "odd").exists()


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_a_killed_worker_ends_the_run_in_one_line(backend, face, tmp_path):
    if backend not in PROCESS_ENGINES:
        pytest.skip(f"{backend}'s workers are devices of one process: there is no worker process to kill")
    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs Linux's /proc to find the worker processes")
    out = tmp_path / "killed"
    run = subprocess.Popen(command(backend, tiny_spec(tmp_path), out, "--workers", "2", epochs=50),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoint.safetensors").exists():  # mid-run: after the first epoch's checkpoint
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1][-2000:]
            time.sleep(0.2)
        workers = [c for c in children(run.pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(workers) == 2
        killed = time.monotonic()
        os.kill(workers[-1], signal.SIGKILL)
        _, err = run.communicate(timeout=60)
        assert time.monotonic() - killed < 60
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "worker" in lines[0] and "SIGKILL" in lines[0], err
    _, _, meta = load_checkpoint(out / "checkpoint.safetensors")  # the last checkpoint is whole
    assert meta["epoch"] >= 1
