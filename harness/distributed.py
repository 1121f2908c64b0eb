"""Many processes, one run: DDP training and sharded evaluation under torchrun.

harness has no launcher of its own. ``torchrun --nproc-per-node N -m harness run ...`` (one node),
``torchrun --nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT ...`` (several) or
``srun torchrun ...`` (Slurm) starts the processes and sets RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT; ``session()`` joins them into one process group
(``init_process_group`` from that environment) for the duration of a command and leaves it after.
Everything here is a no-op in one process: ``world()`` is rank 0 of 1, every batch is this
process's, every reduction returns its input unchanged. A run without torchrun (or with one
process) takes exactly the code path, and gives exactly the numbers, it did before this module.

What a rank gets
- Its device (``place``): cuda:LOCAL_RANK when the run's device resolves to CUDA (collectives of
  device tensors over NCCL), else the CPU (over gloo). The process group carries both backends
  (``cpu:gloo,cuda:nccl``), so small reductions of CPU numbers and gathers of device tensors each
  take their own path. MPS and an explicit ``cuda:K`` are refused in one line.
- Its threads (``default_threads``): the cores this process may use / LOCAL_WORLD_SIZE, unless the
  config sets ``threads`` (torchrun's OMP_NUM_THREADS=1 is overridden either way).

The rules the application keeps with it
- Rank 0 alone writes the run directory (``World.is_writer``; ``on_writer`` runs a step there and
  hands its result, or its error, to every rank). The one exception is the end status of a run
  that dies: whichever rank learns of it writes "interrupted" or "failed" (``harness.pipeline``).
- Training data (``rank_batches``): every rank draws the same permutation from the run's data
  generator and takes a disjoint part of each global batch; the gradient all-reduce weights each
  part by its share of the global batch (``Replica``), so an update is the global batch's.
- Evaluation data (``BatchShard``): the one-process batches, dealt round robin (rank r takes
  batches r, r+N, ...), then gathered back in order; every batch holds the points, and meets the
  generator state, it would in one process.
- Counts (``sum_counts``, ``merge_passes``) are summed over ranks, so every figure (accuracy,
  passes per example) is the one a single process doing all the work would report.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import inspect
import logging
import os
import platform
import signal
import socket
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Mapping, Optional, Tuple, TypeVar, Union

import torch
import torch.distributed as dist
from torch import nn

from harness.core.errors import ConfigError, HarnessError

log = logging.getLogger("harness.distributed")

TIMEOUT_ENV = "HARNESS_DIST_TIMEOUT_MIN"
# Rank 0 runs the sanity checks alone while the others wait in a collective; the standard suite's
# checks on a large model take many minutes, and a dead rank ends the run through torchrun (which
# stops every worker) rather than through this timeout.
DEFAULT_TIMEOUT_MIN = 120.0

T = TypeVar("T")
Number = Union[int, float]


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes the run directory, prints results and shows progress."""
        return self.rank == 0


SINGLE = World()


