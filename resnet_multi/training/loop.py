"""``resnet-multi train``: the book's training loop for any backend, with checkpoints and resume.

Defaults are the book's: Fashion-MNIST at 96x96, batch 128, SGD lr 0.01, 10
epochs. The same seed gives the same initial weights (the canonical seeded
init) and the same batch order (seeded per epoch) in every backend.

Per epoch the run folder receives, each written atomically:
``checkpoint.safetensors`` (canonical weights + optimizer state, with the
epoch and config in its metadata), ``metrics.json`` and ``curves.png``.
``--resume`` continues after the last complete epoch and gives the same
result as an uninterrupted run; Ctrl-C leaves that checkpoint usable.

Before anything is loaded or created, the config's numbers are checked
(finite, in range), the dataset and the model's training memory are checked
against the machine's (``allow_large`` skips that), and a resume is checked
against its checkpoint: every setting that changes the numbers must be the
checkpoint's. A run that fails before its first checkpoint removes the run
folder it created, and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from tqdm import tqdm

from resnet_multi import faces
from resnet_multi.arch.memory import check_fits, estimate, gib
from resnet_multi.arch.presets import resolve
from resnet_multi.arch.spec import ResNetSpec
from resnet_multi.errors import UserError
from resnet_multi.files import atomic_write
from resnet_multi.training import data as datasets
from resnet_multi.training import parallel
from resnet_multi.training.checkpoints import check_resumable, load_checkpoint, save_checkpoint
from resnet_multi.weights.canonical import check_state, with_new_head


@dataclass
class TrainConfig:
    model: str
    backend: str
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.0
    resize: int = 96
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    out: str | None = None
    resume: bool = False
    allow_large: bool = False  # skip the memory check (--allow-large)
    weights: str | None = None  # pretrained weights to start from (a name or a file; their state: train(pretrained=))
    num_classes: int | None = None  # a new head of this many classes, freshly initialised (--num-classes)
    workers: int = 1  # data-parallel workers on the backend's own engine; batch_size is the global batch
    sync_bn: bool = False  # BN over the global batch (else each worker's slice); see training/parallel.py
    check_replicas: bool = False  # measure after every first-epoch step that every worker holds the same weights


class TrainingDiverged(UserError, ArithmeticError):
    """The loss became NaN or infinite: the settings (usually the learning rate) make SGD diverge."""


def check_config(config: TrainConfig) -> None:
    """A one-line UserError for a number out of range, before anything is loaded or created."""
    for name in ("epochs", "batch_size", "resize"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(config.seed, bool) or not isinstance(config.seed, numbers.Integral) or config.seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {config.seed!r}")
    for name, low, high, rule in (("lr", 0.0, math.inf, "above 0"), ("momentum", 0.0, 1.0, "in [0, 1)")):
        value = getattr(config, name)
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not (value > low if name == "lr" else low <= value < high):
            raise UserError(f"{name} must be a finite number {rule}, got {value!r}")
    if config.num_classes is not None and (isinstance(config.num_classes, bool)
                                           or not isinstance(config.num_classes, numbers.Integral)
                                           or config.num_classes < 1):
        raise UserError(f"num_classes must be a positive integer, got {config.num_classes!r}")
    for name in ("backend", "dataset", "device", "precision"):
        if not isinstance(getattr(config, name), str):
            raise UserError(f"{name} must be a string, got {getattr(config, name)!r}")
    parallel.check_workers(config.workers, config.batch_size, config.sync_bn)


def check_memory(config: TrainConfig, spec: ResNetSpec) -> None:
    """Refuse a dataset plus training step that cannot fit, before the dataset is resized (or downloaded)."""
    side = config.resize
    dataset = datasets.info(config.dataset).nbytes(side)
    model = estimate(spec, (spec.in_channels, side, side), config.batch_size, train=True)
    check_fits(f"training {spec.name} on {config.dataset} at {side}x{side}, batch {config.batch_size},",
               dataset + model.total, config.allow_large,
               f"dataset {gib(dataset)}, weights {gib(model.weights)}, activations {gib(model.activations)}")


def cross_entropy_and_accuracy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = float(-log_probs[np.arange(len(labels)), labels].mean())
    return loss, float((logits.argmax(axis=1) == labels).mean())


# -- fine-tuning ---------------------------------------------------------------------------------


def model_spec(config: TrainConfig) -> ResNetSpec:
    """The trained spec: the model's, with ``num_classes`` classes when the config asks for a new head."""
    spec = resolve(config.model)
    return spec if config.num_classes is None else replace(spec, num_classes=config.num_classes)


