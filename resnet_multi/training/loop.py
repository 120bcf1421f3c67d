"""``resnet-multi train``: the book's training loop for any backend, with checkpoints and resume.

Defaults are the book's: Fashion-MNIST at 96x96, batch 128, SGD lr 0.01, 10
epochs. The same seed gives the same initial weights (the canonical seeded
init) and the same batch order (seeded per epoch) in every backend.

Per epoch the run folder receives, each written atomically:
``checkpoint.safetensors`` (canonical weights + optimizer state, with the
epoch and config in its metadata), ``metrics.json`` and ``curves.png``.
``--resume`` continues after the last complete epoch and gives the same
result as an uninterrupted run; Ctrl-C leaves that checkpoint usable.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from resnet_multi import faces
from resnet_multi.arch.presets import resolve
from resnet_multi.errors import UserError
from resnet_multi.files import atomic_write
from resnet_multi.training import data as datasets
from resnet_multi.weights.canonical import WeightsError, check_state

OPTIMIZER_PREFIX = "optimizer."


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


def cross_entropy_and_accuracy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = float(-log_probs[np.arange(len(labels)), labels].mean())
    return loss, float((logits.argmax(axis=1) == labels).mean())


def save_checkpoint(path: Path, weights: dict[str, np.ndarray], optimizer: dict[str, np.ndarray],
                    meta: dict[str, Any]) -> None:
    from safetensors.numpy import save

    tensors = {**{k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()},
               **{OPTIMIZER_PREFIX + k: np.ascontiguousarray(v, np.float32) for k, v in optimizer.items()}}
    atomic_write(path, save(tensors, metadata={"format": "resnet-multi/checkpoint-1", "meta": json.dumps(meta)}))


def load_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {})["meta"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # truncated or foreign file
        raise WeightsError(f"{path}: not a readable checkpoint ({str(exc).splitlines()[0][:200]})") from None
    weights = {k: v for k, v in tensors.items() if not k.startswith(OPTIMIZER_PREFIX)}
    optimizer = {k[len(OPTIMIZER_PREFIX):]: v for k, v in tensors.items() if k.startswith(OPTIMIZER_PREFIX)}
    return weights, optimizer, meta


class Progress:
    """One line per epoch for logs; a live bar when stderr is a terminal."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.live = enabled and sys.stderr.isatty()

    def step(self, epoch: int, epochs: int, done: int, total: int, loss: float, rate: float) -> None:
        if self.live:
            filled = int(24 * done / total)
            print(f"\repoch {epoch}/{epochs} [{'#' * filled}{'.' * (24 - filled)}] {done}/{total} "
                  f"loss {loss:.4f} {rate:.0f} img/s", end="", file=sys.stderr, flush=True)

    def epoch(self, row: dict[str, Any], epochs: int) -> None:
        if self.enabled:
            print(("\r" if self.live else "") +
                  f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}, val loss "
                  f"{row['val_loss']:.4f}, val acc {row['val_accuracy']:.4f}, {row['images_per_s']:.0f} img/s, "
                  f"{row['seconds']:.1f} s", file=sys.stderr, flush=True)


def _images(x: np.ndarray, channels: int) -> np.ndarray:
    # Grayscale data for a 3-channel net: repeat the channel.
    return x if x.shape[1] == channels else np.repeat(x, channels, axis=1)


def evaluate(face: faces.BackendFace, model, x: np.ndarray, y: np.ndarray, channels: int, batch: int = 256
             ) -> tuple[float, float]:
    logits = np.concatenate([face.forward(model, _images(x[i:i + batch], channels))
                             for i in range(0, len(y), batch)])
    return cross_entropy_and_accuracy(logits, y)


def train(config: TrainConfig, progress: Progress | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    spec = resolve(config.model)
    face = faces.backend(config.backend)
    backend = face.name
    progress = progress or Progress()
    out = Path(config.out or f"runs/{spec.name}-{backend}")
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, metrics_path = out / "checkpoint.safetensors", out / "metrics.json"
    data = datasets.load(config.dataset, config.resize, config.data_dir)
    if spec.num_classes < data.num_classes:
        raise UserError(f"{spec.name} has {spec.num_classes} classes; {data.name} needs {data.num_classes}")

    model = face.build(spec, device=config.device, seed=config.seed)
    step = face.make_train_step(model, lr=config.lr, momentum=config.momentum, precision=config.precision)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if config.resume and ckpt_path.exists():
        weights, optimizer, meta = load_checkpoint(ckpt_path)
        check_state(spec, weights, source=str(ckpt_path))
        saved = {k: meta["config"][k] for k in ("model", "backend", "dataset", "batch_size", "lr", "seed", "resize")}
        wanted = {k: asdict(config)[k] for k in saved}
        if saved != wanted:
            raise UserError(f"{ckpt_path} was written with {saved}, not {wanted}; use another --out")
        face.from_canonical(model, weights)
        face.load_optimizer_state(step, optimizer)
        start_epoch, history = meta["epoch"], meta["history"]
    channels = spec.in_channels
    n = len(data.train_y)
    for epoch in range(start_epoch, config.epochs):
        start = time.perf_counter()
        losses, seen = [], 0
        total = (n + config.batch_size - 1) // config.batch_size
        for i, idx in enumerate(datasets.batches(n, config.batch_size, config.seed, epoch)):
            losses.append(step(_images(data.train_x[idx], channels), data.train_y[idx]))
            seen += len(idx)
            progress.step(epoch + 1, config.epochs, i + 1, total, float(np.mean(losses[-20:])),
                          seen / (time.perf_counter() - start))
        train_seconds = time.perf_counter() - start
        val_loss, val_acc = evaluate(face, model, data.val_x, data.val_y, channels)
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
               "val_accuracy": val_acc, "images_per_s": seen / train_seconds,
               "seconds": time.perf_counter() - start}
        history.append(row)
        meta = {"epoch": epoch + 1, "history": history, "config": asdict(config), "spec": spec.to_dict()}
        save_checkpoint(ckpt_path, face.to_canonical(model), face.optimizer_state(step), meta)
        report = _report(config, spec.name, backend, history, face.device_of(model), out)
        atomic_write(metrics_path, json.dumps(report, indent=2) + "\n")
        _plot(history, out / "curves.png", f"{spec.name} on {backend}, {data.name}")
        progress.epoch(row, config.epochs)
        if on_epoch:
            on_epoch(row)
    return _report(config, spec.name, backend, history, face.device_of(model), out)


def _report(config, name, backend, history, device, out: Path) -> dict[str, Any]:
    return {"name": name, "backend": backend, "device": device, "config": asdict(config), "epochs": history,
            "final": history[-1] if history else None, "out": str(out),
            "checkpoint": str(out / "checkpoint.safetensors"), "metrics": str(out / "metrics.json"),
            "plot": str(out / "curves.png")}


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
