"""The INR core on a truth-known phantom: it trains, beats cubic interpolation, stops on MI,
and is deterministic for a seed."""

import dataclasses
import time

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from bids_mcsr.acquisition.holdout import choose_heldout
from bids_mcsr.acquisition.simulate import simulate_stack
from bids_mcsr.acquisition.slice_profile import resimulate_stack
from bids_mcsr.evaluation.phantom import mni_truth
from bids_mcsr.image.geometry import CoordinateFrame, Grid
from bids_mcsr.image.io import Stack
from bids_mcsr.image.metrics import cubic_baseline, psnr, ssim
from bids_mcsr.inr.acquisition_fit import StackAcquisition
from bids_mcsr.inr.config import SRConfig
from bids_mcsr.inr.losses import heldout_errors
from bids_mcsr.inr.model import build_model
from bids_mcsr.inr.presets import model_spec
from bids_mcsr.inr.sampling import build_samples, stack_masks_and_scalers
from bids_mcsr.inr.stopping import mean_pairwise_mi, mi_plateaued
from bids_mcsr.inr.superres import (
    WIDTH_MAX_CONTRASTS,
    WIDTH_MIN_SLICE_VOXELS,
    learns_profiles,
    refines_poses,
    slice_foreground,
    super_resolve,
)
from bids_mcsr.inr.training import TrainConfig, train

# 2 mm truth, 6 mm slices: a 3x anisotropic T1w (axial) and T2w (coronal)
THICKNESS = 6.0


@pytest.fixture(scope="module")
def phantom():
    vols, affine = mni_truth(2)
    t1 = Stack(*simulate_stack(vols["T1w"], affine, 2, THICKNESS), "T1w", "sub-01_T1w.nii.gz")
    t2 = Stack(*simulate_stack(vols["T2w"], affine, 1, THICKNESS), "T2w", "sub-01_T2w.nii.gz")
    grid = Grid(vols["T1w"].shape, affine)
    mask = vols["T1w"] > 0.05 * vols["T1w"].max()
    return vols, [t1, t2], grid, mask


@pytest.fixture(scope="module")
def fitted(phantom):
    vols, stacks, grid, _ = phantom
    return super_resolve(stacks, SRConfig(model="fast", epochs=4, mi_stopping=False, seed=0), grid=grid)


@pytest.mark.slow
def test_training_reduces_loss_and_tracks_mi(fitted):
    n = fitted.epochs_run
    assert n == 4 and fitted.device.startswith(("cpu", "cuda"))
    for contrast in ("T1w", "T2w"):
        loss = fitted.history["loss"][contrast]
        assert len(loss) == n and loss[-1] < loss[0] / 5
        held = fitted.history["heldout_mse"][contrast]
        # scored for the first half of the epochs; then the held-out slices join the training
        assert len(held) == n and None not in held[:2] and held[2:] == [None, None]
    assert fitted.history["heldout_joined_after"] == 2
    mean_held = np.mean([fitted.history["heldout_mse"][c][:2] for c in ("T1w", "T2w")], axis=0)
    assert fitted.history["best_epoch"] == int(np.argmin(mean_held)) + 1
    assert all(m is not None and m > 0 for m in fitted.history["mi"])
    assert fitted.final_mi == fitted.history["mi"][-1]


@pytest.mark.slow
def test_held_out_slices_rank_fits_as_the_truth_does(phantom, fitted):
    """A one-epoch fit is worse than the default by the truth, and by its held-out slices,
    for every contrast; the held-out gain over cubic has the truth's sign."""
    vols, stacks, grid, mask = phantom
    weak = super_resolve(stacks, SRConfig(model="fast", epochs=1, mi_stopping=False, seed=0), grid=grid)
    for stack in stacks:
        c = stack.contrast
        truth_gap = psnr(fitted.volumes[c], vols[c], mask) - psnr(weak.volumes[c], vols[c], mask)
        held_gap = fitted.validation[c]["sr_psnr"] - weak.validation[c]["sr_psnr"]
        assert truth_gap > 0.3 and held_gap > 0.3, (c, truth_gap, held_gap)
        cubic = cubic_baseline([stack], grid)
        true_gain = psnr(fitted.volumes[c], vols[c], mask) - psnr(cubic, vols[c], mask)
        assert np.sign(fitted.validation[c]["gain_db"]) == np.sign(true_gain), c


