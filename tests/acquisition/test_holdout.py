"""Held-out slices: which are withheld, how they are predicted, and how they choose the
back-projection rounds."""

import numpy as np
import pytest
from scipy import ndimage

from bids_mcsr.acquisition.backprojection import enforce_consistency, fill_from_neighbours, residual_gain
from bids_mcsr.acquisition.holdout import (
    EDGE,
    choose_heldout,
    heldout_errors,
    interpolate_heldout,
    single_slice,
    slice_mask,
    validate,
)
from bids_mcsr.acquisition.simulate import simulate_stack
from bids_mcsr.acquisition.slice_profile import spline_coefficients
from bids_mcsr.evaluation.phantom import mni_truth
from bids_mcsr.image.geometry import Grid
from bids_mcsr.image.intensity import foreground_mask
from bids_mcsr.image.io import Stack


def thick_stack(n_slices=40, axis=2):
    shape = [20, 22, 20]
    shape[axis] = n_slices
    zooms = [1.0, 1.0, 1.0]
    zooms[axis] = 4.0
    return Stack(np.zeros(shape, np.float32), np.diag(zooms + [1.0]), "T1w", "x.nii.gz")


def test_held_out_slices_are_few_inner_and_never_adjacent():
    rng = np.random.default_rng(0)
    for n in (10, 40, 120):
        stack = thick_stack(n)
        for _ in range(20):
            held = choose_heldout(stack, rng)
            assert len(held) == max(2, round(0.05 * n))
            assert held.min() >= EDGE and held.max() <= n - 1 - EDGE
            assert np.all(np.diff(held) > 1)
    assert choose_heldout(thick_stack(9), rng).size == 0  # too few slices to spare any
    iso = Stack(np.zeros((30, 30, 30), np.float32), np.eye(4), "T1w", "iso.nii.gz")
    assert choose_heldout(iso, rng).size == 0  # a 3D stack has no "between the slices"
    assert choose_heldout(thick_stack(40), rng, fraction=0.0).size == 0


def test_slice_helpers_follow_the_slice_axis():
    stack = thick_stack(12, axis=1)
    stack = stack.with_data(np.arange(stack.data.size, dtype=np.float32).reshape(stack.data.shape))
    mask = slice_mask(stack, [3, 7])
    assert mask.sum() == 2 * 20 * 20 and mask[:, 3].all() and mask[:, 7].all()
    one = single_slice(stack, 7)
    assert one.data.shape == (20, 1, 20) and np.array_equal(one.data[:, 0], stack.data[:, 7])
    assert np.allclose(one.affine[:3, 3], stack.affine[:3, :3] @ [0, 7, 0] + stack.affine[:3, 3])
    filled = fill_from_neighbours(stack.data, 1, [3])
    assert np.allclose(filled[:, 3], 0.5 * (stack.data[:, 2] + stack.data[:, 4]))
    assert np.array_equal(filled[:, 5], stack.data[:, 5])


def test_cubic_interpolation_of_held_out_slices_is_exact_for_a_smooth_stack():
    stack = thick_stack(30)
    z = np.arange(30, dtype=np.float32)
    stack = stack.with_data(np.broadcast_to(0.01 * z ** 3 - z ** 2 + 5 * z, stack.data.shape))
    held = [8, 15]
    assert np.allclose(interpolate_heldout(stack, held), stack.data[:, :, held], atol=1e-2)


@pytest.fixture(scope="module")
def head():
    vols, affine = mni_truth(2)
    truth = vols["T1w"]
    stack = Stack(*simulate_stack(truth, affine, 2, 6.0), "T1w", "sub-01_T1w.nii.gz")
    return truth, Grid(truth.shape, affine), stack


def test_the_truth_predicts_held_out_slices_better_than_cubic_interpolation(head):
    truth, grid, stack = head
    held = [10, 16]
    errors = heldout_errors(spline_coefficients(truth), grid, stack, held,
                            foreground_mask(stack.data), "gaussian")
    assert errors["n"] > 1000
    assert errors["sr"] < 0.1 * errors["cubic"]


