"""Truth-known lesions (bids_mcsr.evaluation.lesions) and the lesion benchmark's scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from bids_mcsr.evaluation.lesions import (
    CE_T1W,
    LESIONS,
    Lesion,
    build_lesion_case,
    lesion_scores,
    place_lesions,
    pooled_psnr,
)

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _head(shape=(56, 64, 56)):
    """An ellipsoidal head: white matter inside, a grey-matter rim, one slab of CSF."""
    idx = np.indices(shape, dtype=float)
    centre = (np.asarray(shape) - 1) / 2
    r = np.sqrt(sum(((idx[k] - centre[k]) / (0.48 * shape[k])) ** 2 for k in range(3)))
    head = r < 1
    wm, csf = head & (r < 0.8), head & (np.abs(idx[0] - centre[0]) < 2)
    gm = head & ~wm
    t1 = np.where(wm, 860, np.where(gm, 650, 0.0)) * ~csf + 300 * csf
    t2 = np.where(wm, 245, np.where(gm, 440, 0.0)) * ~csf + 800 * csf
    flair = np.where(wm, 385, np.where(gm, 560, 0.0)) * ~csf + 70 * csf
    vols = {k: v.astype(np.float32) for k, v in {"T1w": t1, "T2w": t2, "FLAIR": flair}.items()}
    return vols, np.eye(4), head


@pytest.fixture(scope="module")
def case():
    return build_lesion_case(*_head())


def test_lesions_are_separate_realistic_blobs_with_their_own_shell(case):
    union = np.zeros(case.head.shape, int)
    for lesion, region, shell in zip(case.lesions, case.regions, case.shells):
        diameter = 2 * (3 * region.sum() / (4 * np.pi)) ** (1 / 3)
        assert 0.7 * lesion.diameter_mm < diameter < 1.3 * lesion.diameter_mm, lesion.name
        assert 5 <= lesion.diameter_mm <= 15
        assert lesion.is_control == (lesion.name == "no lesion (control)")
        assert shell.sum() > region.sum() and not (shell & np.logical_or.reduce(case.regions)).any()
        union += region
    assert union.max() == 1


def test_each_contrast_shows_the_lesions_listed_for_it_and_no_other(case):
    base = _head()[0]
    base[CE_T1W] = base["T1w"]
    far = ndimage.distance_transform_edt(~np.logical_or.reduce(case.regions)) > 6
    for contrast, truth in case.truth.items():
        assert np.allclose(truth[far], base[contrast][far], atol=0.05)
        for lesion, score in zip(case.lesions, lesion_scores(truth, case, contrast)):
            assert score["sse"] == 0 and score["contrast_pct"] == score["truth_contrast_pct"]
            region = case.regions[case.lesions.index(lesion)]
            if not lesion.visible_in(contrast):
                assert np.allclose(truth[region], base[contrast][region], atol=0.01), lesion.name
    by_name = {les.name: k for k, les in enumerate(case.lesions)}
    scores = {c: lesion_scores(case.truth[c], case, c) for c in case.truth}
    assert scores["FLAIR"][by_name["FLAIR only"]]["truth_contrast_pct"] > 20
    assert scores["T2w"][by_name["T2/FLAIR only"]]["truth_contrast_pct"] > 10
    assert scores["T1w"][by_name["T1 black hole"]]["truth_contrast_pct"] < -20
    assert scores[CE_T1W][by_name["enhancing nodule"]]["truth_contrast_pct"] > 10
    k = by_name["enhancing tumour"]  # a bright rim around a dark core on ce-T1w only
    rim, core = case.rims[k], case.regions[k] & ~case.rims[k]
    assert case.truth[CE_T1W][rim].mean() > 1.5 * case.truth[CE_T1W][core].mean()
    assert case.truth["T1w"][rim].mean() < 1.2 * case.truth["T1w"][core].mean()
    assert sum(len([c for c in case.truth if les.visible_in(c)]) == 1 for les in LESIONS) >= 1


def test_a_painted_lesion_shows_as_false_contrast_and_region_error(case):
    k = [les.name for les in case.lesions].index("FLAIR only")
    painted = case.truth["T1w"].copy()
    painted[case.regions[k]] *= 1.3
    clean, bad = lesion_scores(case.truth["T1w"], case, "T1w"), lesion_scores(painted, case, "T1w")
    assert not bad[k]["visible"]
    assert bad[k]["contrast_pct"] - bad[k]["truth_contrast_pct"] > 10
    peak = float(np.ptp(case.truth["T1w"][case.head]))
    assert pooled_psnr([bad[k]], peak) < 30 and pooled_psnr([clean[k]], peak) > 100
    assert pooled_psnr([], peak) is None


def test_placement_refuses_a_volume_too_small():
    with pytest.raises(ValueError, match="no room"):
        place_lesions(np.ones((20, 20, 20), bool), (Lesion("big", 15.0, {"T1w": 0.5}),), 1.0)


@pytest.mark.slow
def test_benchmark_scores_and_painting_table(tmp_path, monkeypatch):
    """The benchmark end to end on a small crop with one training epoch per fit."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_lesions
    out = tmp_path / "lesions.json"
    assert bench_lesions.main(["--seeds", "0,1", "--rows", "0", "--epochs", "1", "--threads", "1",
                               "--crop", "56,64,56", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert set(row["summary"]) == {"cubic", "multi", "multi-net", "single"}
    cubic_t1 = row["summary"]["cubic"]["T1w"]
    assert np.isfinite(cubic_t1["lesion_psnr"][0]) and cubic_t1["psnr"][1] > 0  # seeds differ
    assert 0.5 < cubic_t1["kept"][0] < 1.2
    invisible = {(p["lesion"], p["contrast"]) for p in row["painting"]}
    assert invisible == {(les.name, c) for les in LESIONS for c in (
        "T1w", CE_T1W, "T2w", "FLAIR") if not les.visible_in(c)}
    assert row["painting"][-1]["lesion"] == "no lesion (control)"
    assert all(isinstance(p["multi_not_worse"], bool) for p in row["painting"])