@pytest.mark.slow
def test_multicontrast_sr_beats_cubic_bspline(phantom, fitted):
    """Stated margin: at least +1.5 dB PSNR and +0.03 SSIM over cubic B-spline, per contrast."""
    vols, stacks, grid, mask = phantom
    for stack in stacks:
        c = stack.contrast
        cubic = cubic_baseline([stack], grid)
        gain_psnr = psnr(fitted.volumes[c], vols[c], mask) - psnr(cubic, vols[c], mask)
        gain_ssim = ssim(fitted.volumes[c], vols[c], mask) - ssim(cubic, vols[c], mask)
        assert gain_psnr > 1.5, (c, gain_psnr)
        assert gain_ssim > 0.03, (c, gain_ssim)


@pytest.mark.slow
def test_output_is_on_the_grid_in_input_intensity_scale(phantom, fitted):
    vols, _, grid, mask = phantom
    assert fitted.volumes["T1w"].shape == grid.shape
    assert np.allclose(fitted.to_nifti("T1w").affine, grid.affine)
    # mapped back to the input scale: the brain's median within 10% of the truth's
    for c in ("T1w", "T2w"):
        assert np.isclose(np.median(fitted.volumes[c][mask]), np.median(vols[c][mask]), rtol=0.1)
    # the LR-derived mask covers the head
    assert (fitted.mask.astype(bool) & mask).sum() > 0.95 * mask.sum()


def test_mi_plateau_rule():
    assert not mi_plateaued([1.0, 0.9, 0.8], window=4)
    assert not mi_plateaued([1.0, 0.9, 0.8, 0.7, 0.6], window=4, tolerance=1e-3)
    assert mi_plateaued([1.0, 0.9, 0.9005, 0.9, 0.9004, 0.9001], window=4, tolerance=1e-3)
    rng = np.random.default_rng(0)
    a = rng.random(5000)
    unrelated = mean_pairwise_mi(np.stack([a, rng.random(5000)], 1))
    assert mean_pairwise_mi(np.stack([a, a ** 2], 1)) > unrelated + 1
    assert mean_pairwise_mi(a[:, None]) is None


def small_case():
    vols, affine = mni_truth(2)
    crop = (slice(20, 60), slice(25, 73), slice(20, 60))
    vols = {k: v[crop] for k, v in vols.items()}
    affine = affine.copy()
    affine[:3, 3] += affine[:3, :3] @ np.array([20, 25, 20])
    return [Stack(*simulate_stack(vols["T1w"], affine, 2, THICKNESS), "T1w", "t1.nii.gz"),
            Stack(*simulate_stack(vols["T2w"], affine, 0, THICKNESS), "T2w", "t2.nii.gz")]


def small_samples_and_model():
    """Point-sampled training set of ``small_case``, a fresh fast model for it and the
    stacks' fixed acquisition parameters."""
    stacks = small_case()
    frame = CoordinateFrame.from_stacks(stacks)
    masks, scalers = stack_masks_and_scalers(stacks)
    samples = build_samples(stacks, ["T1w", "T2w"], frame, scalers, masks, "none")
    acquisition = StackAcquisition(stacks, frame, samples.profiled, "none", learn_profile=False,
                                   refine_pose=False, reference=0)
    return samples, build_model(model_spec("fast"), 2, 2 * frame.half_extent_mm), acquisition


