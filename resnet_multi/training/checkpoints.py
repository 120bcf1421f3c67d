"""Training checkpoints: canonical weights and optimizer state in one safetensors file, checked whole.

``checkpoint.safetensors`` holds the weights under their canonical names, the
momentum buffers under ``optimizer.``, and in its metadata the epoch, the
history, the config and the spec; a resume must keep every setting that
changes the numbers (RESUME_MUST_MATCH).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from resnet_multi import faces
from resnet_multi.arch.spec import ResNetSpec, spec_from_dict
from resnet_multi.errors import UserError
from resnet_multi.files import atomic_write
from resnet_multi.training.parallel import bn_batch
from resnet_multi.weights.canonical import WeightsError

OPTIMIZER_PREFIX = "optimizer."
CHECKPOINT_FORMAT = "resnet-multi/checkpoint-1"
# The settings that change the numbers a run computes: a resume must keep the checkpoint's.
# (The model is compared by its whole spec.) epochs, device, data_dir, out and allow_large may change:
# the device changes only the float rounding, data_dir only where the same dataset is read from.
# workers and sync_bn may change when BN's batch stays the same (training/parallel.py: bn_batch): with
# --sync-bn, N workers compute what one does, to float rounding, like another device.
RESUME_MUST_MATCH = ("backend", "dataset", "batch_size", "lr", "momentum", "seed", "resize", "precision")
HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "val_accuracy", "images_per_s", "seconds")




def save_checkpoint(path: Path, weights: dict[str, np.ndarray], optimizer: dict[str, np.ndarray],
                    meta: dict[str, Any]) -> None:
    from safetensors.numpy import save

    tensors = {**{k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()},
               **{OPTIMIZER_PREFIX + k: np.ascontiguousarray(v, np.float32) for k, v in optimizer.items()}}
    atomic_write(path, save(tensors, metadata={"format": CHECKPOINT_FORMAT,
                                               "meta": json.dumps(meta, allow_nan=False)}))


def load_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """Weights, optimizer state and metadata; a WeightsError (one line) for anything but a whole checkpoint."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:  # truncated, foreign or unreadable
        raise WeightsError(f"{path}: not a readable checkpoint ({(str(exc).splitlines() or [''])[0][:200]})"
                           ) from None
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{path}: not a resnet-multi checkpoint (its metadata has no format "
                           f"{CHECKPOINT_FORMAT!r})")
    try:
        meta = json.loads(metadata.get("meta", ""))
    except (ValueError, RecursionError):
        raise WeightsError(f"{path}: the checkpoint's metadata is not valid JSON") from None
    _check_meta(path, meta)
    weights = {k: v for k, v in tensors.items() if not k.startswith(OPTIMIZER_PREFIX)}
    optimizer = {k[len(OPTIMIZER_PREFIX):]: v for k, v in tensors.items() if k.startswith(OPTIMIZER_PREFIX)}
    return weights, optimizer, meta


def _check_meta(path: Path, meta: Any) -> None:
    def bad(what: str) -> WeightsError:
        return WeightsError(f"{path}: incomplete checkpoint: its metadata {what}")

    if not isinstance(meta, dict):
        raise bad("is not an object")
    for key, kind in (("epoch", int), ("history", list), ("config", dict), ("spec", dict)):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise bad(f"lacks its {key}")
    if meta["epoch"] < 1 or len(meta["history"]) != meta["epoch"]:
        raise bad(f"holds {len(meta['history'])} epochs of history for epoch {meta['epoch']}")
    for row in meta["history"]:
        if not isinstance(row, dict) or not all(isinstance(row.get(k), (int, float)) for k in HISTORY_KEYS):
            raise bad("has a history row without " + ", ".join(HISTORY_KEYS))
    missing = [k for k in RESUME_MUST_MATCH if k not in meta["config"]]
    if missing:
        raise bad(f"config lacks {', '.join(missing)}")



def saved_bn_batch(saved: dict[str, Any]) -> int | None:
    """The BN batch of a checkpoint's config (older checkpoints: one worker); None for values that make no sense."""
    workers, sync_bn, batch = saved.get("workers", 1), saved.get("sync_bn", False), saved["batch_size"]
    if not (type(workers) is int and type(batch) is int and workers >= 1 and isinstance(sync_bn, bool)):
        return None
    return bn_batch(batch, workers, sync_bn)


def same_spec(saved: Any, spec: ResNetSpec) -> bool:
    """Whether a checkpoint's spec dict is ``spec``: read back as a spec, so a field added since it was
    written (at its default) is no change."""
    try:
        return spec_from_dict(saved) == spec
    except UserError:  # a spec this version cannot read: a change
        return False


def check_resumable(path: Path, meta: dict[str, Any], config: Any, spec: ResNetSpec, backend: str) -> None:
    """Every setting that changes the numbers must be the checkpoint's: one line naming each that is not.

    ``config`` is the resumed run's TrainConfig (resnet_multi/training/loop.py).
    """
    saved = meta["config"]
    now = {**asdict(config), "backend": backend}
    changed = []
    if not same_spec(meta["spec"], spec):
        changed.append(f"model {meta['spec'].get('name')!r} (now {spec.name!r}"
                       f"{', another spec of that name' if meta['spec'].get('name') == spec.name else ''})")
    for key in RESUME_MUST_MATCH:
        old = saved[key]
        if key == "backend":
            with contextlib.suppress(UserError):
                old = faces.canonical_name(old)
        if old != now[key]:
            changed.append(f"{key} {old!r} (now {now[key]!r})")
    if saved["batch_size"] == now["batch_size"]:  # workers and sync_bn change the numbers through BN's batch
        old_bn, new_bn = saved_bn_batch(saved), bn_batch(config.batch_size, config.workers, config.sync_bn)
        if old_bn != new_bn:
            changed.append(f"BN statistics over {old_bn} images (now {new_bn}: workers {config.workers}, "
                           f"sync_bn {config.sync_bn}; the checkpoint's: workers {saved.get('workers', 1)!r}, "
                           f"sync_bn {saved.get('sync_bn', False)!r})")
    if changed:
        raise UserError(f"{path} was written with other settings: {', '.join(changed)}; resume with the "
                        f"checkpoint's settings, or start a new run with another --out")
    if config.epochs < meta["epoch"]:
        raise UserError(f"{path} already holds {meta['epoch']} epochs, more than epochs={config.epochs}; "
                        f"pass --epochs above {meta['epoch']} to continue")
