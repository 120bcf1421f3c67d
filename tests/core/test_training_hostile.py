"""train() refuses careless and hostile input in one line, before it loads, builds or creates anything (issue 14).

No framework is needed: every check here comes before the model is built.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest

from resnet_multi.arch.memory import TooLarge
from resnet_multi.arch.presets import resolve
from resnet_multi.errors import UserError
from resnet_multi.training import checkpoints, loop
from resnet_multi.training.loop import (
    Progress,
    TrainConfig,
    check_config,
    check_memory,
    check_resumable,
    load_checkpoint,
    make_run_folder,
    remove_created,
    train,
)
from resnet_multi.weights.canonical import WeightsError


def config(tmp_path, **changes) -> TrainConfig:
    base = dict(model="resnet20", backend="torch", dataset="digits", epochs=1, batch_size=8, resize=8,
                device="cpu", out=str(tmp_path / "run"))
    return TrainConfig(**{**base, **changes})


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text
    return text


def nothing_created(tmp_path, before: set) -> None:
    assert set(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("field, value", [
    ("lr", math.nan), ("lr", math.inf), ("lr", 0.0), ("lr", -0.1), ("lr", "0.1"), ("momentum", math.nan),
    ("momentum", -0.5), ("momentum", 1.0), ("epochs", 0), ("epochs", 2.5), ("epochs", True), ("batch_size", -1),
    ("resize", 0), ("seed", -1), ("seed", 1.5), ("precision", None)])
def test_numbers_out_of_range_are_refused_before_anything(tmp_path, field, value):
    before = set(tmp_path.rglob("*"))
    with pytest.raises(UserError, match=field) as info:
        train(config(tmp_path, **{field: value}), Progress(enabled=False))
    one_line(info.value)
    nothing_created(tmp_path, before)


def test_good_numbers_pass():
    check_config(TrainConfig(model="resnet20", backend="torch", lr=1e-4, momentum=0.9, seed=0))
    check_config(TrainConfig(model="resnet20", backend="torch", lr=np.float32(0.1), epochs=np.int64(3)))


def test_a_fresh_run_never_overwrites_a_trained_one(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.safetensors").write_bytes(b"a trained run")
    with pytest.raises(UserError, match="already holds a run.*--resume") as info:
        train(config(tmp_path), Progress(enabled=False))
    one_line(info.value)
    assert (run / "checkpoint.safetensors").read_bytes() == b"a trained run"
    assert [p.name for p in run.iterdir()] == ["checkpoint.safetensors"]


def test_out_naming_a_file_is_one_line_and_leaves_it(tmp_path):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    with pytest.raises(UserError, match="is a file, not a run folder") as info:
        train(config(tmp_path, out=str(existing)), Progress(enabled=False))
    assert str(existing) in one_line(info.value) and existing.read_text() == "keep me"
    with pytest.raises(UserError, match="notes.txt is a file, not a folder"):
        make_run_folder(existing / "run")


def test_resize_that_cannot_fit_is_refused_before_loading(tmp_path):
    before = set(tmp_path.rglob("*"))
    with pytest.raises(TooLarge, match=r"training resnet20 on digits at 20000x20000.*dataset [\d,.]+ GiB") as info:
        train(config(tmp_path, resize=20000), Progress(enabled=False))
    assert "--allow-large" in one_line(info.value)
    nothing_created(tmp_path, before)
    check_memory(config(tmp_path, resize=20000, allow_large=True), resolve("resnet20"))  # the override


def test_resume_without_a_checkpoint_says_so(tmp_path):
    with pytest.raises(UserError, match="nothing to resume: .*checkpoint.safetensors does not exist") as info:
        train(config(tmp_path, resume=True), Progress(enabled=False))
    one_line(info.value)
    assert not (tmp_path / "run").exists()


def write_checkpoint(path, metadata):
    from safetensors.numpy import save

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(save({"fc.bias": np.zeros(10, np.float32)}, metadata=metadata))


def good_meta(tmp_path) -> dict:
    from dataclasses import asdict

    row = {"epoch": 1, "train_loss": 2.0, "val_loss": 2.0, "val_accuracy": 0.1, "images_per_s": 1.0, "seconds": 1.0}
    return {"epoch": 1, "history": [row], "config": asdict(config(tmp_path)), "spec": resolve("resnet20").to_dict()}


@pytest.mark.parametrize("case", ["random bytes", "empty", "plain safetensors", "meta not JSON", "no config",
                                  "config lacks momentum", "history short"])
def test_a_file_that_is_not_a_whole_checkpoint_is_one_line(tmp_path, case):
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    meta = good_meta(tmp_path)
    fmt = {"format": checkpoints.CHECKPOINT_FORMAT}
    if case == "random bytes":
        ckpt.parent.mkdir()
        ckpt.write_bytes(np.random.default_rng(0).bytes(300))
    elif case == "empty":
        ckpt.parent.mkdir()
        ckpt.write_bytes(b"")
    elif case == "plain safetensors":
        write_checkpoint(ckpt, {})
    elif case == "meta not JSON":
        write_checkpoint(ckpt, {**fmt, "meta": "{not json"})
    elif case == "no config":
        write_checkpoint(ckpt, {**fmt, "meta": json.dumps({k: v for k, v in meta.items() if k != "config"})})
    elif case == "config lacks momentum":
        del meta["config"]["momentum"]
        write_checkpoint(ckpt, {**fmt, "meta": json.dumps(meta)})
    else:
        write_checkpoint(ckpt, {**fmt, "meta": json.dumps({**meta, "epoch": 2})})
    before = ckpt.read_bytes()
    with pytest.raises(WeightsError, match=str(ckpt)) as info:
        train(config(tmp_path, resume=True), Progress(enabled=False))
    one_line(info.value)
    assert ckpt.read_bytes() == before and sorted(p.name for p in ckpt.parent.iterdir()) == [ckpt.name]


def test_a_whole_checkpoint_loads(tmp_path):
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    write_checkpoint(ckpt, {"format": checkpoints.CHECKPOINT_FORMAT, "meta": json.dumps(good_meta(tmp_path))})
    weights, optimizer, meta = load_checkpoint(ckpt)
    assert list(weights) == ["fc.bias"] and optimizer == {} and meta["epoch"] == 1


def test_every_setting_that_changes_the_numbers_must_match_on_resume(tmp_path):
    meta, spec, path = good_meta(tmp_path), resolve("resnet20"), tmp_path / "ckpt"
    check_resumable(path, meta, config(tmp_path, epochs=3, device="auto", data_dir="elsewhere"), spec, "torch")
    changed = dict(backend="tf", dataset="fashion-mnist", batch_size=16, lr=0.1, momentum=0.9, seed=1, resize=16,
                   precision="bf16")
    with pytest.raises(UserError) as info:
        check_resumable(path, meta, config(tmp_path, **changed), spec, "tensorflow")
    text = one_line(info.value)
    for key in changed:
        assert key in text, key
    assert "momentum 0.0 (now 0.9)" in text and "precision 'fp32' (now 'bf16')" in text
    with pytest.raises(UserError, match="model 'resnet20' \\(now 'resnet32'\\)"):
        check_resumable(path, meta, config(tmp_path, model="resnet32"), resolve("resnet32"), "torch")
    other = spec.replace(num_classes=11)
    with pytest.raises(UserError, match="another spec of that name"):
        check_resumable(path, meta, config(tmp_path), other, "torch")
    meta_two = {**meta, "epoch": 2, "history": meta["history"] * 2}
    with pytest.raises(UserError, match="already holds 2 epochs, more than epochs=1"):
        check_resumable(path, meta_two, config(tmp_path, epochs=1), spec, "torch")


def test_a_failed_run_removes_only_the_folders_it_created(tmp_path):
    (tmp_path / "runs").mkdir()
    created = make_run_folder(tmp_path / "runs" / "a" / "b")
    assert created == [tmp_path / "runs" / "a", tmp_path / "runs" / "a" / "b"]
    remove_created(created)
    assert sorted(tmp_path.rglob("*")) == [tmp_path / "runs"]
    created = make_run_folder(tmp_path / "runs" / "c")
    (tmp_path / "runs" / "c" / "someone-elses.txt").write_text("x")
    remove_created(created)
    assert (tmp_path / "runs" / "c" / "someone-elses.txt").exists()
    assert make_run_folder(tmp_path / "runs") == []


def test_the_report_is_strict_json():
    report = loop._report(TrainConfig(model="m", backend="torch"), "m", "torch",
                          [{"epoch": 1, "train_loss": math.nan, "val_loss": math.inf}], "cpu", loop.Path("o"))
    assert report["final"]["train_loss"] is None
    json.dumps(report, allow_nan=False)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


ROW = {"epoch": 1, "train_loss": 2.0, "val_loss": 1.5, "val_accuracy": 0.5, "images_per_s": 100.0, "seconds": 1.0}


@pytest.mark.parametrize("stream", [io.StringIO, Terminal])
def test_progress_is_one_line_per_epoch_in_logs_and_a_bar_on_a_terminal(monkeypatch, stream):
    err = stream()
    monkeypatch.setattr("sys.stderr", err)
    progress = Progress()
    with progress.bar(1, 2, total=3) as tick:
        for _ in range(3):
            tick(2.0, 100.0)
    progress.epoch(ROW, 2)
    text = err.getvalue()
    assert text.endswith("epoch 1/2: train loss 2.0000, val loss 1.5000, val acc 0.5000, 100 img/s, 1.0 s\n")
    if stream is Terminal:
        assert "epoch 1/2:   0%|" in text and "0/3" in text  # tqdm's bar (redrawn at most 10 times a second)
        assert text.count("\n") == 1  # and cleared before the epoch line
    else:
        assert text.count("\n") == 1 and "\r" not in text


def test_quiet_progress_prints_nothing(monkeypatch):
    err = Terminal()
    monkeypatch.setattr("sys.stderr", err)
    progress = Progress(enabled=False)
    with progress.bar(1, 1, total=2) as tick:
        tick(1.0, 1.0)
    progress.epoch(ROW, 1)
    progress.note("nothing to train")
    assert err.getvalue() == ""


def test_a_checkpoint_written_before_a_spec_field_existed_still_resumes():
    """A checkpoint's spec dict from an older version lacks the fields added since (at their defaults):
    that is the same spec, while a changed value is not."""
    from resnet_multi.arch import presets
    from resnet_multi.training.checkpoints import same_spec

    spec = presets.get("resnet20")
    saved = {k: v for k, v in spec.to_dict().items() if k not in ("features", "same_padding")}
    assert same_spec(saved, spec) and same_spec(spec.to_dict(), spec)
    assert not same_spec({**saved, "num_classes": 3}, spec)
    assert not same_spec({"name": "resnet20", "stages": "nonsense"}, spec)
