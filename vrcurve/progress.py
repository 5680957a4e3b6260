"""What a run is doing, phase by phase, with counts: the library reports, a front end (the CLI's bar) draws.

A run of ``vrcurve estimate`` goes through these phases, in this order:

- ``reading``: the chosen samples (or files, or images), N of M, replacements of skipped files included;
- ``encoding``: with a VAE, reading is encoding: images read and encoded, N of M;
- ``estimating``: timesteps' worth of the estimate's work, fractional while a chunk of queries is in flight,
  per resolution bucket where the data has several. The Gram matrix and the noise's factor are computed
  inside this phase, before its first count: O(M^2 d) once, against O(K M^2) per timestep, too little to
  be a phase of its own (README.md, "The command line");
- ``bootstrap``: the replicates refitted for the interval of m (per bucket, then for the pooled density);
- ``convergence``: the re-estimates on nested subsets of the samples, in timesteps, each saying which subset.

A reporter is any callable that takes an ``Update``. The library never needs one: where it is None every
report is one attribute test, and nothing is counted.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Callable, Optional

__all__ = ["PHASES", "Update", "Reporter", "Counter", "within"]

PHASES = ("reading", "encoding", "estimating", "bootstrap", "convergence")


@dataclass(frozen=True)
class Update:
    """Where one phase of a run stands.

    Attributes:
        phase: one of ``PHASES``.
        done: the work finished, in ``unit`` (a float: the estimate reports fractions of a timestep).
        total: the work of the phase, in ``unit`` (it can grow: a skipped file is replaced by another).
        unit: what is counted: ``samples``, ``files``, ``images``, ``timesteps`` or ``replicates``.
        where: which part of the run, or "": e.g. ``bucket 2/3 16x64x64`` or ``50 of 200 samples``.
    """

    phase: str
    done: float
    total: float
    unit: str
    where: str = ""


Reporter = Callable[[Update], None]


class Counter:
    """Counts the work of one phase and reports after each step; device threads may share it.

    ``per`` raw steps make one unit (the estimate counts queries x timesteps and reports timesteps, so that
    the last report is exactly ``total`` however the work was cut). Creating a counter reports the phase at 0.

    Args:
        report: the reporter, or None (then nothing is counted or reported).
        phase: one of ``PHASES``.
        total: the work of the phase, in units.
        unit: what a unit is (``Update.unit``).
        where: which part of the run (``Update.where``).
        per: raw steps per unit.
    """

    def __init__(self, report: Optional[Reporter], phase: str, total: float, unit: str, where: str = "",
                 per: int = 1):
        self.report = report
        self.phase, self.total, self.unit, self.where, self.per = phase, total, unit, where, max(1, per)
        self.steps = 0
        self._lock = threading.Lock()
        if report is not None:
            report(Update(phase, 0, total, unit, where))

    def add(self, steps: int = 1, more: float = 0) -> None:
        """Count ``steps`` raw steps done, and ``more`` units of work found (a replacement for a skipped file)."""
        if self.report is None:
            return
        with self._lock:  # one report at a time, in the order of the counts: what is shown never goes back
            self.steps += steps
            self.total += more
            self.report(Update(self.phase, self.steps / self.per, self.total, self.unit, self.where))


def within(report: Optional[Reporter], where: str, phase: Optional[str] = None) -> Optional[Reporter]:
    """``report`` for a part of the run: every update says ``where`` first (then its own ``where``) and, given
    ``phase``, is reported as that phase (the estimate of a convergence subset is the ``convergence`` phase).

    None stays None, so a run that nobody follows builds no wrappers.
    """
    if report is None:
        return None

    def inner(update: Update) -> None:
        report(replace(update, phase=phase or update.phase,
                       where=", ".join(w for w in (where, update.where) if w)))

    return inner
