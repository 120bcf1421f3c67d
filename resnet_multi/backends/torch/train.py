"""One training step in PyTorch: mean softmax cross-entropy, torch.optim.SGD.

The textbook loop, written once:

    optimizer.zero_grad(set_to_none=True)
    with autocast:                       # only for bf16 / fp16
        loss = F.cross_entropy(model(x), labels)
    loss.backward()
    optimizer.step()

The model is in train mode during the step, so BN normalises with batch
statistics and updates its running ones by the spec's convention (the model's
BN layers already follow spec.bn). SGD is torch.optim.SGD itself: weight decay
is added to the gradient, then the momentum buffer b = momentum * b + g, then
w -= lr * b (no dampening, no Nesterov). Weight decay applies to every
parameter, BN's and biases included, as plain torch.optim.SGD does.

Mixed precision: torch.autocast runs convs and matmuls in bf16 or fp16 while
the weights, their gradients and the optimizer stay fp32; fp16 also scales
the loss (torch.amp.GradScaler) so small gradients do not flush to zero.
bf16 works on CPU and CUDA, fp16 only on CUDA.

The optimizer state is exchanged under canonical names ('momentum.<name>',
see resnet_multi.backends.common), checked all or nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from resnet_multi.backends.common import (MOMENTUM_PREFIX, check_momentum_state, check_precision, dist_timeout_s,
                                          momentum_shapes)
from resnet_multi.errors import PrecisionUnavailable, UserError, WorkerFailed
from resnet_multi.weights.canonical import WeightsError

from .model import FRAMEWORK
from .weights import from_numpy, parameters, to_numpy

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def train_memory_format(device: torch.device) -> torch.memory_format:
    """The layout a training step runs fastest in, measured: channels_last on CUDA (cuDNN's NHWC
    kernels); on CPU plain NCHW (oneDNN's channels_last BN backward made a ResNet-50 step about
    4x slower here, docs/benchmarks.md)."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device` (None: plain fp32), or PrecisionUnavailable."""
    check_precision(precision, PRECISIONS, FRAMEWORK)
    if precision == "fp16" and device.type != "cuda":
        raise PrecisionUnavailable("precision 'fp16' needs a CUDA GPU in the torch backend; "
                                   "on CPU use 'bf16' or 'fp32'")
    return PRECISIONS[precision]


