"""Subject-level super-resolution: stacks in scanner space -> isotropic volumes of every contrast."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch

from bids_mcsr.acquisition.backprojection import enforce_consistency
from bids_mcsr.acquisition.guided import Guides
from bids_mcsr.acquisition.holdout import choose_heldout, validate
from bids_mcsr.acquisition.region import post_fit_region, region_margin_mm
from bids_mcsr.acquisition.slice_profile import (
    PROFILES,
    header_declares_gap,
    header_too_thick,
    slab_fwhm,
    widest_slab_mm,
)
from bids_mcsr.image.alignment import misaligned_stacks
from bids_mcsr.image.geometry import (
    CoordinateFrame,
    Grid,
    check_overlap,
    make_output_grid,
    pick_reference,
    voxel_centres_at,
)
from bids_mcsr.image.intensity import IntensityScaler
from bids_mcsr.image.io import Stack
from bids_mcsr.image.metrics import resample_to_grid
from bids_mcsr.image.noise import estimate_noise
from bids_mcsr.inr.acquisition_fit import StackAcquisition
from bids_mcsr.inr.config import SRConfig
from bids_mcsr.inr.device import describe, reproducible, select_device
from bids_mcsr.inr.inference import predict_grid
from bids_mcsr.inr.memory import Estimate, plan_memory
from bids_mcsr.inr.model import build_model
from bids_mcsr.inr.presets import RUN_CHOICES, ModelSpec, epochs_within_budget, model_spec
from bids_mcsr.inr.result import SRResult
from bids_mcsr.inr.sampling import TrainingSamples, build_samples, stack_masks_and_scalers
from bids_mcsr.inr.summaries import describe_acquisition, describe_gain, heldout_summary
from bids_mcsr.inr.training import TrainConfig, train

log = logging.getLogger("bids_mcsr")

# foreground voxels per slice (median) of every thick stack from which slab widths learn by
# default (learns_profiles): set between 64-80 mm crops of a head (4-6.5 thousand, where
# learned widths are no gain: -0.9 to +1.2 dB by row) and whole 1 mm heads (12-14 thousand,
# where they paid)
WIDTH_MIN_SLICE_VOXELS = 9_000
# contrasts up to which whole-head slices learn their slab widths by default: with three
# (and with a 3D scan among them) the held-out slices pick too narrow a slab
WIDTH_MAX_CONTRASTS = 2


def contrasts_of(stacks: Sequence[Stack]) -> list[str]:
    """Contrasts in order of first appearance."""
    return list(dict.fromkeys(s.contrast for s in stacks))


def grid_masks(stacks: Sequence[Stack], masks: Sequence[np.ndarray], grid: Grid,
               contrasts: Sequence[str]) -> dict[str, np.ndarray]:
    """Each contrast's LR foreground mask on ``grid`` (union over its stacks)."""
    out = {c: np.zeros(grid.shape, bool) for c in contrasts}
    for s, m in zip(stacks, masks):
        on_grid = resample_to_grid(s.with_data(m.astype(np.float32)), grid, order=1) > 0.5
        out[s.contrast] |= on_grid
    return out


COMPILE_MIN_EVALUATIONS = 100_000_000
POSE_CHECK_STEP_MM = 1.0  # the alignment check that turns pose refinement on ("auto")


def in_scale_of(stack: Stack, scaler: IntensityScaler, target: IntensityScaler) -> Stack:
    """``stack`` with its intensities mapped from its own ``scaler`` onto ``target``'s scale."""
    return stack.with_data(target.inverse(scaler.forward(stack.data)))


def use_compile(requested: bool | None, evaluations: int) -> bool:
    """``torch.compile`` the training step? ``None`` (auto): when training needs more than
    :data:`COMPILE_MIN_EVALUATIONS` network evaluations, where its one-off compile time
    (tens of seconds on a CPU) pays back about threefold."""
    return bool(evaluations > COMPILE_MIN_EVALUATIONS) if requested is None else bool(requested)


@dataclass
class _Problem:
    """Everything the fit needs, derived once from the stacks and the settings."""

    contrasts: list[str]
    grid: Grid
    frame: CoordinateFrame
    spec: ModelSpec
    masks: list[np.ndarray]
    scalers: list[IntensityScaler]
    heldout: list[np.ndarray]
    samples: TrainingSamples
    acquisition: StackAcquisition
    mask: np.ndarray
    mi_coords: np.ndarray | None