# -- progress ----------------------------------------------------------------------------------


class Progress:
    """One line per epoch for logs; a live tqdm bar as well when stderr is a terminal; nothing when disabled."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.live = enabled and sys.stderr.isatty()

    @contextlib.contextmanager
    def bar(self, epoch: int, epochs: int, total: int) -> Iterator[Callable[[float, float], None]]:
        """A function tick(loss, images_per_s) to call after each step; the bar is gone when the block ends."""
        with tqdm(total=total, desc=f"epoch {epoch}/{epochs}", unit="step", leave=False, file=sys.stderr,
                  dynamic_ncols=True, disable=not self.live) as bar:
            def tick(loss: float, rate: float) -> None:
                bar.set_postfix_str(f"loss {loss:.4f}, {rate:.0f} img/s", refresh=False)
                bar.update(1)

            yield tick

    def epoch(self, row: dict[str, Any], epochs: int) -> None:
        self.note(f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}, val loss "
                  f"{row['val_loss']:.4f}, val acc {row['val_accuracy']:.4f}, {row['images_per_s']:.0f} img/s, "
                  f"{row['seconds']:.1f} s")

    def note(self, line: str) -> None:
        if self.enabled:
            print(line, file=sys.stderr, flush=True)


# -- the loop -----------------------------------------------------------------------------------


def _images(x: np.ndarray, channels: int) -> np.ndarray:
    # Grayscale data for a 3-channel net: repeat the channel.
    return x if x.shape[1] == channels else np.repeat(x, channels, axis=1)


def evaluate(face: faces.BackendFace, model, x: np.ndarray, y: np.ndarray, channels: int, batch: int = 256
             ) -> tuple[float, float]:
    logits = np.concatenate([face.forward(model, _images(x[i:i + batch], channels))
                             for i in range(0, len(y), batch)])
    return cross_entropy_and_accuracy(logits, y)


def make_run_folder(out: Path) -> list[Path]:
    """Create ``out`` and any missing parents; return those this call created (outermost first)."""
    missing = []
    folder = out
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"{out}: {folder} is a file, not a folder" if missing else
                        f"{out}: is a file, not a run folder (--out names a folder)")
    created: list[Path] = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except OSError as exc:
            remove_created(created)
            raise UserError(f"{out}: cannot create the run folder ({exc.strerror or exc})") from None
        created.append(path)
    return created


def remove_created(created: list[Path]) -> None:
    """Remove the folders a failed run created, innermost first; one that is not empty stays."""
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            return


def train(config: TrainConfig, progress: Progress | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None,
          pretrained: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Train (or resume); ``pretrained``: the canonical state of ``config.weights`` for ``config.model``
    (resnet_multi.run.fetch.load gives it), the start of a fine-tuning run; with ``config.num_classes`` its
    head is replaced by a freshly initialised one."""
    check_config(config)
    if config.weights is not None and pretrained is None and not config.resume:
        raise UserError(f"weights {config.weights!r}: pass their state as pretrained= "
                        "(resnet_multi.run.fetch.load(model, weights))")
    spec = model_spec(config)
    face = faces.backend(config.backend)
    backend = face.name
    progress = progress or Progress()
    out = Path(config.out or f"runs/{spec.name}-{backend}")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file, not a run folder (--out names a folder)")
    ckpt_path, metrics_path = out / "checkpoint.safetensors", out / "metrics.json"
    wanted = datasets.info(config.dataset)
    if spec.num_classes < wanted.num_classes:
        raise UserError(f"{spec.name} has {spec.num_classes} classes; {config.dataset} needs {wanted.num_classes}")
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if not config.resume and ckpt_path.exists():  # a trained run is never overwritten by a fresh one
        raise UserError(f"{out} already holds a run ({ckpt_path.name}): continue it with --resume, "
                        f"or train into another --out")
    if config.resume:
        if not ckpt_path.is_file():
            raise UserError(f"nothing to resume: {ckpt_path} does not exist (start without --resume)")
        weights, optimizer, meta = load_checkpoint(ckpt_path)
        check_resumable(ckpt_path, meta, config, spec, backend)
        check_state(spec, weights, source=str(ckpt_path))
        start_epoch, history = meta["epoch"], meta["history"]
    check_memory(config, spec)
    start = None
    if pretrained is not None and not config.resume:
        base = resolve(config.model)
        check_state(base, pretrained, source=str(config.weights or "pretrained"))
        start = with_new_head(pretrained, spec, config.seed) if config.num_classes is not None else dict(pretrained)
    # Data parallel (training/parallel.py): the backend's own engine; one process per worker where it needs them.
    engine = (face.data_parallel(config.workers, sync_bn=config.sync_bn, device=config.device)
              if config.workers > 1 else None)
    steps: list[dict[str, Any]] = (list(meta["steps"]) if config.resume and isinstance(meta.get("steps"), list)
                                   else [])
    about = {"engine": engine.name if engine is not None else f"{backend} on one device", "steps": steps}
    if engine is not None and engine.launcher:  # every worker process runs this same call as one worker
        if start_epoch == config.epochs:
            progress.note(f"{ckpt_path} already holds all {start_epoch} epochs: nothing to train")
            return _report(config, spec.name, backend, history, engine.device, out, about)
        engine.launch(worker_main, (config, progress.enabled, pretrained))
        return json.loads(metrics_path.read_text())  # worker 0's report
    lead = engine is None or engine.rank == 0  # the one worker that writes files and shows progress
    progress = progress if lead else Progress(enabled=False)
    model = (engine or face).build(spec, device=config.device, seed=config.seed, state=start)
    device = face.device_of(model) if engine is None else engine.device
    if start_epoch == config.epochs:
        progress.note(f"{ckpt_path} already holds all {start_epoch} epochs: nothing to train")
        return _report(config, spec.name, backend, history, device, out, about)

    created = make_run_folder(out) if lead else []
    try:
        data = datasets.load(config.dataset, config.resize, config.data_dir, show_progress=progress.enabled)
        step = (engine or face).make_train_step(model, lr=config.lr, momentum=config.momentum,
                                                precision=config.precision)
        if config.resume:
            face.from_canonical(model, weights)
            face.load_optimizer_state(step, optimizer)
        for epoch in range(start_epoch, config.epochs):
            row = _epoch(face, model, step, data, config, spec.in_channels, epoch, progress, engine, steps)
            history.append(row)
            if not lead:
                continue
            meta = {"epoch": epoch + 1, "history": history, "config": asdict(config), "spec": spec.to_dict(),
                    "steps": steps}
            save_checkpoint(ckpt_path, face.to_canonical(model), face.optimizer_state(step), meta)
            created = []  # the run has a checkpoint now: its folder stays whatever happens next
            report = _report(config, spec.name, backend, history, device, out, about)
            atomic_write(metrics_path, json.dumps(report, indent=2, allow_nan=False) + "\n")
            _plot(history, out / "curves.png", f"{spec.name} on {backend}, {data.name}")
            progress.epoch(row, config.epochs)
            if on_epoch:
                on_epoch(row)
    except BaseException:  # not handled here: only the empty folders this call made are taken back
        remove_created(created)
        raise
    finally:
        if engine is not None:
            engine.close()
    return _report(config, spec.name, backend, history, device, out, about)


