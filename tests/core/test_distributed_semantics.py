"""What --workers and --sync-bn mean, without a framework: the split of the batch, the checks, the resume rule."""

from __future__ import annotations

import numpy as np
import pytest

from resnet_multi.errors import UserError
from resnet_multi.training import parallel
from resnet_multi.training.checkpoints import check_resumable
from resnet_multi.training.loop import TrainConfig, check_config, model_spec


def test_workers_take_contiguous_slices_of_the_single_process_batch():
    batch = np.arange(12)
    assert [parallel.worker_slice(batch, 3, k).tolist() for k in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7],
                                                                               [8, 9, 10, 11]]
    # two processes of two workers each: each process holds its workers' slices, in order
    assert parallel.process_share(batch, 4, 2, 1).tolist() == [6, 7, 8, 9, 10, 11]
    assert parallel.process_share(batch, 2, 1, 0).tolist() == batch.tolist()
    assert parallel.usable(np.arange(7), 2).tolist() == list(range(6))  # the last, smaller batch: cut to 2k
    assert parallel.usable(np.arange(7), 1).tolist() == list(range(7))
    with pytest.raises(ValueError):
        parallel.worker_slice(np.arange(7), 2, 0)


@pytest.mark.parametrize("workers, message", [(3, "does not split evenly over 3 workers"), (0, "positive integer"),
                                              (True, "positive integer"), (2.0, "positive integer")])
def test_workers_are_checked_in_one_line_before_anything(workers, message):
    with pytest.raises(UserError, match=message):
        check_config(TrainConfig(model="d2l_resnet18", backend="torch", batch_size=32, workers=workers))


def test_bn_batch_is_the_global_batch_with_sync_bn_or_one_worker():
    assert parallel.bn_batch(32, 1, False) == parallel.bn_batch(32, 4, True) == 32
    assert parallel.bn_batch(32, 4, False) == 8


def resume(saved: dict, **now):
    config = TrainConfig(model="d2l_resnet18", backend="torch", batch_size=32, epochs=5, **now)
    spec = model_spec(config)
    base = {"backend": "torch", "dataset": "fashion-mnist", "batch_size": 32, "lr": 0.01, "momentum": 0.0,
            "seed": 0, "resize": 96, "precision": "fp32"}
    meta = {"epoch": 1, "history": [{}], "config": {**base, **saved}, "spec": spec.to_dict()}
    check_resumable("ckpt", meta, config, spec, "torch")


def test_resume_may_change_workers_only_where_bn_sees_the_same_batch():
    resume({}, workers=2, sync_bn=True)  # an old checkpoint (one worker) continued on two, synchronized
    resume({"workers": 2, "sync_bn": True}, workers=4, sync_bn=True)
    resume({"workers": 2, "sync_bn": False}, workers=2)
    with pytest.raises(UserError, match="BN statistics over 32 images .now 16"):
        resume({"workers": 1}, workers=2)
    with pytest.raises(UserError, match="BN statistics over None images"):
        resume({"workers": "two"}, workers=2)
