"""Data-parallel training: what ``--workers N`` and ``--sync-bn`` mean, written once for the four engines.

The semantics every backend follows (docs/distributed.md):

- **The global batch is split evenly.** ``--batch-size`` is the global batch;
  each of the N workers takes ``batch_size / N`` images of it (not divisible:
  a one-line error before anything is loaded). The last, smaller batch of an
  epoch is split the same way; its images beyond a multiple of N (at most
  N - 1 an epoch, none with one worker) are left out of that epoch.
- **The same batches as one process.** The batch order is the single process's
  seeded permutation (``data.batches``); worker k takes the k-th contiguous
  slice of every batch (``worker_slice``): process p of P holds workers
  p * (N / P) ... and hands its part to the engine, which splits it over its
  local devices in the same order.
- **--sync-bn**: BN normalises with the global batch's statistics, so N workers
  compute what one worker computes on the global batch (to float rounding).
  Without it each worker's BN sees only its slice: the gradients are those of
  one process that normalises each slice of the batch on its own ("ghost
  batch norm" with N ghosts); the running statistics are the engine's (see
  docs/distributed.md).
- **Weights identical on every worker** after every step: each engine averages
  the gradients with its own collective (DDP, jax sharding, tf.distribute,
  kvstore), never code of ours; ``check_replicas`` measures it.
- **One worker speaks**: worker 0 writes the checkpoint, metrics.json and the
  plot and shows progress; the others only compute.

Engines that run one process per worker (torch DDP) are launched here through
the backend (``engine.launch``): every process runs ``train`` again as one
worker, and a worker that dies ends the run with one line naming it.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from resnet_multi.errors import UserError, WorkerFailed  # noqa: F401  (WorkerFailed: what a dead worker raises)

def check_workers(workers: Any, batch_size: int, sync_bn: Any) -> None:
    """A one-line UserError for a worker count that is not a positive integer or does not divide the batch."""
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise UserError(f"workers must be a positive integer, got {workers!r}")
    if not isinstance(sync_bn, bool):
        raise UserError(f"sync_bn must be True or False, got {sync_bn!r}")
    if batch_size % workers:
        raise UserError(f"batch size {batch_size} does not split evenly over {workers} workers "
                        f"(the global batch is divided among them): pass a multiple of {workers}")


def usable(batch: np.ndarray, workers: int) -> np.ndarray:
    """The batch cut to a multiple of the workers (only an epoch's last, smaller batch is ever cut)."""
    return batch[:len(batch) - len(batch) % workers]


def worker_slice(batch: np.ndarray, workers: int, worker: int) -> np.ndarray:
    """Worker ``worker``'s contiguous share of a global batch whose length divides by ``workers``."""
    if len(batch) % workers:
        raise ValueError(f"a batch of {len(batch)} does not split over {workers} workers")
    share = len(batch) // workers
    return batch[worker * share:(worker + 1) * share]


def process_share(batch: np.ndarray, workers: int, processes: int, process: int) -> np.ndarray:
    """Process ``process``'s part of the global batch: the slices of its workers, in order."""
    per = workers // processes
    return batch[process * per * (len(batch) // workers):(process + 1) * per * (len(batch) // workers)]


def bn_batch(batch_size: int, workers: int, sync_bn: bool) -> int:
    """How many images each BN statistic is computed over: the global batch, or a worker's slice."""
    return batch_size if sync_bn or workers == 1 else batch_size // workers