class TrainStep:
    """step(x, labels) -> loss before the update; the model and the optimizer change in place."""

    def __init__(self, model: torch.nn.Module, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 precision: str = "fp32"):
        self.model = model
        self.device = next(model.parameters()).device
        self.precision = precision
        self.dtype = autocast_dtype(precision, self.device)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        # fp16 scales the loss so that small gradients survive; bf16 has fp32's exponent range and needs none.
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == "fp16" else None
        # What runs the forward pass: the model itself, or a torch.compile'd wrapper of it (bench).
        self.forward = model
        self.memory_format = train_memory_format(self.device)
        model.to(memory_format=self.memory_format)  # once: no per-step re-layout of the weights

    def run(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One step on tensors already on the device; returns the loss as a device tensor (no host sync)."""
        was_training = self.model.training
        self.model.train()  # batch statistics; running statistics updated by the spec's convention
        try:
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                logits = self.forward(x)
            loss = F.cross_entropy(logits.float(), labels)  # mean over the batch, in fp32
            if self.scaler is None:
                loss.backward()
                self.optimizer.step()
            else:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
        finally:
            self.model.train(was_training)
        return loss.detach()

    def __call__(self, x, labels) -> float:
        """x: float32 NCHW numpy, labels: int64 (N,) numpy -> the mean cross-entropy before the update."""
        x = from_numpy(x).to(self.device).contiguous(memory_format=self.memory_format)
        labels = torch.as_tensor(np.asarray(labels, dtype=np.int64)).to(self.device)
        return float(self.run(x, labels))


# -- optimizer state with canonical names -------------------------------------------------


def optimizer_state(step: TrainStep) -> dict[str, np.ndarray]:
    """'momentum.<canonical name>' -> float32 numpy momentum buffer.

    Empty with momentum 0 (SGD keeps no buffers) or before the first step
    (torch creates each buffer on the first step as a copy of the gradient,
    which is what a zero buffer gives too).
    """
    out = {}
    for name, param in parameters(step.model).items():
        buf = step.optimizer.state.get(param, {}).get("momentum_buffer")
        if buf is not None:
            out[MOMENTUM_PREFIX + name] = to_numpy(buf)
    return out


def load_optimizer_state(step: TrainStep, state: Mapping[str, np.ndarray]) -> None:
    """Set the momentum buffers from optimizer_state()'s dict: all or nothing.

    An empty dict clears the buffers (a fresh optimizer); otherwise every
    trainable parameter needs its buffer, with the parameter's shape.
    """
    params = parameters(step.model)
    want = momentum_shapes(step.model.spec)
    if set(want) != {MOMENTUM_PREFIX + k for k in params}:  # the model disagrees with its spec: a bug here
        raise WeightsError(f"torch model of {step.model.spec.name} has parameters outside its spec")
    check_momentum_state(step.model.spec, state, step.optimizer.defaults["momentum"])
    with torch.no_grad():
        for name, param in params.items():
            if not state:
                step.optimizer.state.pop(param, None)
                continue
            buf = from_numpy(state[MOMENTUM_PREFIX + name])
            step.optimizer.state[param]["momentum_buffer"] = buf.to(param.device).clone()


# -- data parallel: torch.distributed, DistributedDataParallel, SyncBatchNorm -------------------------------------


class SyncBatchNorm(nn.BatchNorm2d):
    """BN over the global batch on CPU (gloo) too, with the spec's running-variance convention.

    torch's nn.SyncBatchNorm runs on CUDA only (and DDP refuses it on CPU modules); convert_sync_batchnorm
    uses it there for the unbiased (torch) convention. Here the statistics of the global batch come from
    torch.distributed's differentiable all_reduce: the mean, then the mean squared deviation from it (two
    passes, as the single-process layer), so the gradient reaches every worker's slice as in one process.
    """

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats, device=bn.running_mean.device)
        self.biased_running_var = bool(getattr(bn, "biased_running_var", False))
        self.load_state_dict(bn.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:  # inference: the running statistics
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        if not dist.is_initialized() or dist.get_world_size() < 2:
            return self.local(x)
        n = float(x.numel() // x.shape[1] * dist.get_world_size())  # the workers' slices are the same size
        dims = (0, 2, 3)
        mean = all_reduce_sum(x.sum(dims)) / n
        centered = x - mean[None, :, None, None]
        var = all_reduce_sum((centered * centered).sum(dims)) / n
        self.update_running(mean, var, n)
        y = centered * torch.rsqrt(var + self.eps)[None, :, None, None]
        return y if self.weight is None else y * self.weight[None, :, None, None] + self.bias[None, :, None, None]

    def local(self, x: torch.Tensor) -> torch.Tensor:
        """One process's BN in training (no other worker): batch statistics, the running update by the spec."""
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        self.update_running(mean, var, x.numel() // x.shape[1])
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)

    def update_running(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        with torch.no_grad():
            unbiased = var if self.biased_running_var else var * (n / max(n - 1.0, 1.0))
            self.running_mean.lerp_(mean.detach(), self.momentum)  # (1 - m) * running + m * batch
            self.running_var.lerp_(unbiased.detach(), self.momentum)
            self.num_batches_tracked.add_(1)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum over the workers, differentiable (its backward all-reduces the gradient): torch's functional
    collectives, which torch.distributed.nn.functional's deprecation names."""
    import torch.distributed._functional_collectives as funcol

    return funcol.all_reduce(x, "sum", dist.group.WORLD)


def convert_sync_batchnorm(module: nn.Module, cuda: bool) -> nn.Module:
    """Every BatchNorm2d of the module replaced in place by a synchronized one, names and state kept:
    torch's nn.SyncBatchNorm on CUDA for torch's own BN, SyncBatchNorm above otherwise."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d) and cuda and not getattr(child, "biased_running_var", False):
            module.add_module(name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        elif isinstance(child, nn.BatchNorm2d):
            module.add_module(name, SyncBatchNorm(child))
        else:
            convert_sync_batchnorm(child, cuda)
    return module


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(index: int, fn, args: tuple, workers: int, port: int, errors: str) -> None:
    """One spawned worker process: torchrun's environment, then fn(*args); a UserError goes back in one line
    (a file in the launcher's folder ``errors``)."""
    os.environ.update(RANK=str(index), LOCAL_RANK=str(index), WORLD_SIZE=str(workers),
                      LOCAL_WORLD_SIZE=str(workers), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        fn(*args)
    except UserError as exc:
        Path(errors, f"worker-{index}.txt").write_text(str(exc))
        sys.exit(2)


class DataParallel:
    """torch.distributed with DistributedDataParallel: one process per worker (gloo on CPU, NCCL on CUDA).

    Started by torchrun (its RANK/WORLD_SIZE/MASTER_ADDR environment: this process is one worker) or, on
    one machine, by ``launch`` (torch.multiprocessing, the same environment). Set-up and every collective
    time out after training.parallel's timeout (RESNET_MULTI_DIST_TIMEOUT); a worker that dies ends the run.
    """

    def __init__(self, workers: int, sync_bn: bool = False, device: str = "auto"):
        from resnet_multi.backends.common import parallel_device_kind

        self.workers, self.sync_bn, self.processes = int(workers), bool(sync_bn), int(workers)
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        self.kind = parallel_device_kind(device, count, f"torch {torch.__version__}")
        world = os.environ.get("WORLD_SIZE")
        self.launcher = world is None
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if world is not None and int(world) != self.workers:
            raise UserError(f"the launcher started {world} worker processes (WORLD_SIZE) but workers is "
                            f"{self.workers}: pass --workers {world}")
        if self.kind == "gpu" and self.local_rank >= count:
            raise UserError(f"worker {self.rank} needs GPU {self.local_rank}, but torch sees {count} GPU(s)")
        self.device = f"cuda:{self.local_rank}" if self.kind == "gpu" else "cpu"
        backend = "nccl" if self.kind == "gpu" else "gloo"
        self.name = (f"torch.distributed DistributedDataParallel ({backend}, {self.workers} processes"
                     f"{', SyncBatchNorm' if self.sync_bn else ''})")
        if self.launcher:
            return
        if self.kind == "gpu":
            torch.cuda.set_device(self.local_rank)
        elif "OMP_NUM_THREADS" not in os.environ:  # the workers share the machine's cores, as torchrun's default
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", workers))))
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=dist_timeout_s()))
        except (RuntimeError, ValueError) as exc:  # a worker that never came, a port in use, a bad address
            raise WorkerFailed(f"worker {self.rank} of {self.workers}: torch.distributed set-up failed "
                               f"({first_line(exc)})") from None

    # -- launching on one machine ---------------------------------------------------------

    def launch(self, fn, args: tuple) -> None:
        """Start the workers (torch.multiprocessing, spawn) and wait for them; a dead one stops them all."""
        import torch.multiprocessing as mp
        from torch.multiprocessing.spawn import ProcessException

        quiet = logging.getLogger("torch.multiprocessing.spawn")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # its warnings about terminating the others would make the error lines
        with tempfile.TemporaryDirectory(prefix="resnet-multi-workers-") as errors:
            context = mp.start_processes(run_worker, args=(fn, args, self.workers, free_port(), errors),
                                         nprocs=self.workers, join=False, start_method="spawn")
            try:
                while not context.join(grace_period=5):
                    pass
            except ProcessException as exc:
                messages = sorted(Path(errors).glob("worker-*.txt"))
                if messages:  # a UserError in a worker (usually every worker raises the same one): its line
                    raise UserError(messages[0].read_text()) from None
                raise WorkerFailed(describe_failure(exc, context.processes, self.workers)) from None
            finally:
                quiet.setLevel(level)

    # -- one worker -----------------------------------------------------------------------

    def build(self, spec, device: str = "auto", seed: int = 0, state=None):
        """The model on this worker's device (the same seeded init on every worker); SyncBatchNorm with sync_bn."""
        from .model import build

        model = build(spec, device=self.device, seed=seed, state=state)
        return convert_sync_batchnorm(model, self.kind == "gpu") if self.sync_bn else model

    def make_train_step(self, model, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                        precision: str = "fp32") -> "DistributedStep":
        return DistributedStep(model, self, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               precision=precision)

    def gather(self, step) -> None:
        """Nothing to do: every worker's model is the trained one (DDP keeps them equal)."""

    def replica_spread(self, step) -> float:
        """The largest difference of any trainable weight between this worker and the others (all_gather)."""
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1).float() for p in step.model.parameters()])
            every = [torch.empty_like(flat) for _ in range(self.workers)]
            dist.all_gather(every, flat)
            return max(float((w - every[0]).abs().max()) for w in every)

    def close(self) -> None:
        if not self.launcher and dist.is_initialized():
            dist.destroy_process_group()


