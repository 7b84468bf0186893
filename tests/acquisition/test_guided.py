"""Cross-contrast guided upsampling (local linear maps fitted on a contrast's own slices)."""

import numpy as np
import pytest
from scipy import ndimage

from bids_mcsr.acquisition.backprojection import coverage
from bids_mcsr.acquisition.guided import STACK_GUIDES_UP_TO, Guides, interpolated_stacks, local_linear_maps
from bids_mcsr.acquisition.simulate import simulate_stack
from bids_mcsr.evaluation.phantom import mni_truth
from bids_mcsr.image.geometry import Grid
from bids_mcsr.image.io import Stack
from bids_mcsr.image.metrics import cubic_baseline, resample_to_grid

SLAB_MM = 6.0  # 3 voxels of the 2 mm template


def test_local_maps_recover_a_linear_relation_between_guides_and_data():
    rng = np.random.default_rng(0)
    g1, g2 = rng.normal(size=(2, 20, 20, 5)).astype(np.float32)
    data = 2.0 * g1 - 1.0 * g2 + 3.0
    (a1, a2), b = local_linear_maps(data, [g1, g2], axis=2)
    inner = (slice(4, -4), slice(4, -4), slice(None))
    assert np.allclose(a1[inner], 2.0, atol=0.1) and np.allclose(a2[inner], -1.0, atol=0.1)
    assert np.allclose(b[inner], 3.0, atol=0.1)


