"""The post-fit region: the post-fit steps work around the head only, and give there what
they give on the whole grid."""

import numpy as np
import pytest
from scipy import ndimage

from bids_mcsr.acquisition.backprojection import enforce_consistency
from bids_mcsr.acquisition.guided import Guides
from bids_mcsr.acquisition.region import (
    STACK_MARGIN_INPLANE,
    STACK_MARGIN_SLICES,
    post_fit_region,
    region_margin_mm,
    stack_voxels_near,
)
from bids_mcsr.acquisition.simulate import simulate_stack
from bids_mcsr.acquisition.slice_profile import resimulate_stack
from bids_mcsr.evaluation.phantom import mni_truth
from bids_mcsr.image.geometry import Grid
from bids_mcsr.image.io import Stack

SLAB_MM = 6.0


@pytest.fixture(scope="module")
def whole_head():
    """The 2 mm template's whole T1w and T2w (a box a third of which is head), an axial T2w
    and a coronal T1w stack, network volumes that lost detail, and the fit's foreground."""
    vols, affine = mni_truth(2, crop=False)
    truth = {c: vols[c].astype(np.float32) for c in ("T1w", "T2w")}
    grid = Grid(truth["T1w"].shape, affine)
    stacks = {"T2w": Stack(*simulate_stack(truth["T2w"], affine, 2, SLAB_MM), "T2w"),
              "T1w": Stack(*simulate_stack(truth["T1w"], affine, 1, SLAB_MM), "T1w")}
    networks = {c: ndimage.gaussian_filter(v, 1.5).astype(np.float32) for c, v in truth.items()}
    mask = ndimage.binary_fill_holes(truth["T1w"] > 0.05 * truth["T1w"].max())
    return truth, grid, stacks, networks, mask


def test_the_region_is_the_foreground_widened_along_every_axis():
    mask = np.zeros((9, 9, 9), bool)
    mask[4, 4, 4] = True
    grid = Grid(mask.shape, np.diag([1.0, 2.0, 3.0, 1.0]))
    region = post_fit_region(mask, grid, 3.0)
    assert [int(region.sum(axis=tuple(a for a in range(3) if a != b)).astype(bool).sum())
            for b in range(3)] == [7, 5, 3]  # 3 mm: 3, 2 and 1 voxels each side


def test_a_stacks_voxels_near_the_region_are_those_it_sees_there_and_a_margin():
    grid = Grid((40, 40, 40), np.eye(4))
    region = np.zeros(grid.shape, bool)
    region[18:22, 18:22, 18:22] = True
    stack = Stack(np.zeros((40, 40, 10), np.float32), np.diag([1.0, 1.0, 4.0, 1.0]), "T1w")
    near = stack_voxels_near(region, grid, stack)
    rows, cols, slices = (np.flatnonzero(near.any(axis=tuple(a for a in range(3) if a != b)))
                          for b in range(3))
    assert (rows.min(), rows.max()) == (18 - STACK_MARGIN_INPLANE, 21 + STACK_MARGIN_INPLANE)
    assert (cols.min(), cols.max()) == (18 - STACK_MARGIN_INPLANE, 21 + STACK_MARGIN_INPLANE)
    assert (slices.min(), slices.max()) == (5 - STACK_MARGIN_SLICES, 5 + STACK_MARGIN_SLICES)  # z 20


def test_re_simulating_some_voxels_gives_theirs_and_zero_elsewhere(whole_head):
    truth, grid, stacks, _, mask = whole_head
    stack = stacks["T2w"]
    near = stack_voxels_near(post_fit_region(mask, grid, region_margin_mm([stack], grid)), grid, stack)
    every = resimulate_stack(truth["T2w"], grid, stack, "gaussian")
    some = resimulate_stack(truth["T2w"], grid, stack, "gaussian", voxels=near)
    assert 0.2 < near.mean() < 0.8
    assert np.array_equal(some[near], every[near]) and not some[~near].any()


def test_back_projection_in_the_region_leaves_the_rest_and_matches_the_whole_grid_in_the_head(whole_head):
    truth, grid, stacks, networks, mask = whole_head
    region = post_fit_region(mask, grid, region_margin_mm(list(stacks.values()), grid))
    everywhere = enforce_consistency(networks["T2w"], grid, [stacks["T2w"]], "gaussian", 2)
    around = enforce_consistency(networks["T2w"], grid, [stacks["T2w"]], "gaussian", 2, region=region)
    assert region.mean() < 0.6
    assert np.array_equal(around[~region], networks["T2w"][~region])
    # the rounds changed the head by up to a quarter of its range; the region's by the same
    change = np.abs(everywhere - networks["T2w"])[mask].max()
    assert change > 0.1 * truth["T2w"].max()
    assert np.abs(around - everywhere)[mask].max() < 1e-3 * change


def test_guided_upsampling_in_the_region_is_the_networks_elsewhere_and_the_whole_grids_in_the_head(
        whole_head):
    truth, grid, stacks, networks, mask = whole_head
    region = post_fit_region(mask, grid, region_margin_mm(list(stacks.values()), grid))
    placed = {c: [s] for c, s in stacks.items()}
    everywhere = Guides(networks, grid, mask, "gaussian", stacks=placed).upsample("T2w", [stacks["T2w"]])[1]
    around = Guides(networks, grid, mask, "gaussian", region=region, stacks=placed).upsample(
        "T2w", [stacks["T2w"]])[1]
    assert np.array_equal(around[~region], networks["T2w"][~region])
    change = np.abs(everywhere - networks["T2w"])[mask].max()
    assert change > 0.1 * truth["T2w"].max()
    assert np.abs(around - everywhere)[mask].max() < 1e-3 * change
