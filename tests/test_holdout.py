"""Held-out slices: which are withheld, how they are predicted, and how they choose the
back-projection rounds."""

import numpy as np
import pytest
from scipy import ndimage

from bids_mcsr.consistency import choose_rounds
from bids_mcsr.geometry import Grid
from bids_mcsr.holdout import (EDGE, choose_heldout, fill_from_neighbours, heldout_errors,
                               interpolate_heldout, single_slice, slice_mask)
from bids_mcsr.intensity import foreground_mask
from bids_mcsr.io import Stack
from bids_mcsr.phantom import mni_truth
from bids_mcsr.simulate import simulate_stack
from bids_mcsr.slice_profile import spline_coefficients


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


def test_rounds_are_chosen_on_held_out_slices(head):
    """A blurred volume with clean stacks: back-projection pays, some rounds are kept.
    The truth with a very noisy stack: every round adds noise, none is kept."""
    truth, grid, stack = head
    held = [[10, 16]]
    mask = [foreground_mask(stack.data)]
    blurred = ndimage.gaussian_filter(truth, 1.5)
    volume, rounds, curve = choose_rounds(blurred, grid, [stack], held, mask, "gaussian", 3)
    assert rounds >= 1 and len(curve) == 4 and curve[rounds] == min(curve) < curve[0]
    rng = np.random.default_rng(0)
    noisy = stack.with_data(stack.data + rng.normal(0, 0.2 * stack.data.max(), stack.data.shape))
    volume, rounds, curve = choose_rounds(truth, grid, [noisy], held, mask, "gaussian", 3)
    assert rounds == 0 and np.array_equal(volume, truth.astype(np.float32))
    # held-out slices are left out of the rounds: their residual does not reach the volume
    far = choose_rounds(blurred, grid, [stack], [[]], mask, "gaussian", 1)[0]
    near = choose_rounds(blurred, grid, [stack], held, mask, "gaussian", 1)[0]
    k = 16
    centre = stack.affine @ np.array([0, 0, k, 1.0])
    gz = int(round((np.linalg.inv(grid.affine) @ centre)[2]))
    assert not np.allclose(far[:, :, gz], near[:, :, gz])
