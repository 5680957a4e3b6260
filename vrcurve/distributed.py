"""One estimate over several processes and nodes: torch.distributed, launched by torchrun (docs/scaling.md).

Under torchrun (RANK, WORLD_SIZE and LOCAL_RANK in the environment) every rank reads the same seeded sample,
computes the per-source sums of its own contiguous block of sources (so it also draws and projects only their
noise), and the (2, T, M) sums are added over ranks. Each entry is non-zero on exactly one rank, so the sum
is exact whatever the order of the reduction: the curve equals a one-process run's to round-off. Every rank
gets the whole curve; only rank 0 writes the artifact and prints.

Failures: a rank that fails in a local step (reading the data, estimating its share) must not leave the
others waiting in a collective. Every such step ends with an agreement (``Ranks.step``): an all-gather of
each rank's error message, or None. If any rank failed, every rank raises ``RankFailed``; the lowest failing
rank prints its message, in one line, and every other rank exits 1 silently. A collective that waits longer
than ``TIMEOUT`` (a rank killed or stuck) raises instead of hanging.

Agreement: each rank reads its own command line and its own copy of the data. Before any work the ranks
all-gather the options that change the result and the fingerprint of the data they read
(``Ranks.same_everywhere``), and a rank that differs from rank 0 fails the run, naming the option.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import torch

from .devices import local_device
from .errors import VRCurveError

# How long a collective waits for the slowest rank. Ranks arrive together unless one is much slower than
# the others (each step is split evenly), so this bounds a hang rather than the run.
TIMEOUT = _dt.timedelta(minutes=60)
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class RankFailed(VRCurveError):
    """Some rank of a distributed run failed. ``show`` is False on the ranks that leave the printing of
    ``message`` to another rank (the failing rank itself prints it, once)."""

    def __init__(self, message: str, show: bool):
        super().__init__(message)
        self.show = show


def under_torchrun() -> bool:
    """True in a process started by torchrun (or any launcher that sets RANK, WORLD_SIZE and LOCAL_RANK)."""
    return all(k in os.environ for k in _ENV)


@dataclass
class Ranks:
    """This process's place in the run, and the collectives the estimate needs."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device  # where this rank's collectives run (its CUDA device under NCCL, else the CPU)

    def step(self) -> "_Step":
        """``with ranks.step(): ...`` runs local work, then agrees with every rank that it succeeded."""
        return _Step(self)

    def agree(self, error: Optional[BaseException]) -> None:
        """All-gather each rank's outcome; if any rank failed, raise on every rank (see the module doc).

        A non-VRCurveError on this rank (a bug, a device error) is re-raised as itself after the agreement,
        so that its traceback is not lost; the other ranks raise ``RankFailed`` with its one-line summary.
        """
        import torch.distributed as dist

        mine = None if error is None else (
            str(error) if isinstance(error, VRCurveError) else f"{type(error).__name__}: {error}")
        outcomes: List[Optional[str]] = [None] * self.world_size
        dist.all_gather_object(outcomes, mine)
        failed = [(r, m) for r, m in enumerate(outcomes) if m is not None]
        if not failed:
            return
        if error is not None and not isinstance(error, VRCurveError):
            raise error
        if mine is None:
            first, message = failed[0]
            raise RankFailed(f"rank {first} of {self.world_size} failed: {message}", show=False)
        # only the lowest failing rank prints: a run that fails says so in one line, however many ranks failed
        show = failed[0][0] == self.rank
        prefix = "" if self.world_size == 1 else f"rank {self.rank} of {self.world_size}: "
        raise RankFailed(prefix + mine, show=show)

    def same_everywhere(self, settings: Dict[str, Any]) -> None:
        """Check, before any work, that every rank runs with the same ``settings`` (option name -> value,
        and ``data``: the fingerprint of the samples read); each rank reads its own command line and its own files, and a
        rank that differed would add its sums to the others' unnoticed, or hang in a collective of another
        shape.

        Raises:
            RankFailed: on every rank, when some rank differs from rank 0; rank 0 prints which option.
        """
        import torch.distributed as dist

        mine = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str) for k, v in settings.items()}
        everyone: List[Optional[Dict[str, str]]] = [None] * self.world_size
        dist.all_gather_object(everyone, mine)
        reference = everyone[0]
        for rank, theirs in enumerate(everyone[1:], start=1):
            for name in reference:
                if theirs.get(name) != reference[name] and name == "data":
                    raise RankFailed(f"rank {rank} of {self.world_size} read other data than rank 0 (fingerprint "
                                     f"{theirs.get(name)}, not {reference[name]}); the --data of every node must hold "
                                     "the same files.", show=self.rank == 0)
                if theirs.get(name) != reference[name]:
                    raise RankFailed(f"rank {rank} of {self.world_size} runs with {name} {theirs.get(name)}, rank 0 "
                                     f"with {name} {reference[name]}; start every rank with the same options and the "
                                     "same data.", show=self.rank == 0)

    def settle(self) -> None:
        """Wait until every rank is here (after a failure, so that its message is printed before any rank
        exits); a rank that cannot be reached any more does not stop the others from exiting."""
        import torch.distributed as dist

        try:
            dist.barrier()
        except Exception:
            pass

    def sum_sources(self, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """Run ``compute`` (this rank's (2, T, M) sums, zeros outside its sources) in a step, then all-reduce."""
        import torch.distributed as dist

        with self.step():
            local = compute()
        total = torch.from_numpy(np.ascontiguousarray(local, dtype=np.float64)).to(self.device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.cpu().numpy()


class _Step:
    def __init__(self, ranks: Ranks):
        self.ranks = ranks

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, RankFailed):
            return False  # raised on every rank by an agreement inside this step: no second agreement
        if exc is not None and not isinstance(exc, Exception):
            return False  # KeyboardInterrupt, SystemExit: torchrun stops the other ranks
        self.ranks.agree(exc)
        return False


@contextmanager
def launch(device: str, report: Optional[Callable[[RankFailed], None]] = None) -> Iterator[Optional[Ranks]]:
    """Initialise torch.distributed when this process was started by torchrun and yield its ``Ranks``
    (None otherwise); the process group is destroyed on the way out, whatever happens.

    The backend is NCCL when this rank computes on CUDA, gloo on the CPU. A failed run is settled here:
    when the block raises ``RankFailed`` (on every rank at once), every rank waits for the others before it
    leaves, so that the failing rank's message is out before torchrun stops the processes (it does when the
    first one exits).

    Args:
        device: ``--device`` as given (``cuda`` is this rank's GPU, cuda:LOCAL_RANK).
        report: given, the failing rank passes the ``RankFailed`` to it before the wait, and every rank raises
            it again with ``show`` False (reported); None: every rank raises it as it came, after the wait, for
            the caller to print where ``show`` is True.
    """
    if not under_torchrun():
        yield None
        return
    import torch.distributed as dist

    try:
        rank, world, local = (int(os.environ[k]) for k in _ENV)
    except ValueError:
        raise VRCurveError(f"RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers, got "
                           f"{', '.join(os.environ[k] for k in _ENV)}.") from None
    first = local_device(device, local).split(",")[0].strip()
    cuda = first.startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise VRCurveError(f"--device {device} asks for CUDA, but no CUDA device is available on rank {rank}; "
                               "use --device cpu.")
        if local >= torch.cuda.device_count() and device.strip() == "cuda":
            raise VRCurveError(f"rank {rank} has LOCAL_RANK {local}, but its node has {torch.cuda.device_count()} "
                               "CUDA device(s); start at most that many processes per node.")
        torch.cuda.set_device(torch.device(first))
    try:
        dist.init_process_group("nccl" if cuda else "gloo", init_method="env://", rank=rank, world_size=world,
                                timeout=TIMEOUT)
    except Exception as exc:  # a missing MASTER_ADDR, an unreachable rendezvous, a timed-out store
        raise VRCurveError(f"rank {rank} could not join the torch.distributed group: {exc}") from None
    ranks = Ranks(rank=rank, world_size=world, local_rank=local, device=torch.device(first) if cuda else torch.device("cpu"))
    try:
        yield ranks
    except RankFailed as exc:
        if report is None:
            ranks.settle()
            raise
        if exc.show:
            report(exc)
        ranks.settle()
        raise RankFailed(str(exc), show=False) from None
    finally:
        dist.destroy_process_group()
