"""How many units run side by side, and what each gets: CPUs, threads and memory.

The CPUs of the run (``--nprocs``) are shared by the units that run at once: as many as
there are CPUs (or ``--nprocs // --omp-nthreads`` when threads per step are fixed) and as
there are units left. A unit starts beside the running ones only when its default memory
plan fits in what they leave of ``--mem-gb`` (default: the memory available at start); one
that does not fit waits, and a unit that does not fit even alone runs alone with the whole
``--mem-gb`` (its training batch shrunk to fit).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

GB = 2**30


@dataclass(frozen=True)
class Grant:
    """What one unit may use.

    Attributes
    ----------
    cpus : int
        nipype processes of the unit (steps such as N4 of several stacks run side by side).
    threads : int
        Threads of each step (ANTs, PyTorch).
    mem_gb : float or None
        Memory the super-resolution step plans its batch for; None: the model's own batch.
    reserved_bytes : int
        Memory set aside for the unit while it runs.
    """

    cpus: int
    threads: int
    mem_gb: float | None
    reserved_bytes: int


def available_memory_bytes() -> int:
    """Memory available to new processes: ``MemAvailable`` where ``/proc/meminfo`` shows it,
    else the physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class Resources:
    """The CPUs and memory of a run, handed out to units as they start.

    Parameters
    ----------
    nprocs : int
        CPUs of the run.
    omp_nthreads : int or None
        Fixed threads per step; None: each unit's steps use all of its CPUs.
    mem_gb : float or None
        ``--mem-gb``; None: ``budget_bytes`` is the only limit and steps plan without one.
    budget_bytes : int
        Memory the units may use together.
    max_units : int, optional
        Never more units at once than this (1 on a GPU, whose memory is not planned).
    """

    def __init__(self, nprocs: int, omp_nthreads: int | None, mem_gb: float | None,
                 budget_bytes: int, max_units: int | None = None) -> None:
        self.nprocs, self.omp_nthreads, self.mem_gb = nprocs, omp_nthreads, mem_gb
        self.budget_bytes = budget_bytes
        self.width = max(1, nprocs // omp_nthreads if omp_nthreads else nprocs)
        if max_units is not None:
            self.width = min(self.width, max_units)
        self.held: list[Grant] = []

    def grant(self, peak_bytes: int, waiting: int) -> Grant | None:
        """Reserve CPUs and memory for the next unit, or None when it must wait.

        Parameters
        ----------
        peak_bytes : int
            Peak of the unit's default memory plan.
        waiting : int
            Units left to start, this one included: the free CPUs are split between as many
            of them as may still start.

        Returns
        -------
        Grant or None
            Its share; None while the running units leave too few CPUs or too little memory.
        """
        if len(self.held) >= self.width:
            return None
        reserved = sum(held.reserved_bytes for held in self.held)
        if reserved + peak_bytes <= self.budget_bytes:
            mem_gb, reserve = None, peak_bytes
        elif not self.held:  # too large even alone: the whole --mem-gb, the batch shrunk
            mem_gb, reserve = self.mem_gb, self.budget_bytes
        else:
            return None
        free_cpus = self.nprocs - sum(held.cpus for held in self.held)
        sharing = max(1, min(self.width - len(self.held), waiting))
        cpus = max(1, free_cpus // sharing)
        granted = Grant(cpus, self.omp_nthreads or cpus, mem_gb, reserve)
        self.held.append(granted)
        return granted

    def release(self, granted: Grant) -> None:
        """Give a finished unit's share back."""
        self.held.remove(granted)


def run_resources(nprocs: int, omp_nthreads: int | None, mem_gb: float | None,
                  device: str) -> Resources:
    """The resources of a run from its options.

    Parameters
    ----------
    nprocs, omp_nthreads, mem_gb, device
        ``--nprocs``, ``--omp-nthreads``, ``--mem-gb``, ``--device``.

    Returns
    -------
    Resources
        With the memory budget ``--mem-gb`` or else what is available now; one unit at a
        time when the network is fitted on a GPU.
    """
    budget = int(mem_gb * GB) if mem_gb else available_memory_bytes()
    return Resources(nprocs, omp_nthreads, mem_gb, budget,
                     max_units=1 if fits_on_gpu(device) else None)


def fits_on_gpu(device: str) -> bool:
    """Whether ``--device`` puts the network on a CUDA GPU."""
    if device != "auto":
        return device == "cuda"
    from bids_mcsr.inr.device import select_device  # imports torch

    return select_device("auto").type == "cuda"