@pytest.fixture(scope="module")
def lesion_case():
    """The template's T1w and T2w (2 mm, cropped) with a 20 mm lesion in the T2w only (the maps
    are fitted in windows of 5 voxels, 10 mm here), its
    axial 6 mm stack, and a T2w network volume that missed the lesion (as the split heads do
    between a stack's slices, where they follow the other contrasts)."""
    vols, affine = mni_truth(2)
    cut = tuple(slice((n - m) // 2, (n - m) // 2 + m) for n, m in zip(vols["T1w"].shape, (40, 48, 42)))
    t1, t2 = vols["T1w"][cut], vols["T2w"][cut]
    affine = affine.copy()
    affine[:3, 3] += affine[:3, :3] @ np.array([c.start for c in cut])
    ijk = np.indices(t2.shape)
    centre = np.array(t2.shape) // 2
    lesion = np.sum((ijk - centre[:, None, None, None]) ** 2, axis=0) <= 5.0 ** 2  # 20 mm across
    truth = t2 + 0.5 * t2.max() * lesion
    stack = Stack(*simulate_stack(truth, affine, 2, SLAB_MM), "T2w", "sub-01_T2w.nii.gz")
    volumes = {"T1w": t1.astype(np.float32), "T2w": t2.astype(np.float32)}
    return volumes, truth, lesion, Grid(truth.shape, affine), stack


def test_what_only_the_contrasts_own_slices_show_is_carried_between_them(lesion_case):
    volumes, truth, lesion, grid, stack = lesion_case
    scored, guided = Guides(volumes, grid, head(volumes), "gaussian").upsample("T2w", [stack])
    assert scored is guided  # nothing held out: one fit
    before = np.abs(volumes["T2w"] - truth)[lesion].mean()
    assert np.abs(guided - truth)[lesion].mean() < 0.5 * before
    # 14 mm (more than a window) and more from the lesion, where the network was exact, the maps stay
    # closer to it than the stack's own interpolation is (measured 2.3 % and 7.5 % of the truth)
    far = (truth > 0.05 * truth.max()) & (ndimage.distance_transform_edt(~lesion) * 2.0 >= 14.0)
    cubic = cubic_baseline([stack], grid)
    assert np.abs(guided - truth)[far].mean() < 0.5 * np.abs(cubic - truth)[far].mean()


def head(volumes):
    return volumes["T1w"] > 0.05 * volumes["T1w"].max()


def test_the_guides_unit_is_their_spread_in_the_head_not_the_background(lesion_case):
    """A whole head's grid is mostly background, where a network predicts tiny non-zero
    values: the guides' unit (hence the ridge term's strength) must not follow it."""
    volumes, _, _, grid, _ = lesion_case
    outside = ~head(volumes)
    with_background = {c: np.where(outside, 1e-6 * np.random.default_rng(0).random(v.shape), v)
                       .astype(np.float32) for c, v in volumes.items()}
    with_background = {c: np.pad(v, 40, constant_values=1e-6) for c, v in with_background.items()}
    clean = {c: np.pad(np.where(outside, 0, v), 40) for c, v in volumes.items()}
    padded = Grid(clean["T1w"].shape, grid.affine)
    mask = np.pad(head(volumes), 40)
    noisy = Guides(with_background, padded, mask, "gaussian")
    zeros = Guides(clean, padded, mask, "gaussian")
    assert mask.mean() < 0.1  # a box that is mostly background
    for c in volumes:
        assert noisy.final[c].scale == pytest.approx(zeros.final[c].scale, rel=1e-3)
        assert noisy.final[c].scale > 0.05 * float(np.percentile(volumes[c][head(volumes)], 99))


def test_one_contrast_alone_is_left_as_it_is(lesion_case):
    volumes, _, _, grid, stack = lesion_case
    alone = {"T2w": volumes["T2w"]}
    scored, final = Guides(alone, grid, head(volumes), "gaussian").upsample("T2w", [stack], [[3]])
    assert scored is alone["T2w"] and final is alone["T2w"]


def test_held_out_slices_do_not_enter_the_scored_fit_but_the_final_one(lesion_case):
    volumes, _, _, grid, stack = lesion_case
    k = stack.data.shape[2] // 2
    changed = stack.data.copy()
    changed[..., k] *= 1.5
    guides = Guides(volumes, grid, head(volumes), "gaussian")
    scored, final = guides.upsample("T2w", [stack], [[k]])
    scored_changed, final_changed = guides.upsample("T2w", [stack.with_data(changed)], [[k]])
    tol = 1e-3 * float(final.max())
    assert np.allclose(scored, scored_changed, atol=tol)
    assert not np.allclose(final, final_changed, atol=tol)
    assert np.allclose(final, guides.upsample("T2w", [stack])[1], atol=tol)


def test_the_scored_version_follows_its_own_networks_and_the_output_the_final_ones(lesion_case):
    """The network before the held-out slices joined its training guides the scored version:
    changing it changes the scored volume only."""
    volumes, _, _, grid, stack = lesion_case
    k = stack.data.shape[2] // 2
    earlier = {c: 0.8 * v for c, v in volumes.items()}
    earlier["T1w"] = np.roll(volumes["T1w"], 3, axis=0)
    both = Guides(volumes, grid, head(volumes), "gaussian", scored_volumes=earlier).upsample(
        "T2w", [stack], [[k]])
    final_only = Guides(volumes, grid, head(volumes), "gaussian").upsample("T2w", [stack], [[k]])
    scored_only = Guides(earlier, grid, head(volumes), "gaussian").upsample("T2w", [stack], [[k]])
    assert np.array_equal(both[1], final_only[1])
    assert np.array_equal(both[0], scored_only[0])
    assert not np.allclose(both[0], final_only[0], atol=1e-3 * float(final_only[0].max()))


def test_another_contrasts_stacks_show_what_the_networks_missed_between_the_slices(lesion_case):
    """A lesion in both contrasts that both network volumes missed: the T1w's coronal stack,
    interpolated, sees it along the T2w's axial slice normal at its in-plane resolution, and as
    a guide it puts the lesion back between the T2w's slices (measured: mean error inside the
    lesion 0.120 of the truth's maximum without it, 0.061 with it, 0.069 for the T2w's own cubic
    interpolation)."""
    volumes, truth, lesion, grid, stack = lesion_case
    t1_truth = volumes["T1w"] - 0.3 * volumes["T1w"].max() * lesion
    coronal = Stack(*simulate_stack(t1_truth, grid.affine, 1, SLAB_MM), "T1w", "sub-01_acq-cor_T1w.nii.gz")
    alone = Guides(volumes, grid, head(volumes), "gaussian").upsample("T2w", [stack])[1]
    guides = Guides(volumes, grid, head(volumes), "gaussian", stacks={"T1w": [coronal], "T2w": [stack]})
    assert guides.guides_of("T2w", stack) == ["T1w", "T2w", ("T1w",)]  # never its own stacks
    beside = guides.upsample("T2w", [stack])[1]
    parallel = Guides(volumes, grid, head(volumes), "gaussian", stacks={"T1w": [stack.with_data(stack.data)]})
    assert parallel.guides_of("T2w", stack) == ["T1w", "T2w"]  # nothing between the slices to show
    many = {f"c{i}": volumes["T1w"] for i in range(STACK_GUIDES_UP_TO - 1)}
    crowded = Guides({**volumes, **many}, grid, head(volumes), "gaussian", stacks={"T1w": [coronal]})
    assert crowded.guides_of("T2w", stack) == [*volumes, *many]  # beyond three contrasts: the networks
    cubic = cubic_baseline([stack], grid)

    def error(v):
        return float(np.abs(v - truth)[lesion].mean() / truth.max())
    assert error(beside) < 0.6 * error(alone)
    assert error(beside) < 0.95 * error(cubic)


def test_interpolated_stacks_keep_the_fill_outside_the_stacks_field_of_view(lesion_case):
    volumes, _, _, grid, stack = lesion_case
    half = stack.with_data(stack.data[:, :, : stack.data.shape[2] // 2])
    fill = np.full(grid.shape, -1.0, np.float32)
    out = interpolated_stacks([half], grid, fill)
    inside = coverage(half, grid)
    assert 0.3 < inside.mean() < 0.7
    assert np.all(out[~inside] == -1.0)
    assert np.allclose(out[inside], resample_to_grid(half, grid, order=3)[inside])
