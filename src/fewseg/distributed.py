"""Meta-training and evaluation over several processes with torch.distributed (launched by ``torchrun``).

Every rank draws the *whole* meta-batch from the same seeded sampler (loading images is 1-3% of a meta-step),
so the generators stay in step and an N-rank run sees exactly the tasks a 1-rank run sees; each rank then computes
the meta-gradient of its own contiguous block of tasks only. Task weights are computed over the whole meta-batch (the
losses are summed across ranks first), each rank adds its tasks' weighted gradients into ``.grad``, and one
explicit all-reduce (sum) of the flattened gradients gives every rank the meta-gradient of the whole batch.

Why an explicit all-reduce and not DistributedDataParallel: DDP hooks the backward of one forward call of a
wrapped module, while a meta-step makes several backward passes through functional calls (one per task or chunk,
more with inner-loop recomputation) and Reptile writes its pseudo-gradient into ``.grad`` directly. One
all-reduce of the accumulated gradient after ``meta_backward`` costs the same communication as DDP's buckets,
covers every algorithm (learned rates, MAML++ per-step weights, Reptile deltas alike) and needs no ``no_sync``.

Evaluation shards episodes the same way and gathers each episode's intersection/union sums, which are then added
up in episode order: the same mIoU, FB-IoU and CI as one process, to the bit.

Example:
    >>> from fewseg.distributed import ProcessGroup
    >>> group = ProcessGroup()          # outside torchrun: one process
    >>> group.world, group.rank, list(group.shard(5))
    (1, 0, [0, 1, 2, 3, 4])
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fewseg.errors import TrainingError


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place among ``world`` ranks (1 rank: every collective is the identity)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, progress bars and checkpoints."""
        return self.rank == 0

    def shard(self, n: int) -> range:
        """The indices of ``n`` items (tasks, episodes) this rank handles: a contiguous block, the first
        ``n % world`` ranks one item more."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (self.rank < extra))

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) in place across ranks."""
        if self.world > 1:
            _collective(dist.all_reduce, tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather_objects(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list = [None] * self.world
        _collective(dist.all_gather_object, out, obj)
        return out

    def sum_grads(self, params) -> None:
        """Sum ``.grad`` of ``params`` across ranks with one flat all-reduce (a missing grad counts as zeros)."""
        if self.world == 1:
            return
        params = [p for p in params if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        self.sum_(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p))
            offset += n

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.world > 1:
            self.sum_(torch.zeros(1))

    def all_agree(self, value: bool) -> bool:
        """True only if ``value`` is True on every rank (e.g. a finite loss everywhere)."""
        if self.world == 1:
            return value
        flag = torch.tensor([0.0 if value else 1.0])
        return float(self.sum_(flag)) == 0.0


SINGLE = ProcessGroup()


def _collective(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except RuntimeError as exc:  # a rank died or timed out: say so in one line instead of hanging or a traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(f"lost contact with another rank during {fn.__name__} ({first[:200]}); "
                            "the last checkpoint on disk is intact: resume with --resume") from None


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_process_group(device: torch.device, timeout_s: float = 300.0) -> ProcessGroup:
    """Join the ``torchrun`` job described by the environment (gloo on CPU, NCCL on CUDA), or one process.

    ``timeout_s`` bounds every collective: a rank that dies makes the others stop with a clear error after at
    most this long (torchrun itself usually ends them sooner).
    """
    if not launched_by_torchrun():
        return SINGLE
    if not dist.is_available():
        raise TrainingError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        try:
            if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0:
                dist.init_process_group(backend=backend, timeout=timeout, store=_attempt_store(timeout),
                                        rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))
            else:  # the first attempt: torchrun's own store as it is
                dist.init_process_group(backend=backend, timeout=timeout)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise TrainingError(f"could not join the torchrun job ({backend}): "
                                f"{str(exc).strip().splitlines()[0][:200]}") from None
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return ProcessGroup(rank=dist.get_rank(), world=dist.get_world_size())


def _attempt_store(timeout: datetime.timedelta) -> dist.Store:
    """The job's key-value store, under a prefix of its own for each elastic restart: after ``torchrun
    --max-restarts`` restarts the workers, the new ranks must not read the dead ranks' addresses."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), int(os.environ["WORLD_SIZE"]),
                          is_master=not agent and int(os.environ["RANK"]) == 0, timeout=timeout)
    return dist.PrefixStore(f"fewseg/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def close_process_group() -> None:
    """Leave the job: wait for every rank (none tears its connections down while another still writes or talks),
    then destroy the process group."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        except RuntimeError:  # another rank is already gone: nothing left to wait for
            pass
        dist.destroy_process_group()
