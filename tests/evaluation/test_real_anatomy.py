"""The benchmarks' real-anatomy truth (``benchmarks/cases.real_anatomy_truth``): the rorden
subject's T1w with contrasts mapped from its own tissue classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
RORDEN = Path(__file__).resolve().parents[3] / "shared" / "data" / "rorden" / "chris_t1.nii.gz"


@pytest.mark.skipif(not RORDEN.exists(), reason="needs ../shared/data/rorden")
def test_real_anatomy_truth_keeps_the_subject_and_orders_its_tissues(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from cases import real_anatomy_truth

    vols, affine, mask = real_anatomy_truth((40, 48, 40))
    assert set(vols) == {"T1w", "T2w", "FLAIR"}
    assert all(v.shape == (40, 48, 40) and v.dtype == np.float32 for v in vols.values())
    np.testing.assert_allclose(np.diag(affine)[:3], 0.88, atol=1e-3)  # RAS, the subject's voxels
    assert 0.5 < mask.mean() <= 1.0  # a central crop: mostly head
    t1, t2, flair = (vols[k][mask] for k in ("T1w", "T2w", "FLAIR"))
    dark, bright = t1 < np.percentile(t1, 15), t1 > np.percentile(t1, 85)  # CSF-like, WM-like
    assert t2[dark].mean() > 1.5 * t2[bright].mean()  # T2w: fluid bright, white matter dark
    assert flair[dark].mean() < flair[bright].mean()  # FLAIR: fluid suppressed
    assert np.percentile(t1, 99.5) == pytest.approx(1000, rel=1e-3)
    # the subject's own fine structure: neighbouring voxels differ as in a real 0.88 mm image
    assert np.mean(np.abs(np.diff(vols["T2w"], axis=0))[mask[1:]]) > 5
    again = real_anatomy_truth((40, 48, 40))[0]  # the same classes every run (no random MRF order)
    assert all(np.array_equal(again[k], vols[k]) for k in vols)


@pytest.mark.skipif(not RORDEN.exists(), reason="needs ../shared/data/rorden")
def test_real_anatomy_brain_leaves_out_scalp_and_skull_and_keeps_the_ventricles(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from cases import real_anatomy_brain, real_anatomy_truth
    from scipy import ndimage

    vols, _, head = real_anatomy_truth((999, 999, 999))
    brain = real_anatomy_brain((999, 999, 999))
    assert brain.shape == head.shape and not (brain & ~head).any()
    assert 1.0 < brain.sum() * 0.88 ** 3 / 1e6 < 1.7  # litres: an adult brain, not a head (3.1)
    in_plane = np.zeros((3, 3, 1), bool)
    in_plane[:, 1, 0] = in_plane[1, :, 0] = True
    filled = np.stack([ndimage.binary_fill_holes(head[..., k]) for k in range(head.shape[2])], -1)
    rim = filled & ~ndimage.binary_erosion(filled, in_plane, iterations=6)  # outer 5 mm in-plane
    assert (brain & rim).sum() < 0.01 * rim.sum()
    labels, _ = ndimage.label(brain)
    assert np.bincount(labels[brain]).max() > 0.999 * brain.sum()  # one piece (and a few voxels)
    t1 = vols["T1w"]
    centre = tuple(int(c) for c in ndimage.center_of_mass(brain))
    box = tuple(slice(c - 10, c + 10) for c in centre)
    fluid = t1[box] < np.percentile(t1[brain], 5)  # the ventricles near the brain's centre
    assert fluid.sum() > 50 and brain[box][fluid].mean() > 0.98
    crop = real_anatomy_brain((72, 90, 72))  # the crop's brain is the whole head's, cropped
    assert crop.shape == (72, 90, 72) and crop.mean() > 0.6
