"""Resume and failure on a real backend (issue 14): changed settings, a finished run, a failed or diverging run.

The smallest run that has a checkpoint: a one-stage spec on the embedded digits at 8x8, one epoch of 6 steps.
"""

from __future__ import annotations

import json
import shutil

import pytest

from resnet_multi.arch.spec import ResNetSpec, Stage, Stem, save_spec
from resnet_multi.errors import UserError
from resnet_multi.training.data import DataError
from resnet_multi.training.loop import Progress, TrainConfig, TrainingDiverged, train


def config(spec_file, out, **changes) -> TrainConfig:
    base = dict(model=spec_file, backend="torch", dataset="digits", epochs=1, batch_size=256, lr=0.1, momentum=0.5,
                resize=8, seed=1, device="cpu", out=str(out))
    return TrainConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def one_epoch(backend, face, tmp_path_factory):
    """(spec file, run folder) after one epoch; tests copy the folder before touching it."""
    root = tmp_path_factory.mktemp(f"one-epoch-{backend}")
    spec = ResNetSpec(name="tiny_resume", stages=(Stage(1, 4, 1),), block="basic", in_channels=1, num_classes=10,
                      stem=Stem(kind="cifar", channels=4))
    spec_file = str(save_spec(spec, root / "tiny.toml"))
    train(config(spec_file, root / "run", backend=backend), Progress(enabled=False))
    return spec_file, root / "run"


def snapshot(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_resume_refuses_changed_settings_naming_each(backend, one_epoch, tmp_path):
    spec_file, run = one_epoch
    out = shutil.copytree(run, tmp_path / "run")
    before = snapshot(out)
    with pytest.raises(UserError) as info:
        train(config(spec_file, out, backend=backend, epochs=2, momentum=0.9, precision="bf16", resume=True),
              Progress(enabled=False))
    text = str(info.value)
    assert "\n" not in text and "checkpoint.safetensors" in text
    assert "momentum 0.5 (now 0.9)" in text and "precision 'fp32' (now 'bf16')" in text
    assert snapshot(out) == before


def test_resume_of_a_finished_run_says_so_and_returns_its_report(backend, one_epoch, tmp_path, capsys):
    spec_file, run = one_epoch
    out = shutil.copytree(run, tmp_path / "run")
    before = snapshot(out)
    report = train(config(spec_file, out, backend=backend, resume=True), Progress())
    assert "already holds all 1 epochs: nothing to train" in capsys.readouterr().err
    saved = json.loads((out / "metrics.json").read_text())
    assert report["epochs"] == saved["epochs"] and report["final"] == saved["final"]
    json.dumps(report, allow_nan=False)
    assert snapshot(out) == before


def test_a_run_that_fails_before_its_first_checkpoint_removes_the_folder_it_made(backend, one_epoch, tmp_path):
    spec_file, _ = one_epoch
    (tmp_path / "runs").mkdir()
    empty = tmp_path / "no-data"
    empty.mkdir()
    with pytest.raises(DataError, match="not found in --data-dir"):
        train(config(spec_file, tmp_path / "runs" / "new" / "run", backend=backend, dataset="fashion-mnist",
                     data_dir=str(empty)), Progress(enabled=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no-data", "runs"]
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_diverging_run_stops_in_one_line_and_leaves_nothing(backend, one_epoch, tmp_path):
    spec_file, _ = one_epoch
    with pytest.raises(TrainingDiverged, match="training diverged: the .*loss is (nan|-?inf)") as info:
        train(config(spec_file, tmp_path / "run", backend=backend, lr=1e30, momentum=0.0), Progress(enabled=False))
    assert "\n" not in str(info.value) and "lr 1e+30" in str(info.value)
    assert not (tmp_path / "run").exists()
