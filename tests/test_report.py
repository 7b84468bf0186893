"""Subject report: no-ground-truth metrics on known cases, files written, page renders."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from bids_mcsr.geometry import Grid
from bids_mcsr.metrics import resample_to_grid
from bids_mcsr.report import metrics_path, write_subject_report, write_subject_report_from_files
from bids_mcsr.report_metrics import data_consistency, mi_convergence, sharpness, subject_metrics
from report_synth import CHROMIUM, SHAPE, browser_dom, fake_result, phantom, stacks_of


@pytest.fixture(scope="module")
def subject():
    volumes, affine = phantom()
    return volumes, affine, stacks_of(volumes, affine)


def test_data_consistency_of_truth_is_high_and_of_wrong_volumes_lower(subject):
    volumes, affine, stacks = subject
    grid = Grid(SHAPE, affine)
    for stack in stacks:
        truth = volumes[stack.contrast]
        perfect = data_consistency(truth, grid, stack)
        blurred = data_consistency(ndimage.gaussian_filter(truth, 2.0), grid, stack)
        shifted = data_consistency(np.roll(truth, 3, axis=1), grid, stack)
        assert perfect["psnr_db"] > 35 and perfect["ssim"] > 0.99
        assert blurred["psnr_db"] < perfect["psnr_db"] - 10
        assert shifted["psnr_db"] < blurred["psnr_db"]
        assert shifted["ssim"] < 0.8


def test_sharpness_ratio_isotropic_near_one_and_blurred_through_plane_below(subject):
    volumes, affine, stacks = subject
    grid = Grid(SHAPE, affine)
    mask = volumes["T1w"] > 0.3 * volumes["T1w"].max()
    iso = sharpness(volumes["T1w"], mask, grid.spacing, 2)["sharpness_ratio"]
    z_blur = sharpness(ndimage.gaussian_filter1d(volumes["T1w"], 2.0, axis=2), mask,
                       grid.spacing, 2)["sharpness_ratio"]
    interpolated = sharpness(resample_to_grid(stacks[0], grid, order=3), mask,
                             grid.spacing, 2)["sharpness_ratio"]
    assert 0.9 < iso < 1.1
    assert z_blur < 0.6
    assert interpolated < 0.75


def test_mi_convergence_flat_vs_rising():
    flat = mi_convergence({"mi": [0.5, 0.9, 0.95, 0.951, 0.951, 0.951, 0.951]})
    rising = mi_convergence({"mi": [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]})
    single = mi_convergence({"mi": [None, None]})
    assert flat["mi_converged"] is True and abs(flat["final_mi_training"] - 0.951) < 1e-9
    assert rising["mi_converged"] is False
    assert rising["mi_change_last_epochs"] == pytest.approx(0.5)
    assert single["mi_converged"] is None


def test_subject_metrics_of_a_perfect_fit(subject):
    volumes, affine, stacks = subject
    metrics = subject_metrics(stacks, 0, fake_result(volumes, affine))
    assert [i["orientation"] for i in metrics["inputs"]] == ["RAS", "RAS"]
    assert metrics["inputs"][0]["voxel_size_mm"] == [2.0, 2.0, 6.0]
    assert metrics["inputs"][1]["through_plane_axis"] == 0
    for per in metrics["per_contrast"].values():
        assert per["dc_psnr_db"] > 35
        assert 0.9 < per["sharpness_ratio"] < 1.1
    assert metrics["mi_between_sr"]["T1w-T2w"] > 0.1
    assert metrics["mi_converged"] is True


def test_write_subject_report(tmp_path, subject):
    volumes, affine, stacks = subject
    odd = replace(stacks[1], path="/raw/sub-01/anat/sub-01_acq-<b>&_T2w.nii.gz")  # escaping
    stacks = [stacks[0], odd]
    html = write_subject_report(tmp_path, "01", "2", stacks, 0, fake_result(volumes, affine),
                                {"register": 3.0, "superresolve": 12.5}, {"nprocs": 2})
    assert html == tmp_path / "sub-01_ses-2.html"
    text = html.read_text()
    sources = re.findall(r'<img src="([^"]+)"', text)
    assert len(sources) == 4  # two contrasts, one registration, training
    for src in sources:
        assert src.startswith("sub-01/figures/sub-01_ses-2_desc-") and src.endswith(".png")
        assert (tmp_path / src).stat().st_size > 1000
    assert "acq-&lt;b&gt;&amp;_T2w" in text and "<b>&" not in text
    assert str(tmp_path) not in text
    record = json.loads(metrics_path(tmp_path, "01", "2").read_text())
    assert record["session"] == "2" and record["status"] == "ok"
    assert record["step_times_s"] == {"register": 3.0, "superresolve": 12.5}
    assert record["per_contrast"]["T2w"]["dc_psnr_db"] > 35
    assert record["peak_memory_gb"] > 0 and record["version"]
    assert not list(tmp_path.rglob(".tmp-*"))


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed")
def test_report_renders_in_a_browser_with_every_image(tmp_path, subject):
    volumes, affine, stacks = subject
    html = write_subject_report(tmp_path, "01", None, stacks, 0, fake_result(volumes, affine),
                                {"superresolve": 12.5})
    dom = browser_dom(html, tmp_path)
    assert re.search(r'<body[^>]*data-images="ok"', dom), dom[:500]
    assert "Acquired vs super-resolved" in dom


def test_report_from_the_files_of_a_real_tiny_fit(tmp_path, subject):
    from bids_mcsr.preprocess import save_stack
    from bids_mcsr.steps import superresolve

    volumes, affine, _ = subject
    coarse = np.diag([2.0, 2.0, 2.0, 1.0])
    stacks = stacks_of({c: v[::2, ::2, ::2] for c, v in volumes.items()}, affine @ coarse, 8.0)
    files = []
    for i, stack in enumerate(stacks):
        files.append(str(tmp_path / f"registered_{i}.nii.gz"))
        save_stack(stack, tmp_path / f"registered_{i}.nii.gz")
    sr = superresolve(files, ["T1w", "T2w"], [None, None], str(tmp_path / "sr"),
                      {"epochs": 2, "threads": 2, "output_spacing": 4.0})
    out = tmp_path / "out"
    html = write_subject_report_from_files(str(out), "01", None, files, ["T1w", "T2w"],
                                           [None, None], 0, sr, {"superresolve": 1.0},
                                           source_files=[s.path for s in stacks])
    record = json.loads(metrics_path(out, "01", None).read_text())
    assert html == str(out / "sub-01.html")
    assert record["epochs_run"] == 2 and record["mi_converged"] is False
    assert [i["file"] for i in record["inputs"]] == ["sub-01_T1w.nii.gz", "sub-01_T2w.nii.gz"]
    assert record["output_grid"]["spacing_mm"] == pytest.approx([4.0, 4.0, 4.0])
    for per in record["per_contrast"].values():
        assert np.isfinite(per["dc_psnr_db"]) and 0 < per["sharpness_ratio"] < 3


def test_ssim_is_skipped_for_a_stack_thinner_than_its_window(subject):
    volumes, affine, stacks = subject
    thin = replace(stacks[0], data=stacks[0].data[:, :, :10])
    dc = data_consistency(volumes["T1w"], Grid(SHAPE, affine), thin)
    assert dc["ssim"] is None and dc["psnr_db"] > 35
