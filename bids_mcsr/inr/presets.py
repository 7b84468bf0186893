"""Named model configurations and the training defaults that go with them: the one home of
every default the fit uses (architecture, epochs, batch, optimiser and schedule, which voxels an
epoch trains on, intensity scaling, slice profile, back-projection, held-out slices, MI
stopping rule).

Torch-free, so that the command line, reports and QC can read the defaults without
importing the network code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from bids_mcsr.acquisition.backprojection import DEFAULT_CONSISTENCY_ITERATIONS
from bids_mcsr.acquisition.holdout import HOLDOUT_FRACTION

DEFAULT_MODEL = "fast"
MI_WINDOW = 4  # epochs over which the MI change is averaged
MI_TOLERANCE_NATS = 2e-3  # MI has plateaued when it moves less than this per epoch
MI_MIN_EPOCHS = 6  # the MI rule never stops before this epoch
EVALUATION_BUDGET = 170_000_000  # network evaluations a default fast fit trains on, at most
MIN_BUDGET_EPOCHS = 4  # a budget never cuts training below this many epochs


# the settings a user may choose per run (SRConfig fields, command-line options); unset (None),
# they take the model's value
RUN_CHOICES = ("slice_profile", "consistency_iterations", "holdout_fraction",
               "background_fraction", "intensity_scaling", "mi_stopping", "refine_registration")


@dataclass
class ModelSpec:
    """Architecture and default training settings of a named model.

    Attributes
    ----------
    name, encoding, encoding_args, trunk_width, trunk_depth, head_width
        The network (:func:`bids_mcsr.inr.model.build_model`).
    epochs, batch_size, lr
        Training length, batch and Adam learning rate.
    max_evaluations
        Network evaluations a fit trains on at most when its epochs are not given: data that
        would take more in ``epochs`` epochs train fewer (:func:`epochs_within_budget`);
        None: no limit.
    adam_betas, adam_eps
        Adam's moment decay rates and epsilon.
    schedule
        Cosine learning-rate schedule stepped ``"per-step"`` or ``"per-epoch"``, from ``lr``
        down to ``lr_floor * lr`` at the end.
    lr_floor
        Final learning rate as a fraction of ``lr``.
    min_steps_per_epoch
        Batches are made smaller (not below 512) until an epoch has this many steps.
    drop_last
        An epoch's last, smaller batch waits for the next epoch (equal batches) instead of
        being trained on.
    background_fraction
        Share of the background voxels that join each epoch (every foreground voxel does).
    intensity_scaling
        ``"percentile"`` or ``"minmax"`` (:class:`bids_mcsr.image.intensity.IntensityScaler`).
    slice_profile
        ``"gaussian"``, ``"boxcar"`` or ``"none"`` (point samples).
    consistency_iterations
        Rounds of back-projection after inference (0: none).
    holdout_fraction
        Share of each thick stack's slices withheld to score the fit (0: none).
    refine_registration
        Refine every stack's rigid pose but the reference's during the fit
        (:class:`bids_mcsr.inr.acquisition_fit.StackAcquisition`): True, False or ``"auto"``
        (when a stack looks misaligned, :func:`bids_mcsr.inr.superres.refines_poses`).
    mi_stopping
        Stop when the MI between the predicted contrasts plateaus (:data:`MI_WINDOW`,
        :data:`MI_TOLERANCE_NATS`, not before :data:`MI_MIN_EPOCHS`); the published code
        runs every epoch unless asked.
    """

    name: str
    encoding: str
    encoding_args: dict = field(default_factory=dict)
    trunk_width: int = 256
    trunk_depth: int = 4
    head_width: int = 64
    epochs: int = 20
    max_evaluations: int | None = None
    batch_size: int = 4096
    lr: float = 1e-3
    adam_betas: tuple[float, float] = (0.9, 0.99)
    adam_eps: float = 1e-15
    schedule: str = "per-step"
    lr_floor: float = 0.01
    min_steps_per_epoch: int = 200
    drop_last: bool = True
    background_fraction: float = 0.2
    intensity_scaling: str = "percentile"
    slice_profile: str = "boxcar"
    consistency_iterations: int = DEFAULT_CONSISTENCY_ITERATIONS
    holdout_fraction: float = HOLDOUT_FRACTION
    mi_stopping: bool = True
    refine_registration: bool | str = "auto"

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    # the published code (jqmcginnis/multi_contrast_inr): every LR voxel each epoch, PyTorch's
    # Adam defaults, CosineAnnealingLR(T_max=epochs) stepped per epoch, min-max scaling, point
    # samples, no back-projection, no slice withheld
    "paper": ModelSpec("paper", "fourier", {"n_frequencies": 256, "scale": 4.0},
                       trunk_width=1024, trunk_depth=5, head_width=512,
                       epochs=50, batch_size=1000, lr=4e-4,
                       adam_betas=(0.9, 0.999), adam_eps=1e-8, schedule="per-epoch",
                       lr_floor=0.0, min_steps_per_epoch=1, drop_last=False,
                       background_fraction=1.0, intensity_scaling="minmax",
                       slice_profile="none", consistency_iterations=0, holdout_fraction=0.0,
                       mi_stopping=False, refine_registration=False),
    # lr 1e-2 (Instant-NGP's): at 5e-3 a whole head's network underfitted tissue that only
    # lesions have (docs/evaluation.md, "The learning rate")
    "fast": ModelSpec("fast", "hashgrid",
                      {"n_levels": 8, "n_features": 2, "log2_table_size": 19,
                       "coarsest_mm": 32.0, "finest_mm": 2.0},
                      trunk_width=64, trunk_depth=2, head_width=32,
                      epochs=10, max_evaluations=EVALUATION_BUDGET, batch_size=8192, lr=1e-2),
}


def model_spec(name: str, **overrides) -> ModelSpec:
    """The named configuration, with fields overridden by keyword.

    ``paper``: McGinnis et al. 2023 as their code runs it: Gaussian Fourier features (256
    frequencies, scale 4), 5-layer 1024-wide ReLU trunk, a 512-wide hidden layer per head,
    Adam (lr 4e-4, betas (0.9, 0.999), eps 1e-8), cosine schedule stepped per epoch down to 0,
    50 epochs, batches of 1000 over every voxel (background included), min-max intensity
    scaling, point samples, no back-projection, no held-out slices.

    ``fast``: a hash-grid encoding (32 mm to 2 mm cells) with a small split-head MLP,
    sized for minutes on a 2-core CPU, with the slab model, back-projection and held-out
    slices.

    Parameters
    ----------
    name : str
        A key of :data:`PRESETS`.
    **overrides
        Fields to change; None leaves the preset's value, ``encoding_args`` are merged.

    Returns
    -------
    ModelSpec
        A copy, safe to modify.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(PRESETS)}")
    spec = replace(PRESETS[name], encoding_args=dict(PRESETS[name].encoding_args))
    for key, value in overrides.items():
        if key == "encoding_args":
            spec.encoding_args = {**spec.encoding_args, **value}
        elif value is not None:
            setattr(spec, key, value)
    return spec


