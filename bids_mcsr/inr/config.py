"""The settings of one subject's fit (torch-free: the command line builds it)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from bids_mcsr.acquisition.slice_profile import PROFILE_SAMPLES
from bids_mcsr.inr.presets import DEFAULT_MODEL, RUN_CHOICES, run_choices


@dataclass
class SRConfig:
    """User-facing settings of :func:`super_resolve` (``None`` = the model's default,
    :func:`bids_mcsr.inr.presets.model_spec`; :meth:`resolved` fills them in).

    ``learn_profile``: fit each thick stack's slice-profile width with the network (True,
    False, ``"auto"``: when a stack's header declares gaps between its slices, or every thick
    stack's slices span a head (:func:`bids_mcsr.inr.superres.learns_profiles`); on crops of a
    head it loses where a thick slab is declared right, on whole heads it wins,
    docs/evaluation.md); ``refine_registration``: refine
    each stack's rigid pose with the network (True, False, ``"auto"``: when a stack looks
    misaligned; the model's choice when None).
    ``holdout_fraction`` of each thick stack's slices are withheld from the first half of the
    training to score the fit against cubic interpolation (then they train).
    ``guided_upsampling``: each thick-sliced contrast becomes a local linear map of every
    contrast's network volume, fitted on its own slices
    (:mod:`bids_mcsr.acquisition.guided`), before back-projection.
    ``keep_network_output`` also returns each contrast's volume before both (for benchmarks).
    """

    model: str = DEFAULT_MODEL
    slice_profile: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    mi_stopping: bool | None = None
    output_spacing: float | None = None
    mem_gb: float | None = None
    profile_samples: int = PROFILE_SAMPLES
    background_fraction: float | None = None
    intensity_scaling: str | None = None
    mi_points: int = 20000
    compile: bool | None = None
    max_train_seconds: float | None = None
    finest_mm: float | None = None
    consistency_iterations: int | None = None
    learn_profile: bool | str = "auto"
    refine_registration: bool | str | None = None
    holdout_fraction: float | None = None
    guided_upsampling: bool = True
    keep_network_output: bool = False

    def resolved(self) -> SRConfig:
        """These settings with every unset per-run choice (slice profile, back-projection
        rounds, held-out share, background share, intensity scaling, MI stopping, pose
        refinement) taken from the model.

        Returns
        -------
        SRConfig
            A copy; ``epochs``, ``batch_size`` and ``lr`` stay as given (the model spec
            fills them in).
        """
        given = {name: getattr(self, name) for name in RUN_CHOICES}
        return replace(self, **run_choices(self.model, **given))