def _fit_spec(config: SRConfig) -> ModelSpec:
    """The model's spec with the run's own choices (``config`` resolved) in place of its
    defaults: the record of what the fit used."""
    spec = model_spec(config.model, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                      **{name: getattr(config, name) for name in RUN_CHOICES})
    if config.finest_mm is not None:
        if spec.encoding != "hashgrid":
            raise ValueError(f"finest_mm applies to hash-grid models, not {config.model!r}")
        spec.encoding_args = {**spec.encoding_args, "finest_mm": float(config.finest_mm)}
    return spec


def _mi_points(region: np.ndarray, grid: Grid, frame: CoordinateFrame, config: SRConfig):
    """Normalised coordinates of up to ``config.mi_points`` grid voxels of ``region``."""
    flat = np.flatnonzero(region.ravel())
    rng = np.random.default_rng(config.seed)
    chosen = np.sort(rng.choice(flat, min(config.mi_points, flat.size), replace=False))
    return frame.normalise(voxel_centres_at(grid.shape, grid.affine, chosen)) if chosen.size else None


def _note_capped_headers(stacks: Sequence[Stack], profile: str) -> None:
    for s in stacks:
        if header_too_thick(s):
            log.warning("%s: SliceThickness %.2f mm is more than the slice spacing allows "
                        "(%.2f mm); the slab is modelled %.2f mm wide (check the sidecar)",
                        s.name, s.thickness, widest_slab_mm(s), slab_fwhm(s, profile))


def refines_poses(stacks: Sequence[Stack], choice: bool | str, reference: int) -> bool:
    """Whether the fit refines the stacks' rigid poses.

    ``choice`` True or False is followed (one stack: never). ``"auto"``: only when a thick
    stack is misaligned with the reference at a step of its finest voxel, at least
    :data:`POSE_CHECK_STEP_MM` (:func:`bids_mcsr.image.alignment.misaligned_stacks`). On the
    robustness benchmark that check flagged both seeds of both rows with a stack left 2 mm /
    2 degrees off after registration and none of the 4 rows x 2 seeds checked without (MI
    moved / in place 1.13-1.15 against 0.89-0.91); refinement lifts the first from below cubic
    interpolation and costs 0.1-0.9 dB on the second.
    """
    if len(stacks) < 2:
        return False
    if choice != "auto":
        return bool(choice)
    off = misaligned_stacks(list(stacks), reference, POSE_CHECK_STEP_MM)
    for k in off:
        log.info("%s: matches the reference %s better when moved by %.0f mm: refining every "
                 "stack's pose during the fit", stacks[k].name, stacks[reference].name,
                 POSE_CHECK_STEP_MM)
    return bool(off)


def slice_foreground(stack: Stack, mask: np.ndarray) -> int:
    """The median number of foreground voxels in a slice of ``stack`` (``mask``, its shape)."""
    other = tuple(a for a in range(3) if a != stack.through_plane_axis)
    return int(np.median(np.asarray(mask, bool).sum(axis=other)))


def learns_profiles(stacks: Sequence[Stack], choice: bool | str, masks: Sequence[np.ndarray]) -> bool:
    """Whether the fit learns the stacks' slab widths.

    ``choice`` True or False is followed. ``"auto"``: when a thick stack's header declares
    gaps between its slices (:func:`~bids_mcsr.acquisition.slice_profile.header_declares_gap`),
    where the modelled slab is the header's guess at its narrowest, or slabs that overlap
    (:func:`~bids_mcsr.acquisition.slice_profile.header_too_thick`), where it is capped
    below the header (on the 64 x 80 x 64 mm crops, 6 mm slabs every 4 mm: +0.55 to +1.5 dB
    learned, the seed spreads 0.1-0.5 dB; a header twice a contiguous slab, which looks the
    same, loses up to 0.3 dB; docs/evaluation.md), and when every thick
    stack's slices hold at least :data:`WIDTH_MIN_SLICE_VOXELS` foreground voxels (median
    over its slices, ``masks`` its foreground: slices that span a head) and the fit has at
    most :data:`WIDTH_MAX_CONTRASTS` contrasts. With three contrasts, on whole heads and
    crops, the learned widths came out narrow (1.8-2.6 mm for a 4 mm rectangular slab) and
    cost 0.1-0.9 dB against the headers' (14 of 15 contrasts and cases; FLAIR -0.8 dB with a
    3D T1w guiding two axial stacks; docs/evaluation.md). On whole-head 1 mm
    template stacks (12-14 thousand) the widths learned on the held-out slices came out
    at 0.6-1.05 mm for 1 mm thin slices whatever the header said (thin slices declared 4 mm
    thick: +0.7 / +0.8 dB over cubic interpolation with the header's slab, +4.7 / +6.8 dB
    learned); on 64-80 mm crops of a head (4-6.5 thousand) learning them is no gain over the
    whole robustness table (mean -0.06 to +0.01 dB; +1.2 dB on thin slices declared 4 mm,
    -0.3 to -0.9 dB with three contrasts or a 3D scan guiding, where the held-out slices
    pick too narrow a slab; docs/evaluation.md).
    """
    if choice != "auto":
        return bool(choice)
    thick = [slice_foreground(s, m) for s, m in zip(stacks, masks) if not s.is_isotropic]
    n_contrasts = len(contrasts_of(stacks))
    if thick and min(thick) >= WIDTH_MIN_SLICE_VOXELS:
        if n_contrasts <= WIDTH_MAX_CONTRASTS:
            log.info("every thick stack's slices span at least %d foreground voxels: learning the "
                     "stacks' slab widths during the fit", WIDTH_MIN_SLICE_VOXELS)
            return True
        log.info("%d contrasts: the slab widths stay the headers' unless a header declares gaps "
                 "or overlapping slabs (with more than %d, widths learned on held-out slices come "
                 "out too narrow)",
                 n_contrasts, WIDTH_MAX_CONTRASTS)
    # headers whose modelled slab is a guess: gaps (at its narrowest) or overlaps (capped)
    guessed = [(s, "leaves gaps between" if header_declares_gap(s) else "overlaps")
               for s in stacks if header_declares_gap(s) or header_too_thick(s)]
    for s, how in guessed:
        log.info("%s: SliceThickness %.2f mm %s slices %.2f mm apart: learning every stack's "
                 "slab width during the fit", s.name, s.thickness, how, s.slice_spacing)
    return bool(guessed)


