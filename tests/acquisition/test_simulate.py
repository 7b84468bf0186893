"""Simulation of thick-slice stacks, slice profiles and the data-consistency forward model."""

import numpy as np
import pytest
from nibabel.affines import apply_affine

from bids_mcsr.acquisition.simulate import simulate_stack
from bids_mcsr.acquisition.slice_profile import FWHM_TO_SIGMA, profile_offsets, resimulate_stack
from bids_mcsr.image.geometry import Grid
from bids_mcsr.image.intensity import IntensityScaler
from bids_mcsr.image.io import Stack
from bids_mcsr.image.metrics import psnr


def ramp_volume(shape=(30, 32, 40), zooms=(1.0, 1.0, 1.0)):
    affine = np.diag(list(zooms) + [1.0])
    affine[:3, 3] = [-10.0, 4.0, 20.0]
    world = apply_affine(affine, np.indices(shape).reshape(3, -1).T)
    # a smooth function of world position: linear in z, quadratic in x
    data = (2.0 * world[:, 2] + 0.01 * world[:, 0] ** 2).reshape(shape)
    return data.astype(np.float64), affine


@pytest.mark.parametrize("profile", ["none", "gaussian", "boxcar"])
@pytest.mark.parametrize("axis", [0, 2])
def test_slices_sit_where_the_affine_says(profile, axis):
    data, affine = ramp_volume()
    lr, lr_aff = simulate_stack(data, affine, axis=axis, thickness=4.0, spacing=5.0, profile=profile)
    assert lr.shape[axis] == int(np.floor(data.shape[axis] / 5.0))
    assert np.isclose(np.linalg.norm(lr_aff[:3, axis]), 5.0)
    # a symmetric profile leaves a function linear along the slice axis unchanged, so the
    # value of every LR voxel equals the function at its physical centre (away from the edges)
    world = apply_affine(lr_aff, np.indices(lr.shape).reshape(3, -1).T)
    expected = (2.0 * world[:, 2] + 0.01 * world[:, 0] ** 2).reshape(lr.shape)
    inner = [slice(None)] * 3
    inner[axis] = slice(1, -1)
    inner[0] = slice(2, -2) if axis != 0 else inner[0]
    assert np.allclose(lr[tuple(inner)], expected[tuple(inner)], atol=0.05)


def test_profile_offsets_are_normalised_with_the_right_width():
    off, w = profile_offsets("gaussian", 4.0, 5)
    assert np.isclose(w.sum(), 1)
    assert np.isclose(np.sum(w * off ** 2), (4.0 * FWHM_TO_SIGMA) ** 2)
    off, w = profile_offsets("boxcar", 4.0, 4)
    assert np.allclose(off, [-1.5, -0.5, 0.5, 1.5]) and np.allclose(w, 0.25)
    assert profile_offsets("none", 4.0, 5)[0].tolist() == [0.0]
    with pytest.raises(ValueError):
        profile_offsets("sinc", 4.0)


def test_resimulating_the_truth_reproduces_the_acquired_stack():
    rng = np.random.default_rng(1)
    from scipy.ndimage import gaussian_filter
    data = gaussian_filter(rng.random((40, 40, 40)), 2.0) * 100
    affine = np.eye(4)
    lr, lr_aff = simulate_stack(data, affine, axis=1, thickness=4.0, profile="gaussian")
    stack = Stack(lr, lr_aff, "T1w")
    again = resimulate_stack(data, Grid(data.shape, affine), stack, "gaussian", n_samples=7)
    inner = (slice(4, -4), slice(1, -1), slice(4, -4))
    assert psnr(again[inner], lr[inner], np.ones_like(lr[inner], bool)) > 35
    # a wrong profile is visibly less consistent than the right one
    wrong = resimulate_stack(data, Grid(data.shape, affine), stack, "none")
    assert psnr(wrong[inner], lr[inner], np.ones_like(lr[inner], bool)) < \
        psnr(again[inner], lr[inner], np.ones_like(lr[inner], bool)) - 3


def test_intensity_scaler_round_trip():
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, 100.0, size=(10, 10, 10)).astype(np.float32)
    sc = IntensityScaler.fit(x, x > 50)
    y = sc.forward(x)
    assert np.allclose(sc.inverse(y), x, rtol=1e-5, atol=1e-3)
    assert np.isclose(np.percentile(y[x > 50], 99.5), 1.0, atol=1e-4)