@pytest.mark.slow
def test_held_out_slices_join_the_training_after_they_are_scored():
    """Halfway through, the network as it is goes to ``before_join`` and the held-out slices
    then train: at the end the network reproduces them far better than a fit that never
    trains on them (same seed, same epochs)."""
    stacks = small_case()
    frame = CoordinateFrame.from_stacks(stacks)
    masks, scalers = stack_masks_and_scalers(stacks)
    rng = np.random.default_rng(0)
    samples = build_samples(stacks, ["T1w", "T2w"], frame, scalers, masks, "none",
                            heldout=[choose_heldout(s, rng, 0.1) for s in stacks])
    errors = {}
    for joins_at in (0.5, 1.0):
        acquisition = StackAcquisition(stacks, frame, samples.profiled, "none", learn_profile=False,
                                       refine_pose=False, reference=0)
        model = build_model(model_spec("fast"), 2, 2 * frame.half_extent_mm, seed=0)
        seen = []
        cfg = TrainConfig(epochs=4, mi_stopping=False, min_steps_per_epoch=100, heldout_joins_at=joins_at)
        hist = train(model, acquisition, samples, ["T1w", "T2w"], cfg, torch.device("cpu"),
                     before_join=lambda m: seen.append(heldout_errors(m, samples, acquisition, 2,
                                                                      torch.device("cpu"))))
        errors[joins_at] = heldout_errors(model, samples, acquisition, 2, torch.device("cpu"))
        if joins_at == 1.0:
            assert seen == [] and hist.heldout_joined_after is None and None not in hist.heldout["T1w"]
        else:
            assert hist.heldout_joined_after == 2 and len(seen) == 1
            assert np.allclose(seen[0], [hist.heldout[c][1] for c in ("T1w", "T2w")])
            assert hist.heldout["T1w"][2:] == [None, None]
    assert np.all(errors[0.5] < 0.5 * errors[1.0]), errors


@pytest.mark.slow
def test_the_network_takes_its_full_rate_when_the_slab_widths_stop_learning():
    """While the widths learn the network trains at ``acquisition_network_lr_share`` of its
    rate; they stop when the held-out slices join, and from then on it follows the schedule
    of a fit that learns nothing. Poses keep learning after the join: there the share stays."""
    stacks = small_case()
    frame = CoordinateFrame.from_stacks(stacks)
    masks, scalers = stack_masks_and_scalers(stacks)
    rng = np.random.default_rng(0)
    profile = model_spec("fast").slice_profile
    samples = build_samples(stacks, ["T1w", "T2w"], frame, scalers, masks, profile,
                            heldout=[choose_heldout(s, rng, 0.1) for s in stacks])
    cfg = TrainConfig(epochs=4, mi_stopping=False, min_steps_per_epoch=4, coarse_to_fine=0)
    rates = {}
    for widths, poses in ((False, False), (True, False), (False, True)):
        acquisition = StackAcquisition(stacks, frame, samples.profiled, profile, learn_profile=widths,
                                       refine_pose=poses, reference=0)
        model = build_model(model_spec("fast"), 2, 2 * frame.half_extent_mm, seed=0)
        hist = train(model, acquisition, samples, ["T1w", "T2w"], cfg, torch.device("cpu"))
        assert hist.heldout_joined_after == 2
        rates[widths, poses] = np.array(hist.lr)
    share = cfg.acquisition_network_lr_share
    assert share < 1 and rates[False, False][0] > rates[False, False][-1] > 0
    assert np.allclose(rates[True, False][:2], share * rates[False, False][:2])
    assert np.allclose(rates[True, False][2:], rates[False, False][2:])
    assert np.allclose(rates[False, True], share * rates[False, False])


@pytest.mark.slow
def test_mi_early_stopping_fires_before_the_last_epoch():
    samples, model, acquisition = small_samples_and_model()
    mi_points = samples.coords[samples.foreground][:2000].numpy()
    cfg = TrainConfig(epochs=30, min_epochs=3, mi_window=2, mi_tolerance=0.05, min_steps_per_epoch=20)
    hist = train(model, acquisition, samples, ["T1w", "T2w"], cfg, torch.device("cpu"), mi_points)
    assert hist.stopped_early and hist.stopped_epoch < 30
    assert len(hist.mi) == hist.stopped_epoch


@pytest.mark.slow
def test_same_seed_same_output_and_single_contrast_runs():
    stacks = small_case()
    cfg = SRConfig(epochs=1, seed=3, threads=2)
    a = super_resolve(stacks, cfg)
    b = super_resolve(stacks, cfg)
    for c in a.contrasts:
        assert np.array_equal(a.volumes[c], b.volumes[c])
    c = super_resolve(stacks, SRConfig(epochs=1, seed=4))
    assert not np.array_equal(a.volumes["T1w"], c.volumes["T1w"])
    single = super_resolve(stacks[:1], SRConfig(epochs=1, slice_profile="none"))
    assert single.contrasts == ["T1w"] and single.final_mi is None


