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