def worker_main(config: TrainConfig, show_progress: bool, pretrained: dict[str, np.ndarray] | None) -> None:
    """What each launched worker process runs (engine.launch): this same training, as one worker of the run."""
    import threading

    # tqdm's default lock is a multiprocessing one: a worker killed while holding it would leave a semaphore
    # behind (and a warning at exit). Only worker 0 draws bars, so a thread lock is all it needs.
    tqdm.set_lock(threading.RLock())
    train(config, Progress(enabled=show_progress), pretrained=pretrained)


def _epoch(face, model, step, data: datasets.Dataset, config: TrainConfig, channels: int, epoch: int,
           progress: Progress, engine=None, steps: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    losses, seen = [], 0
    n = len(data.train_y)
    total = (n + config.batch_size - 1) // config.batch_size
    with progress.bar(epoch + 1, config.epochs, total) as tick:
        for i, idx in enumerate(datasets.batches(n, config.batch_size, config.seed, epoch)):
            part = idx
            if engine is not None:  # the global batch; this process's workers' slices of it (training/parallel.py)
                idx = parallel.usable(idx, config.workers)
                if not len(idx):
                    continue
                part = parallel.process_share(idx, config.workers, engine.processes, engine.rank)
            loss = float(step(_images(data.train_x[part], channels), data.train_y[part]))  # the global batch's
            if not math.isfinite(loss):
                raise TrainingDiverged(f"training diverged: the loss is {loss} at epoch {epoch + 1}, step {i + 1} "
                                       f"(lr {config.lr}, momentum {config.momentum}); try a lower lr")
            losses.append(loss)
            seen += len(idx)
            if epoch == 0 and steps is not None:  # the first epoch's trajectory, step by step (metrics.json)
                steps.append({"step": i + 1, "loss": loss})
                if config.check_replicas and engine is not None:
                    steps[-1]["weights_spread"] = engine.replica_spread(step)
            tick(float(np.mean(losses[-20:])), seen / (time.perf_counter() - start))
    train_seconds = time.perf_counter() - start
    if engine is not None:
        engine.gather(step)  # the model object holds the trained state (functional engines copy theirs back)
    val_loss, val_acc = evaluate(face, model, data.val_x, data.val_y, channels)
    if not math.isfinite(val_loss):
        raise TrainingDiverged(f"training diverged: the validation loss is {val_loss} after epoch {epoch + 1} "
                               f"(lr {config.lr}, momentum {config.momentum}); try a lower lr")
    return {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
            "val_accuracy": val_acc, "images_per_s": seen / train_seconds, "seconds": time.perf_counter() - start}


def _finite(value: Any) -> Any:
    """The report is strict JSON: a non-finite number (never expected: divergence stops the run) is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _report(config, name, backend, history, device, out: Path, about: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    about = about or {}
    # The global throughput over every epoch: all workers' images per second of training.
    rates = [r["images_per_s"] for r in history
             if isinstance(r.get("images_per_s"), (int, float)) and math.isfinite(r["images_per_s"])
             and r["images_per_s"] > 0]
    throughput = len(rates) / sum(1.0 / r for r in rates) if rates else None
    return _finite({"name": name, "backend": backend, "device": device, "config": asdict(config),
                    "workers": config.workers, "engine": about.get("engine"), "images_per_s": throughput,
                    "epochs": history, "final": history[-1] if history else None, "steps": about.get("steps", []),
                    "out": str(out),
                    "checkpoint": str(out / "checkpoint.safetensors"), "metrics": str(out / "metrics.json"),
                    "plot": str(out / "curves.png")})


def _plot(history: list[dict[str, Any]], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are optional; metrics.json has the numbers
        return
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train loss")
    ax.plot(epochs, [r["val_loss"] for r in history], marker="o", label="val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    acc = ax.twinx()
    acc.plot(epochs, [r["val_accuracy"] for r in history], marker="s", color="tab:green", label="val acc")
    acc.set_ylabel("accuracy")
    acc.set_ylim(0, 1)
    lines = ax.get_legend_handles_labels()[0] + acc.get_legend_handles_labels()[0]
    ax.legend(lines, [ln.get_label() for ln in lines], loc="center right")
    ax.set_title(title)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100), suffix=".png")
    finally:
        plt.close(fig)