def _problem(stacks: Sequence[Stack], config: SRConfig, grid: Grid, reference: int) -> _Problem:
    _note_capped_headers(stacks, config.slice_profile)
    contrasts = contrasts_of(stacks)
    frame = CoordinateFrame.from_stacks(stacks)
    masks, scalers = stack_masks_and_scalers(stacks, config.intensity_scaling)
    held_rng = np.random.default_rng([config.seed, 1])
    heldout = [choose_heldout(s, held_rng, config.holdout_fraction) for s in stacks]
    samples = build_samples(stacks, contrasts, frame, scalers, masks, config.slice_profile,
                            config.profile_samples, heldout)
    widths = samples.n_profile > 1 and learns_profiles(stacks, config.learn_profile, masks)
    acquisition = StackAcquisition(stacks, frame, samples.profiled, config.slice_profile,
                                   learn_profile=widths,
                                   refine_pose=refines_poses(stacks, config.refine_registration, reference),
                                   reference=reference)
    per_contrast = grid_masks(stacks, masks, grid, contrasts)
    mask = np.logical_or.reduce(list(per_contrast.values()))
    shared = np.logical_and.reduce(list(per_contrast.values()))
    spec = _fit_spec(config)
    if config.epochs is None:
        per_epoch = samples.epoch_evaluations(spec.background_fraction)
        if acquisition.log_width.requires_grad:  # the held-out voxels of the width steps
            per_epoch += TrainConfig().width_evaluations(per_epoch)
        budgeted = epochs_within_budget(spec, per_epoch)
        if budgeted < spec.epochs:
            log.info("training %d epochs instead of %d: %.1f M network evaluations per epoch, and the "
                     "%s model trains on at most %.0f M (--epochs sets them)", budgeted, spec.epochs,
                     per_epoch / 1e6, spec.name, spec.max_evaluations / 1e6)
            spec = replace(spec, epochs=budgeted)
    return _Problem(contrasts, grid, frame, spec, masks, scalers, heldout, samples,
                    acquisition, mask, _mi_points(shared if shared.any() else mask, grid, frame, config))