def world() -> World:
    """The current process group as a ``World``; rank 0 of 1 when none (or one of size 1) is joined.
    A group joined by the caller (``init_process_group`` in their own script) counts too; without
    LOCAL_RANK / LOCAL_WORLD_SIZE in the environment all ranks are taken to share one node."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    size = dist.get_world_size()
    if size < 2:
        return SINGLE
    rank = dist.get_rank()
    return World(
        rank=rank,
        size=size,
        local_rank=int(os.environ.get("LOCAL_RANK", rank)),
        local_size=int(os.environ.get("LOCAL_WORLD_SIZE", size)),
    )


def launched() -> bool:
    """Started by torchrun (or anything that sets its environment) with more than one process."""
    try:
        return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def backend() -> str:
    """gloo for CPU tensors always; NCCL for CUDA tensors where torch has it."""
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def timeout() -> datetime.timedelta:
    """How long a collective may wait: ``HARNESS_DIST_TIMEOUT_MIN`` minutes (default 120)."""
    raw = os.environ.get(TIMEOUT_ENV)
    try:
        minutes = DEFAULT_TIMEOUT_MIN if raw is None else float(raw)
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: expected a number of minutes > 0")
    return datetime.timedelta(minutes=minutes)


@contextlib.contextmanager
def session(group: Optional[Mapping[str, Any]] = None) -> Iterator[World]:
    """Join torchrun's process group for the duration and leave it after. A no-op in one process
    and when the caller already joined a group (theirs is used, and left to them).

    ``group`` (from ``child_group``): instead, join the group that the child processes of a
    run's ranks form among themselves (``harness audit`` evaluates in a child process, outside
    torchrun's group), through a store rank 0's child hosts. Such a child also dies with its
    parent (Linux), so a torchrun that stops the ranks never leaves their children waiting in a
    collective.

    A clean exit waits for every rank (a barrier) before it leaves the group. Without it, a rank
    whose DDP wrapper was still alive at interpreter exit (its reducer holds the gloo group past
    ``destroy_process_group``), while a peer still worked after the last collective, could die of
    SIGABRT ("terminate called without an active exception"; torch 2.14.1), and torchrun reports
    the run as failed. Measured on two-process runs of ``tests/distributed_worker.py ddp-attack``
    (rank 0 writes its report after the last collective): 5 of 40 aborted; 0 of 40 with the
    barrier; 0 of 40 with the wrapper freed before leaving instead. An exception, and a command
    that returned a failing status (``harness.cli``), leave without waiting: the peers may never
    arrive."""
    own = dist.is_available() and not dist.is_initialized() and (group is not None or launched())
    if own:
        if torch.cuda.is_available():
            local = int(group["local_rank"]) if group is not None else int(os.environ.get("LOCAL_RANK", "0"))
            if local < torch.cuda.device_count():
                torch.cuda.set_device(local)  # NCCL's collectives run on the current device
        if group is None:
            dist.init_process_group(backend=backend(), timeout=timeout())
        else:
            _die_with_parent()
            rank, size = int(group["rank"]), int(group["size"])
            store = dist.TCPStore(str(group["host"]), int(group["port"]), size, is_master=rank == 0, timeout=timeout())
            dist.init_process_group(backend=backend(), store=store, rank=rank, world_size=size, timeout=timeout())
        w = world()
        log.info("rank %d of %d (local %d of %d), backend %s", w.rank, w.size, w.local_rank, w.local_size, backend())
    try:
        yield world()
    except BaseException:
        if own and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - a peer may be gone already; leaving must not mask the real end
                pass
        raise
    if own and dist.is_initialized():
        try:
            dist.barrier()  # raises where a peer died: then this run did not finish either
        finally:
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - as above
                pass


def child_group() -> Optional[Dict[str, Any]]:
    """Where the child processes of this run's ranks meet to form a group of their own
    (``session(group)``): a free port on rank 0's host, and this rank's place. None in one
    process. Collective."""
    w = world()
    if not w.distributed:
        return None
    where = None
    if w.is_writer:
        with socket.socket() as s:
            s.bind(("", 0))
            where = (socket.getfqdn(), s.getsockname()[1])
    host, port = broadcast_object(where)
    return {
        "host": host,
        "port": port,
        "rank": w.rank,
        "size": w.size,
        "local_rank": w.local_rank,
        "local_size": w.local_size,
    }


def _die_with_parent() -> None:
    """Ask Linux for SIGKILL when the parent process ends (elsewhere: nothing)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


# -- what a rank runs on ----------------------------------------------------------------------------


def place(device: torch.device) -> torch.device:
    """This rank's device for a run on ``device``: cuda:LOCAL_RANK for CUDA, the CPU for the CPU;
    ``device`` itself in one process."""
    w = world()
    if not w.distributed or device.type == "cpu":
        return device
    if device.type == "cuda":
        if device.index is not None:
            raise ConfigError(
                f"--device {device}: under torchrun each process takes cuda:LOCAL_RANK; use --device cuda "
                "(or auto), or CUDA_VISIBLE_DEVICES to choose the GPUs"
            )
        count = torch.cuda.device_count()
        if w.local_rank >= count:
            raise ConfigError(
                f"LOCAL_RANK {w.local_rank} but {count} CUDA device(s) visible on this node: run one process per "
                f"GPU (--nproc-per-node {count} or fewer)"
            )
        dev = torch.device("cuda", w.local_rank)
        torch.cuda.set_device(dev)
        return dev
    raise ConfigError(
        f"--device {device}: a run under torchrun needs CUDA (one GPU per process, NCCL) or the CPU (gloo)"
    )


