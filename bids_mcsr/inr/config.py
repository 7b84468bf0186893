"""The settings of one subject's fit (torch-free: the command line builds it)."""

from __future__ import annotations

from dataclasses import dataclass

from bids_mcsr.acquisition.backprojection import DEFAULT_CONSISTENCY_ITERATIONS
from bids_mcsr.acquisition.holdout import HOLDOUT_FRACTION
from bids_mcsr.acquisition.slice_profile import PROFILE_SAMPLES
from bids_mcsr.inr.presets import DEFAULT_MODEL


@dataclass
class SRConfig:
    """User-facing settings of :func:`super_resolve` (``None`` = the model's default).

    ``learn_profile``/``refine_registration``: fit each thick stack's slice-profile width /
    rigid pose with the network (off by default: on the robustness benchmark they win where
    the header or the profile shape is wrong and lose where it is right,
    docs/evaluation.md). ``holdout_fraction`` of each thick stack's slices are
    withheld from training to score the fit against cubic interpolation. ``keep_network_output`` also returns each contrast's
    volume before back-projection (for benchmarks).
    """

    model: str = DEFAULT_MODEL
    slice_profile: str = "gaussian"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    mi_stopping: bool = True
    output_spacing: float | None = None
    mem_gb: float | None = None
    profile_samples: int = PROFILE_SAMPLES
    background_fraction: float = 0.2
    mi_points: int = 20000
    compile: bool | None = None
    max_train_seconds: float | None = None
    finest_mm: float | None = None
    consistency_iterations: int = DEFAULT_CONSISTENCY_ITERATIONS
    learn_profile: bool = False
    refine_registration: bool = False
    holdout_fraction: float = HOLDOUT_FRACTION
    keep_network_output: bool = False