def _train(problem: _Problem, config: SRConfig, device: torch.device, progress, on_epoch_end):
    """Build and train the network; returns it, its history, the training settings, the
    memory plan and its prediction on the grid just before the held-out slices joined the
    training (None when they never did)."""
    spec, samples = problem.spec, problem.samples
    model = build_model(spec, len(problem.contrasts), extent_mm=2 * problem.frame.half_extent_mm,
                        seed=config.seed)
    log.info("training %s model on %d samples of %s (%s), output grid %s at %.2f mm",
             spec.name, len(samples), "/".join(problem.contrasts), describe(device),
             problem.grid.shape, float(problem.grid.spacing[0]))
    plan = plan_memory(Estimate(len(samples), problem.grid.n_voxels, len(problem.contrasts)), spec,
                       samples.n_profile, config.mem_gb, torch.get_num_threads(), device.type == "cuda")
    if plan.batch_size < spec.batch_size:
        log.info("--mem-gb %g: training batches of %d samples instead of %d", config.mem_gb,
                 plan.batch_size, spec.batch_size)
    tcfg = TrainConfig(epochs=spec.epochs, batch_size=plan.batch_size, lr=spec.lr,
                       adam_betas=spec.adam_betas, adam_eps=spec.adam_eps, schedule=spec.schedule,
                       lr_floor=spec.lr_floor, drop_last=spec.drop_last,
                       min_steps_per_epoch=spec.min_steps_per_epoch,
                       background_fraction=spec.background_fraction,
                       mi_stopping=config.mi_stopping, seed=config.seed,
                       max_seconds=config.max_train_seconds,
                       compile=use_compile(config.compile, samples.n_evaluations() * spec.epochs))
    scored: list[np.ndarray] = []

    def keep_scored(network: torch.nn.Module) -> None:
        scored.append(predict_grid(network, problem.frame, problem.grid, device, plan.chunk))
    hist = train(model, problem.acquisition, samples, problem.contrasts, tcfg, device,
                 problem.mi_coords, progress, on_epoch_end, keep_scored)
    return model, hist, tcfg, plan, (scored[0] if scored else None)


def _to_volumes(pred: np.ndarray, scored_pred: np.ndarray | None, stacks: Sequence[Stack],
                problem: _Problem, noise: list[float], config: SRConfig) -> tuple[dict, dict, dict, float]:
    """Each contrast in the intensity scale of its first stack, scored on the held-out slices
    (``scored_pred``, the network before they joined the training, else ``pred``;
    back-projection without them), then made to reproduce all of the contrast's stacks
    (in the same scale) down to their noise floor; the last value is the seconds spent
    scoring."""
    fitted = problem.acquisition.fitted()
    as_fitted = [f.apply(s) for f, s in zip(fitted, stacks)]
    volumes, validation, network_volumes, scoring_s = {}, {}, {}, 0.0
    owned = {c: [k for k, s in enumerate(stacks) if s.contrast == c] for c in problem.contrasts}

    def volumes_of(prediction: np.ndarray) -> dict:
        return {c: problem.scalers[owned[c][0]].inverse(prediction[i])
                for i, c in enumerate(problem.contrasts)}
    networks = volumes_of(pred)
    before = networks if scored_pred is None else volumes_of(scored_pred)

    # each contrast's stacks where the fit placed them, in the scale of its first stack
    placed = {c: [in_scale_of(as_fitted[k], problem.scalers[k], problem.scalers[owned[c][0]])
                  for k in owned[c]] for c in problem.contrasts}

    # the post-fit steps work around the head; outside it the output is the network's
    region = post_fit_region(problem.mask, problem.grid, region_margin_mm(stacks, problem.grid))
    guides = (Guides(networks, problem.grid, problem.mask, config.slice_profile, config.profile_samples,
                     workers=torch.get_num_threads(), region=region, stacks=placed,
                     scored_volumes=before)
              if config.guided_upsampling else None)
    for c in problem.contrasts:
        own = owned[c]
        first = problem.scalers[own[0]]
        span = first.high - first.low
        scaled = placed[c]
        sigmas = [noise[k] * span / (problem.scalers[k].high - problem.scalers[k].low) for k in own]
        own_masks = [problem.masks[k] for k in own]
        held = [problem.heldout[k] for k in own]
        scored, final = before[c], networks[c]
        if config.keep_network_output:
            network_volumes[c] = final
        if guides is not None:  # the held-out slices score maps fitted without them
            scored, final = guides.upsample(c, scaled, held)
        t0 = time.perf_counter()
        errors, curve = validate(scored, problem.grid, scaled, held,
                                 own_masks, config.slice_profile, config.consistency_iterations,
                                 config.profile_samples, sigmas, torch.get_num_threads(), region)
        scoring_s += time.perf_counter() - t0
        validation[c] = heldout_summary(errors, span, config.consistency_iterations, curve)
        validation[c]["stacks"] = [heldout_summary([e], span) for e in errors]  # in stack order
        volumes[c] = enforce_consistency(final, problem.grid, scaled, config.slice_profile,
                                         config.consistency_iterations, config.profile_samples,
                                         noise=sigmas, workers=torch.get_num_threads(), region=region)
        log.info("%s: held-out slices %s", c, describe_gain(validation[c]))
    return volumes, validation, network_volumes, scoring_s