def default_threads() -> Optional[int]:
    """CPU threads per rank when the config sets none: the cores this process may use, divided
    among the ranks of its node. None in one process (torch's own default stands)."""
    w = world()
    if not w.distributed:
        return None
    try:
        cores = len(os.sched_getaffinity(0))  # what Slurm / taskset leave us, not the whole machine
    except AttributeError:  # pragma: no cover - not on macOS / Windows
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, w.local_size))


def describe() -> Optional[Dict[str, Any]]:
    """The world for env.json (None in one process). Collective: every rank must call it."""
    w = world()
    if not w.distributed:
        return None
    mine = {"rank": w.rank, "local_rank": w.local_rank, "host": platform.node(), "pid": os.getpid()}
    return {
        "world_size": w.size,
        "local_world_size": w.local_size,
        "backend": str(dist.get_backend()),
        "launcher": "torchrun" if launched() else "a process group joined by the caller",
        "ranks": all_gather_object(mine),
    }


# -- collectives (identity in one process) ----------------------------------------------------------


def barrier() -> None:
    if world().distributed:
        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (pickled; for small things: states, paths, documents)."""
    if not world().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: T) -> List[T]:
    """Every rank's ``obj``, in rank order (pickled; for small things)."""
    w = world()
    if not w.distributed:
        return [obj]
    out: List[Any] = [None] * w.size
    dist.all_gather_object(out, obj)
    return out


def on_writer(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 alone, its result handed to every rank. An error there is raised on
    every rank (elsewhere as a ``HarnessError`` with the same message), so no rank waits for a
    writer that failed."""
    w = world()
    if not w.distributed:
        return fn()
    result: Any = None
    error: Optional[BaseException] = None
    if w.is_writer:
        try:
            result = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the other ranks, then raised here
            error = e
    sent = broadcast_object((result, None if error is None else str(error) or type(error).__name__))
    if error is not None:
        raise error
    if sent[1] is not None:
        raise HarnessError(sent[1])
    return sent[0]


def hold_on_writer(stack: contextlib.ExitStack, take: Callable[[], ContextManager[Any]]) -> None:
    """``take()`` (a lock: ``RunDir.lock``) entered on rank 0 alone and held until ``stack``
    closes; its refusal (``RunInUse``) is raised on every rank, so no rank goes on without it.
    Under torchrun the run's folder is owned by rank 0 itself, not by torchrun's agent: ranks
    orphaned by a killed agent keep the folder until rank 0 ends."""

    def enter() -> None:
        stack.enter_context(take())

    on_writer(enter)


def sum_counts(counts: Mapping[str, Any]) -> Dict[str, Any]:
    """Each value (a number or a one-element tensor) summed over ranks, in float64; ints come back
    as ints. In one process: the input, values untouched."""
    if not world().distributed:
        return dict(counts)
    keys = list(counts)  # every rank builds the same mapping, so the same order
    t = torch.tensor([float(counts[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: int(round(v)) if isinstance(counts[k], int) else v for k, v in zip(keys, t.tolist())}


def merge_passes(counter: Any, since: Mapping[str, int]) -> None:
    """Add the other ranks' forward / backward passes since ``since`` to ``counter`` (an
    ``attacks.base.PassCounter``): afterwards it reads what one process doing all the work would
    have counted. Collective; a no-op in one process."""
    if not world().distributed:
        return
    mine = counter.since(since)
    total = sum_counts(mine)
    counter.forward += total["forward"] - mine["forward"]
    counter.backward += total["backward"] - mine["backward"]


def broadcast_module(model: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (in place). After an epoch this makes the
    BatchNorm running statistics rank 0's (each rank kept its own, from its own shards), so every
    rank validates exactly the weights rank 0 saves."""
    if not world().distributed:
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


# -- training: data shards and the replica -----------------------------------------------------------