def epochs_within_budget(spec: ModelSpec, evaluations_per_epoch: int) -> int:
    """The epochs a fit trains when its epochs are not given: the model's, or fewer where
    they would take more than ``spec.max_evaluations`` network evaluations.

    Optimisation progresses per step, and a step costs the same whatever the data, so a
    fixed number of epochs made a subject's training time grow with its stacks (a 4-contrast
    6-stack subject: 24 M evaluations per epoch, about 10 minutes on 2 CPU cores against 2.5
    for two stacks). The budget (:data:`EVALUATION_BUDGET`: 10 epochs of up to four
    whole-head 4 mm stacks fit in it, 17 M evaluations each, or of three when their slab
    widths are learned, whose held-out batches count too) caps the steps instead, never
    below :data:`MIN_BUDGET_EPOCHS` epochs; the learning-rate schedule and coarse-to-fine
    run over the epochs that remain.

    Parameters
    ----------
    spec : ModelSpec
        The fit's model and settings.
    evaluations_per_epoch : int
        Network evaluations of one epoch
        (:meth:`bids_mcsr.inr.sampling.TrainingSamples.epoch_evaluations`).

    Returns
    -------
    int
        At most ``spec.epochs``.
    """
    if spec.max_evaluations is None or evaluations_per_epoch * spec.epochs <= spec.max_evaluations:
        return spec.epochs
    return max(min(MIN_BUDGET_EPOCHS, spec.epochs), spec.max_evaluations // max(1, evaluations_per_epoch))


def run_choices(model: str, **given) -> dict:
    """The per-run choices of :data:`RUN_CHOICES` in ``given``, each unset (None) one taken from
    the model's preset.

    Parameters
    ----------
    model : str
        A key of :data:`PRESETS`.
    **given
        Values of some of :data:`RUN_CHOICES`; None means unset.

    Returns
    -------
    dict
        The same keys, every value set.
    """
    unknown = set(given) - set(RUN_CHOICES)
    if unknown:
        raise ValueError(f"not a per-run choice: {sorted(unknown)}")
    spec = model_spec(model)
    return {name: getattr(spec, name) if value is None else value for name, value in given.items()}