def _settings(config: SRConfig, problem: _Problem, tcfg: TrainConfig, stacks: Sequence[Stack],
              reference: int) -> dict:
    return {"model": problem.spec.to_dict(), "slice_profile": config.slice_profile,
            "profile_samples": config.profile_samples, "seed": config.seed,
            "background_fraction": config.background_fraction,
            "intensity_scaling": config.intensity_scaling, "compiled": tcfg.compile,
            "max_train_seconds": config.max_train_seconds,
            "consistency_iterations": config.consistency_iterations,
            "learn_profile": config.learn_profile,
            "refine_registration": config.refine_registration,
            "poses_refined": bool(problem.acquisition.rotation.requires_grad),
            "profiles_learned": bool(problem.acquisition.log_width.requires_grad),
            "holdout_fraction": config.holdout_fraction, "reference_stack": stacks[reference].name,
            "guided_upsampling": config.guided_upsampling,
            "mi_stopping": {"enabled": config.mi_stopping, "window": tcfg.mi_window,
                            "tolerance_nats": tcfg.mi_tolerance, "min_epochs": tcfg.min_epochs},
            "output_spacing_mm": float(problem.grid.spacing[0]),
            "intensity_scalers": {s.name: asdict(sc) for s, sc in zip(stacks, problem.scalers)}}


def super_resolve(stacks: Sequence[Stack], config: SRConfig = SRConfig(), grid: Grid | None = None,
                  reference: int | None = None, progress: Callable[[dict], None] | None = None,
                  on_epoch_end: Callable[[int, torch.nn.Module], None] | None = None) -> SRResult:
    """Fit one multi-contrast INR to a subject's stacks and sample it on an isotropic grid.

    Parameters
    ----------
    stacks
        Co-registered stacks (affines already map every stack to the same scanner space).
        One contrast gives a single-contrast INR; several stacks per contrast are allowed.
    config
        Model and training settings; unset ones (None) take the model's value
        (:meth:`SRConfig.resolved`).
    grid
        Output grid; default: isotropic at ``config.output_spacing`` (else the finest
        in-plane spacing) covering all stacks, oriented as the reference stack.
    reference
        Index of the reference stack (its pose stays fixed); default
        :func:`~bids_mcsr.image.geometry.pick_reference`.
    progress
        Called after every epoch with a dict of epoch, loss, MI, seconds and points/s.
    on_epoch_end
        Called after every epoch with the epoch and the network.
    """
    if not stacks:
        raise ValueError("super_resolve needs at least one stack")
    config = config.resolved()
    if config.slice_profile not in PROFILES:
        raise ValueError(f"unknown slice profile {config.slice_profile!r}; choose from {PROFILES}")
    t0 = time.perf_counter()
    if config.threads:
        torch.set_num_threads(int(config.threads))
    device = select_device(config.device)
    check_overlap(stacks)
    if reference is None:
        reference = pick_reference([s.voxel_sizes for s in stacks])
    grid = grid or make_output_grid(stacks, config.output_spacing, reference)
    problem = _problem(stacks, config, grid, reference)
    t_train = time.perf_counter()
    with reproducible(device):
        model, hist, tcfg, plan, scored_pred = _train(problem, config, device, progress, on_epoch_end)
        del problem.samples  # not needed past training: frees memory for inference and back-projection
        t_infer = time.perf_counter()
        pred = predict_grid(model, problem.frame, grid, device, plan.chunk)
    t_consistency = time.perf_counter()
    noise = [estimate_noise(s) for s in stacks]
    volumes, validation, network_volumes, scoring_s = _to_volumes(pred, scored_pred, stacks, problem,
                                                                  noise, config)
    t_end = time.perf_counter()
    timings = {"setup_s": t_train - t0, "training_s": t_infer - t_train,
               "inference_s": t_consistency - t_infer, "consistency_s": t_end - t_consistency,
               "heldout_scoring_s": scoring_s}
    acquisition_report = [describe_acquisition(s, f, h, problem.scalers[k], noise[k]) for k, (s, f, h)
                          in enumerate(zip(stacks, problem.acquisition.fitted(), problem.heldout))]
    mi_values = [m for m in hist.mi if m is not None]
    return SRResult(contrasts=problem.contrasts, volumes=volumes, grid=grid,
                    mask=problem.mask.astype(np.uint8), history=hist.to_dict(),
                    stopped_epoch=hist.stopped_epoch, epochs_run=len(hist.epoch),
                    final_mi=mi_values[-1] if mi_values else None, runtime_s=t_end - t0,
                    device=describe(device), settings=_settings(config, problem, tcfg, stacks, reference),
                    timings=timings, acquisition=acquisition_report, validation=validation,
                    network_volumes=network_volumes)
