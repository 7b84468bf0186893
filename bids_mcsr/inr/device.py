"""Choosing the torch device and thread count."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

CUBLAS_DETERMINISTIC = ":4096:8"  # cuBLAS' reproducible workspace (CUDA's reproducibility notes)


def select_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU. ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA GPU is visible; "
                           "use --device auto or cpu (under Singularity/Apptainer add --nv)")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


@contextmanager
def reproducible(device: torch.device) -> Iterator[None]:
    """Deterministic kernels while a fit runs on a GPU, so that ``--seed`` repeats its output.

    On CUDA the hash grid's backward (``index_add_``) and the per-contrast loss sums are
    atomic adds whose order, hence rounding, changes from run to run; on an H100 the
    same-seed test failed (before this context existed). Inside this context torch picks its deterministic
    kernels (``torch.use_deterministic_algorithms``, warning, not failing, where an
    operation has none) and cuBLAS its reproducible workspace (``CUBLAS_WORKSPACE_CONFIG``,
    left as it is when already set). The previous setting is restored on exit. CPU fits are
    deterministic already (the hash grid's lookup is an operator of its own that
    ``torch.compile`` leaves as it is, :func:`~bids_mcsr.inr.encoding.weighted_lookup`) and
    run unchanged.

    Parameters
    ----------
    device : torch.device
        The fit's device.
    """
    if device.type != "cuda":
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