def per_rank_batch(batch_size: int) -> int:
    """The per-rank batch that keeps the recipe's global batch: ``batch_size`` / N, which must divide."""
    w = world()
    if batch_size % w.size:
        raise ConfigError(
            f"train.batch_size {batch_size} does not divide among {w.size} processes; the recipe's global batch "
            f"is kept (each process takes batch_size / {w.size}), so choose a multiple of {w.size}"
        )
    return batch_size // w.size


def global_steps(n: int, batch_size: int) -> int:
    """Optimizer steps per epoch over ``n`` examples in global batches of ``batch_size``: one per
    batch, the last partial one included (as in one process), except that under torchrun a final
    partial batch with fewer examples than processes is skipped (a process would get none)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= max(1, world().size) else 0)


Batch = Tuple[torch.Tensor, torch.Tensor]


def rank_batches(
    split: Any, batch_size: int, *, generator: torch.Generator
) -> Iterator[Tuple[torch.Tensor, torch.Tensor, float, Batch]]:
    """This rank's part of every global batch of one epoch, as (x in [0,1], y, share, whole).

    Invariant: every rank draws from ``generator`` (the run's data generator) exactly what
    ``Split.batches`` draws in one process: one ``randperm`` per epoch, then, where the split is
    augmented, each global batch's crop offsets and flips; global batch k is ``order[k*B:(k+1)*B]``
    augmented as in one process (every rank augments the whole batch, so the draws and the images
    are the one-process ones), and rank r takes the r-th of N consecutive, disjoint parts of it
    (B/N each; ``per_rank_batch`` checks that N divides B). So the union of the ranks' batches at
    step k is the one-process batch k. A final partial batch of B' examples is split into N
    consecutive parts whose sizes differ by at most one (``tensor_split``), and skipped when
    B' < N (see ``global_steps``). ``share`` is this part's size / the global batch's: the weight
    of its gradient in the all-reduce (``Replica``), so the reduced gradient is the global batch's
    mean gradient even when the parts differ in size. ``whole`` is the global batch (x, y) itself."""
    w = world()
    n = len(split)
    augment = getattr(split, "augment", None)
    order = torch.randperm(n, generator=generator).to(split.y.device)
    for start in range(0, n, batch_size):
        batch = order[start : start + batch_size]
        x = split.images(batch)
        if augment is not None:
            x = augment(x, generator)
        if batch.numel() < w.size:
            break  # after its draws: the generator stays where one process leaves it
        y = split.y[batch]
        part = torch.tensor_split(torch.arange(batch.numel(), device=batch.device), w.size)[w.rank]
        yield x[part], y[part], part.numel() / batch.numel(), (x, y)


def _weighted_allreduce(replica, bucket):  # type: ignore[no-untyped-def]
    """DDP's all-reduce with each rank's gradients weighted by its share of the global batch
    (DDP's default divides by N, the same when the shares are equal). Unannotated on purpose:
    DDP checks a hook's annotations against its own classes, and this module's are strings."""
    buf = bucket.buffer()
    buf.mul_(replica.share)
    fut = dist.all_reduce(buf, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


class Replica:
    """This rank's model under DistributedDataParallel, for the defense's training step.

    The defense gets the DDP wrapper: its update forward / backward all-reduce the gradients (in
    ``bucket`` order, weighted by ``share``), and its training attack runs against the same
    wrapper, i.e. against the current replica, which holds the weights every rank holds. Attacks
    take input gradients only (``torch.autograd.grad`` w.r.t. the input), which run no
    parameter's gradient accumulator, so DDP's reducer hooks never fire during an attack and
    nothing is reduced (tested). BatchNorm is per rank (statistics of the rank's part of the
    batch; ``broadcast_buffers=False``, running statistics made rank 0's at the end of an epoch by
    ``broadcast_module``) unless ``sync_bn`` converts it to SyncBatchNorm (statistics over the
    global batch; CUDA only, as torch's SyncBatchNorm is). ``module`` is the bare model: the
    optimizer, the checkpoints and validation use it."""

    def __init__(self, model: nn.Module, *, device: torch.device):
        self.module = model
        self.share = 1.0 / world().size
        ids = [device.index] if device.type == "cuda" else None
        self.ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids, **_no_buffer_sync())
        self.ddp.register_comm_hook(self, _weighted_allreduce)


def _no_buffer_sync() -> Dict[str, bool]:
    """DDP's option for "do not broadcast buffers before every forward" (the initial sync stays):
    ``forward_sync_buffers`` in newer torch, ``broadcast_buffers`` before it."""
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with SyncBatchNorm in place of BatchNorm (before the optimizer and DDP see it)."""
    if device.type != "cuda":
        raise ConfigError(
            "train.sync_bn (--sync-bn) needs CUDA: torch's SyncBatchNorm works on GPU modules only; on the CPU "
            "BatchNorm stays per process"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


# -- evaluation: the one-process batches, dealt to ranks ----------------------------------------------


class BatchShard:
    """``n`` rows in batches of ``batch_size`` (the one-process batching), dealt to the ranks.

    ``dealt=True``: batch k goes to rank k mod N, so the ranks share the work and each batch holds
    exactly the rows it holds in one process (and an attack that seeds itself per batch, like
    AutoAttack's components, gives the same per-row outcome). ``dealt=False``: rank 0 takes every
    batch (for work whose batches depend on each other's outcomes). ``rows(r)`` are rank r's rows
    in batch order; ``gather`` puts every rank's results for its rows back in row order, on every
    rank. In one process: one rank, every batch, ``gather`` returns its input."""

    def __init__(self, n: int, batch_size: int, *, dealt: bool = True):
        self.world = world()
        self.n, self.batch_size = int(n), max(1, int(batch_size))
        self.num_batches = -(-self.n // self.batch_size)
        self.dealt = dealt

    def owner(self, k: int) -> int:
        return k % self.world.size if self.dealt else 0

    def owns(self, k: int) -> bool:
        return self.owner(k) == self.world.rank

    def batches(self) -> List[Tuple[int, slice]]:
        return [
            (k, slice(k * self.batch_size, min((k + 1) * self.batch_size, self.n))) for k in range(self.num_batches)
        ]

    def rows(self, rank: Optional[int] = None) -> torch.Tensor:
        r = self.world.rank if rank is None else rank
        parts = [torch.arange(s.start, s.stop) for k, s in self.batches() if self.owner(k) == r]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def take(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's rows of ``t`` (all of ``t`` itself in one process)."""
        if not self.world.distributed:
            return t
        return t[self.rows().to(t.device)]

    def gather(self, part: Optional[torch.Tensor], device: torch.device) -> Optional[torch.Tensor]:
        """Every rank's ``part`` (its rows, in ``rows()`` order, any trailing shape) assembled into
        one tensor of ``n`` rows in row order, on every rank. None when no rank has a part.
        Collective (the trailing shape and dtype are agreed first: a rank with no rows sends none)."""
        if not self.world.distributed:
            return part
        meta = all_gather_object(
            None if part is None else (tuple(part.shape[1:]), str(part.dtype).replace("torch.", ""))
        )
        known = [m for m in meta if m is not None]
        if not known:
            return None
        tail, dtype_name = known[0]
        dtype = getattr(torch, dtype_name)
        wire = torch.uint8 if dtype == torch.bool else dtype  # gloo has no bool
        counts = [int(self.rows(r).numel()) for r in range(self.world.size)]
        local = part if part is not None else torch.zeros((0, *tail), dtype=dtype, device=device)
        if local.shape[0] != counts[self.world.rank]:
            raise RuntimeError(f"rank {self.world.rank} gathers {local.shape[0]} rows, owns {counts[self.world.rank]}")
        padded = torch.zeros((max(counts), *tail), dtype=wire, device=device)
        padded[: local.shape[0]] = local.to(device=device, dtype=wire)
        received = [torch.empty_like(padded) for _ in range(self.world.size)]
        dist.all_gather(received, padded)
        out = torch.empty((self.n, *tail), dtype=dtype, device=device)
        for r, got in enumerate(received):
            out[self.rows(r).to(device)] = got[: counts[r]].to(dtype)
        return out
