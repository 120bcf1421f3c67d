"""Training in every backend: the golden loss trajectory, and train/resume on the embedded digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from resnet_multi.arch.spec import BatchNorm, ResNetSpec, Stage, Stem
from resnet_multi.numerics.training_parity import compare_to_golden, golden_trajectory
from resnet_multi.training.loop import TrainConfig, load_checkpoint, train

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "train_trajectory.json"


def test_first_steps_match_the_golden_trajectory(backend, face):
    golden = json.loads(GOLDEN.read_text())
    result = golden_trajectory(backend)
    problems = compare_to_golden(result, golden)
    assert not problems, f"{backend} vs golden ({golden['backend']}): " + "; ".join(problems)
    assert result["losses"][-1] < result["losses"][0]


def tiny_spec(tmp_path: Path) -> str:
    from resnet_multi.arch.spec import save_spec

    spec = ResNetSpec(name="tiny_digits", stages=(Stage(1, 8, 1), Stage(1, 16, 2)), block="basic",
                      in_channels=1, num_classes=10, stem=Stem(kind="cifar", channels=8),
                      bn=BatchNorm(momentum=0.3))  # running statistics that keep up with 24 quick steps
    return str(save_spec(spec, tmp_path / "tiny.toml"))


def run(backend, spec_file, out, epochs, resume=False):
    config = TrainConfig(model=spec_file, backend=backend, dataset="digits", epochs=epochs, batch_size=64,
                         lr=0.1, momentum=0.5, resize=12, seed=3, device="cpu", out=str(out), resume=resume)
    from resnet_multi.training.loop import Progress

    return train(config, Progress(enabled=False))


def test_train_writes_metrics_plot_checkpoint_and_resumes_exactly(backend, face, tmp_path):
    spec_file = tiny_spec(tmp_path)
    full = run(backend, spec_file, tmp_path / "full", epochs=2)
    assert [r["epoch"] for r in full["epochs"]] == [1, 2]
    assert full["epochs"][1]["val_accuracy"] > 0.2  # 10 classes: chance is 0.1
    assert full["epochs"][1]["train_loss"] < full["epochs"][0]["train_loss"]
    metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert metrics["final"]["val_loss"] == full["final"]["val_loss"]
    assert (tmp_path / "full" / "curves.png").stat().st_size > 0
    run(backend, spec_file, tmp_path / "split", epochs=1)
    resumed = run(backend, spec_file, tmp_path / "split", epochs=2, resume=True)
    a, opt_a, _ = load_checkpoint(tmp_path / "full" / "checkpoint.safetensors")
    b, opt_b, meta = load_checkpoint(tmp_path / "split" / "checkpoint.safetensors")
    assert meta["epoch"] == 2 and set(a) == set(b) and opt_a.keys() == opt_b.keys() and opt_a
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst <= 1e-6, f"resumed run differs from the uninterrupted one by {worst}"
    assert resumed["final"]["val_accuracy"] == pytest.approx(full["final"]["val_accuracy"], abs=1e-9)