class DistributedStep(TrainStep):
    """TrainStep whose forward pass is DistributedDataParallel: gradients averaged over the workers.

    step(x, labels) takes this worker's slice of the global batch and returns the global batch's mean loss
    (the workers' means averaged: their slices are the same size).
    """

    def __init__(self, model: torch.nn.Module, engine: DataParallel, **kwargs):
        super().__init__(model, **kwargs)
        self.engine = engine
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.forward = DistributedDataParallel(model, device_ids=ids)  # broadcasts worker 0's state

    def __call__(self, x, labels) -> float:
        x = from_numpy(x).to(self.device)
        labels = torch.as_tensor(np.asarray(labels, dtype=np.int64)).to(self.device)
        loss = self.run(x, labels).float().reshape(1)
        dist.all_reduce(loss)
        return float(loss) / self.engine.workers


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def describe_failure(exc, processes, workers: int) -> str:
    """One line naming the worker that stopped first: killed by a signal, exited, or its error."""
    import signal

    from torch.multiprocessing.spawn import ProcessRaisedException

    index = exc.error_index
    # A worker killed by a signal takes the others' collectives down with it: name the killed one.
    for i, process in enumerate(processes):
        code = process.exitcode
        if code is not None and code < 0 and code != -signal.SIGTERM and i != index:
            index = i
            break
    code = processes[index].exitcode
    if code is not None and code < 0:
        try:
            how = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"killed by signal {-code}"
    elif isinstance(exc, ProcessRaisedException):
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        how = f"failed: {lines[-1][:300] if lines else 'an error'}"
    else:
        how = f"exited with code {code}"
    return (f"worker {index} of {workers} {how}; the run stopped (the last checkpoint stays: continue with "
            f"--resume)")