@pytest.mark.slow
def test_a_compiled_fit_on_two_threads_repeats_its_output_for_a_seed():
    """``torch.compile`` (whole heads' fits) made the hash grid's table gradient parallel
    atomic adds on a CPU, and two same-seed fits of this case differed."""
    stacks = small_case()
    cfg = SRConfig(epochs=2, seed=3, threads=2, compile=True)
    a, b = super_resolve(stacks, cfg), super_resolve(stacks, cfg)
    for c in a.contrasts:
        assert np.array_equal(a.volumes[c], b.volumes[c])


@pytest.mark.slow
def test_a_time_budget_stops_training():
    samples, model, acquisition = small_samples_and_model()
    cfg = TrainConfig(epochs=1000, min_steps_per_epoch=5, mi_stopping=False, max_seconds=2.0)
    start = time.perf_counter()
    hist = train(model, acquisition, samples, ["T1w", "T2w"], cfg, torch.device("cpu"))
    elapsed = time.perf_counter() - start
    assert hist.stopped_early and 1 <= hist.stopped_epoch < 1000
    assert len(hist.epoch) == hist.stopped_epoch
    # past the budget by one step and the epoch's bookkeeping at most (CI machines are slow);
    # the last recorded epoch may end just before it: a budget spent at an epoch's first step
    # stops there without recording that epoch
    assert 2.0 <= elapsed < 2.0 + 5.0
    assert hist.seconds[-1] < 2.0 + 5.0
    assert all(np.isfinite(v) for v in hist.loss["T1w"])
    # a budget spent at an epoch boundary (here: before the first step) still stops early
    spent = train(model, acquisition, samples, ["T1w", "T2w"],
                  TrainConfig(epochs=3, max_seconds=1e-9), torch.device("cpu"))
    assert spent.stopped_early and spent.epoch == [] and spent.stopped_epoch == 0


@pytest.mark.slow
def test_back_projection_makes_the_outputs_reproduce_their_stacks():
    """Without held-out slices to choose from, every round runs (and halves the misfit)."""
    stacks = small_case()
    fixed = {"learn_profile": False, "refine_registration": False, "holdout_fraction": 0.0}
    on = super_resolve(stacks, SRConfig(epochs=1, seed=0, **fixed))
    off = super_resolve(stacks, SRConfig(epochs=1, seed=0, consistency_iterations=0, **fixed))

    def misfit(result, stack):
        predicted = resimulate_stack(result.volumes[stack.contrast], result.grid, stack,
                                     result.settings["slice_profile"])
        return float(np.sqrt(np.mean((predicted - stack.data) ** 2)))

    for stack in stacks:
        assert misfit(on, stack) < 0.5 * misfit(off, stack), stack.contrast
    assert on.settings["consistency_iterations"] == 3 and off.settings["consistency_iterations"] == 0


def test_poses_are_refined_when_a_stack_looks_misaligned(phantom):
    _, (t1, t2), _, _ = phantom
    turn = np.eye(4)
    turn[:3, :3] = Rotation.from_euler("x", 2, degrees=True).as_matrix()
    turn[:3, 3] = [2.0, 0.0, 0.0]
    off = t2.with_affine(turn @ t2.affine)  # 2 mm + 2 degrees: one voxel of this 2 mm phantom
    assert refines_poses([t1, t2], "auto", 0) is False
    assert refines_poses([t1, off], "auto", 0) is True
    assert refines_poses([t1, t2], True, 0) is True and refines_poses([t1, off], False, 0) is False
    assert refines_poses([t1], True, 0) is False  # nothing to refine against