def test_validation_leaves_held_out_slices_out_of_back_projection(head):
    truth, grid, stack = head
    held = [[10, 16]]
    mask = [foreground_mask(stack.data)]
    blurred = ndimage.gaussian_filter(truth, 1.5)
    errors, curve = validate(blurred, grid, [stack], held, mask, "gaussian", 2)
    assert len(curve) == 3 and curve[2] < curve[0]  # back-projection helps between slices too
    cheat = enforce_consistency(blurred, grid, [stack], "gaussian", 2)  # held-out slices used
    cheated = heldout_errors(spline_coefficients(cheat), grid, stack, held[0], mask[0], "gaussian")
    assert cheated["sr"] < 0.5 * errors[0]["sr"]  # so validate() must not have used them


def test_back_projection_stops_at_the_noise_floor(head):
    """A noisy stack's residual from the truth is noise: weighted back-projection leaves the
    volume almost as it is; classic back-projection copies the noise in."""
    truth, grid, stack = head
    rng = np.random.default_rng(0)
    sigma = 0.05 * float(np.percentile(stack.data, 99.5))
    noisy = stack.with_data(stack.data + rng.normal(0, sigma, stack.data.shape))
    axis = stack.through_plane_axis
    assert np.mean(residual_gain(noisy.data - stack.data, axis, sigma)) < 0.1
    assert residual_gain(noisy.data - stack.data, axis, None) == 1.0
    assert np.mean(residual_gain(10 * (noisy.data - stack.data), axis, sigma)) > 0.95
    classic = enforce_consistency(truth, grid, [noisy], "gaussian", 3)
    weighted = enforce_consistency(truth, grid, [noisy], "gaussian", 3, noise=[sigma])
    head_mask = truth > 0.05 * truth.max()
    err = lambda v: float(np.sqrt(np.mean((v - truth)[head_mask] ** 2)))  # noqa: E731
    assert err(weighted) < 0.3 * err(classic)
    # and where the residual is signal (a blurred start, clean stack) it still corrects
    blurred = ndimage.gaussian_filter(truth, 1.5)
    fixed = enforce_consistency(blurred, grid, [stack], "gaussian", 3, noise=[0.01 * sigma])
    assert err(fixed) < 0.8 * err(blurred)


def test_a_local_error_is_corrected_however_small_its_share_of_the_stack(head):
    """A lesion painted into the volume (here: a 6 mm blob the noisy stack does not show)
    is a small part of the residual's power: a gain for the whole stack leaves it; the
    local gain takes it out, and leaves the noise out elsewhere."""
    truth, grid, stack = head
    rng = np.random.default_rng(1)
    sigma = 0.03 * float(np.percentile(stack.data, 99.5))
    noisy = stack.with_data(stack.data + rng.normal(0, sigma, stack.data.shape))
    centre = np.argwhere(truth > 0.5 * truth.max()).mean(axis=0)
    blob = np.linalg.norm(np.indices(truth.shape) - centre[:, None, None, None], axis=0) < 3
    painted = truth + 0.3 * truth.max() * blob.astype(np.float32)
    residual = noisy.data - stack.data
    whole = np.mean(np.square(residual)) + 0.3 ** 2 * truth.max() ** 2 * blob.mean()
    assert 1 - sigma ** 2 / whole < 0.2  # one gain for the stack: the lesion mostly stays
    out = enforce_consistency(painted, grid, [noisy], "gaussian", 3, noise=[sigma])
    lesion = float(np.abs(out - truth)[blob].mean())
    assert lesion < 0.4 * float(np.abs(painted - truth)[blob].mean())
    head_mask = (truth > 0.05 * truth.max()) & ~ndimage.binary_dilation(blob, iterations=6)
    assert np.abs(out - truth)[head_mask].mean() < 0.25 * sigma  # no noise copied in