@pytest.mark.slow
def test_refined_pose_recovers_an_injected_offset(phantom):
    """A stack left 2 mm + 2 degrees off its place is put back to within 0.6 mm and 0.8
    degrees by the pose refinement (the reference stack fixed); without the coarse-to-fine
    levels it stalled at 1.2 mm and 1.2 degrees (4 epochs on this phantom)."""
    _, (t1, t2), grid, _ = phantom
    turn = np.eye(4)
    turn[:3, :3] = Rotation.from_euler("xz", [2, 1], degrees=True).as_matrix()
    turn[:3, 3] = [2.0, -1.0, 1.0]
    off = t2.with_affine(turn @ t2.affine)
    res = super_resolve([t1, off], SRConfig(model="fast", epochs=4, mi_stopping=False, seed=0,
                                            refine_registration=True), grid=grid, reference=0)
    left = np.asarray(res.acquisition[1]["pose_correction"]) @ turn
    centre = off.affine[:3, :3] @ ((np.array(off.data.shape) - 1) / 2) + off.affine[:3, 3]
    shift = np.linalg.norm(left[:3, :3] @ centre + left[:3, 3] - centre)
    angle = np.degrees(np.arccos(np.clip((np.trace(left[:3, :3]) - 1) / 2, -1, 1)))
    assert res.settings["poses_refined"] and shift < 0.6 and angle < 0.8
    assert np.allclose(res.acquisition[0]["pose_correction"], np.eye(4))


def test_slab_widths_are_learned_when_a_header_declares_gaps_or_overlaps(phantom):
    _, (t1, t2), _, _ = phantom  # 6 mm slices declared 6 mm thick
    thin = t2.with_affine(t2.affine)
    thin.slice_thickness = 3.0  # 3 mm slices 6 mm apart, or a header at half the slab
    masks = [np.ones(s.data.shape, bool) for s in (t1, t2)]
    assert max(slice_foreground(s, m) for s, m in zip((t1, t2), masks)) < WIDTH_MIN_SLICE_VOXELS
    assert learns_profiles([t1, t2], "auto", masks) is False
    assert learns_profiles([t1, thin], "auto", masks) is True
    assert learns_profiles([t1, t2], True, masks) is True
    assert learns_profiles([t1, thin], False, masks) is False
    overlapping = t2.with_affine(t2.affine)
    overlapping.slice_thickness = 9.0  # 9 mm slabs 6 mm apart: modelled capped at the spacing
    assert learns_profiles([t1, overlapping], "auto", masks) is True


def test_slab_widths_are_learned_where_every_thick_stack_spans_a_head(phantom):
    _, (t1, t2), _, _ = phantom
    big = [np.ones(s.data.shape, bool) for s in (t1, t2)]
    for s, m in zip((t1, t2), big):  # the median slice: a head in fewer than half the slices is none
        other = tuple(a for a in range(3) if a != s.through_plane_axis)
        assert slice_foreground(s, m) == int(m.sum(axis=other)[0])
        index = [slice(None)] * 3
        index[s.through_plane_axis] = slice(0, m.shape[s.through_plane_axis] // 2 - 1)
        few = np.zeros_like(m)
        few[tuple(index)] = True
        assert slice_foreground(s, few) == 0
    wide = [t.with_data(np.pad(t.data, [(0, 0) if a == t.through_plane_axis else (60, 60)
                                        for a in range(3)])) for t in (t1, t2)]
    wide_masks = [np.ones(w.data.shape, bool) for w in wide]
    assert min(slice_foreground(w, m) for w, m in zip(wide, wide_masks)) >= WIDTH_MIN_SLICE_VOXELS
    assert learns_profiles(wide, "auto", wide_masks) is True
    assert learns_profiles([wide[0], t2], "auto", [wide_masks[0], big[1]]) is False  # one crop
    assert learns_profiles(wide, False, wide_masks) is False
    # a third contrast: the headers' widths, unless a header declares gaps or widths are asked for
    flair = dataclasses.replace(wide[1], contrast="FLAIR")
    assert WIDTH_MAX_CONTRASTS == 2
    assert learns_profiles([*wide, flair], "auto", [*wide_masks, wide_masks[1]]) is False
    assert learns_profiles([*wide, flair], True, [*wide_masks, wide_masks[1]]) is True
    gapped = dataclasses.replace(flair, slice_thickness=flair.slice_spacing / 2)
    assert learns_profiles([*wide, gapped], "auto", [*wide_masks, wide_masks[1]]) is True
