"""Subject report: no-ground-truth metrics on known cases, files written, page renders."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
from report_synth import CHROMIUM, SHAPE, browser_dom, fake_fit, fake_result, phantom, stacks_of
from scipy import ndimage

from bids_mcsr.acquisition.slice_profile import SLAB_FWHM_OF_THICKNESS
from bids_mcsr.dataset.naming import qc_path
from bids_mcsr.image.alignment import alignment_check, misaligned
from bids_mcsr.image.geometry import Grid
from bids_mcsr.image.metrics import resample_to_grid
from bids_mcsr.qc.flags import ALIGNMENT_STEP_MM, verdict
from bids_mcsr.qc.measures import (
    data_consistency,
    mi_convergence,
    result_dict,
    sharpness,
    subject_metrics,
)
from bids_mcsr.qc.records import curves_tsv, mi_rule_epoch, qc_record, stack_rows
from bids_mcsr.reports.subject import write_subject_report, write_subject_report_from_files
from bids_mcsr.reports.subject_page import acquisition_table

BROKEN = {"gain_db": {"T2w": -1.0}, "shift_mm": {"T2w": 10.0}, "noise_percent": {"T2w": 19.4},
          "header_mm": 2.0}


def lead(text: str) -> str:
    """The report's first section (the verdict), tags stripped."""
    first = text.split("<section>")[1].split("</section>")[0]
    return re.sub(r"<[^>]+>", " ", first)


@pytest.fixture(scope="module")
def subject():
    volumes, affine = phantom()
    return volumes, affine, stacks_of(volumes, affine)


def test_data_consistency_of_truth_is_high_and_of_wrong_volumes_lower(subject):
    volumes, affine, stacks = subject
    grid = Grid(SHAPE, affine)
    for stack in stacks:
        truth = volumes[stack.contrast]
        perfect = data_consistency(truth, grid, stack, "gaussian")
        blurred = data_consistency(ndimage.gaussian_filter(truth, 2.0), grid, stack, "gaussian")
        shifted = data_consistency(np.roll(truth, 3, axis=1), grid, stack, "gaussian")
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
    assert text.index("<h2>Verdict</h2>") < text.index("<h2>Summary</h2>")
    verdict_text = lead(text)
    for contrast in ("T1w", "T2w"):
        assert (f"{contrast}: SR better than interpolation by 1.50 dB on held-out slices "
                "(SR 32.00 dB vs cubic 30.50 dB") in verdict_text
    assert "registration check: every stack matches the reference best where it is" in \
        verdict_text and "within 3 mm and 3°" in verdict_text
    assert "estimated noise" in verdict_text and "sub-01_T1w.nii.gz 1.2 %" in verdict_text
    acquisition = text.split("<h2>Acquisition and held-out slices</h2>")[1].split("</table>")[0]
    for header in ("header SliceThickness (mm)", "slice spacing (mm)", "fitted FWHM (mm)",
                   "pose shift (mm)", "noise (%)", "held-out SR PSNR (dB)",
                   "held-out cubic PSNR (dB)"):
        assert header in acquisition
    assert ("<td>sub-01_T1w.nii.gz</td><td>T1w</td><td>thick 2D</td><td>6</td><td>6</td>"
            "<td>5.7</td>") in acquisition
    assert acquisition.count("<td>32</td><td>30.5</td><td>1.5</td>") == 2
    # a healthy run: nothing red, no convergence alarm, data consistency demoted below
    assert 'class="flag"' not in text and "NOT converged" not in text
    assert "the MI plateau rule stops at epoch 8" in text
    assert "the held-out error was lowest at epoch 7" in text
    assert text.index("Data consistency after back-projection (not a quality measure)") > \
        text.index("<h2>Training</h2>")
    assert str(tmp_path) not in text
    record = json.loads(qc_path(tmp_path, "01", "2").read_text())
    assert record["session"] == "2" and record["status"] == "ok"
    assert record["provenance"]["step_times_s"] == {"register": 3.0, "superresolve": 12.5}
    assert record["per_contrast"]["T2w"]["dc_psnr_db"] > 35
    assert record["per_contrast"]["T2w"]["verdict"] == "better"
    assert record["per_contrast"]["T2w"]["flags"] == []
    assert [r["name"] for r in record["stacks"]] == ["sub-01_T1w.nii.gz",
                                                      "sub-01_acq-<b>&_T2w.nii.gz"]
    assert record["stacks"][1]["heldout_gain_db"] == pytest.approx(1.5)
    assert record["mi_rule_epoch"] == 8 and record["best_epoch"] == 7
    assert record["provenance"]["peak_memory_gb"] > 0 and record["provenance"]["version"]
    assert record["report"] == "sub-01_ses-2.html" and record["final_mi"] == pytest.approx(0.911)
    assert not list(tmp_path.rglob(".tmp-*"))


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed")
def test_report_renders_in_a_browser_with_every_image(tmp_path, subject):
    volumes, affine, stacks = subject
    html = write_subject_report(tmp_path, "01", None, stacks, 0, fake_result(volumes, affine),
                                {"superresolve": 12.5})
    dom = browser_dom(html, tmp_path)
    assert re.search(r'<body[^>]*data-images="ok"', dom), dom[:500]
    assert "Acquired vs super-resolved" in dom


@pytest.mark.slow
def test_report_from_the_files_of_a_real_tiny_fit(tmp_path, subject):
    from bids_mcsr.image.preprocess import save_stack
    from bids_mcsr.steps import superresolve

    volumes, affine, _ = subject
    coarse = np.diag([2.0, 2.0, 2.0, 1.0])
    stacks = stacks_of({c: v[::2, ::2, ::2] for c, v in volumes.items()}, affine @ coarse, 6.0)
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
    record = json.loads(qc_path(out, "01", None).read_text())
    assert html == str(out / "sub-01.html")
    assert record["epochs_run"] == 2 and record["mi_converged"] is False
    assert [i["file"] for i in record["inputs"]] == ["sub-01_T1w.nii.gz", "sub-01_T2w.nii.gz"]
    assert record["output_grid"]["spacing_mm"] == pytest.approx([4.0, 4.0, 4.0])
    for per in record["per_contrast"].values():
        assert np.isfinite(per["dc_psnr_db"]) and 0 < per["sharpness_ratio"] < 3
        # 12-13 slices of 6 mm: two held out per stack, scored against cubic
        assert per["heldout_voxels"] > 0 and np.isfinite(per["heldout_gain_db"])
        assert per["verdict"] in ("better", "no better", "worse")
    for row in record["stacks"]:
        assert len(row["heldout_slices"]) == 2 and np.isfinite(row["heldout_sr_psnr"])
        assert row["header_thickness_mm"] is None and row["spacing_mm"] == pytest.approx(6.0)
        assert row["fitted_fwhm_mm"] > 0 and row["noise_percent"] > 0
    text = (out / "sub-01.html").read_text()
    assert "held-out slices" in lead(text) and "NOT converged" not in text


def test_ssim_is_skipped_for_a_stack_thinner_than_its_window(subject):
    volumes, affine, stacks = subject
    thin = replace(stacks[0], data=stacks[0].data[:, :, :10])
    dc = data_consistency(volumes["T1w"], Grid(SHAPE, affine), thin, "gaussian")
    assert dc["ssim"] is None and dc["psnr_db"] > 35


def test_report_of_a_broken_run_flags_each_problem(tmp_path, subject):
    volumes, affine, stacks = subject
    result = fake_result(volumes, affine, fit=fake_fit(stacks, **BROKEN))
    text = write_subject_report(tmp_path, "01", None, stacks, 0, result, {}).read_text()
    flags = re.findall(r'<p class="flag">([^<]+)</p>', text.split("<h2>Summary</h2>")[0])
    assert flags[0].startswith("T2w: SR worse than interpolation by 1.00 dB")
    assert flags[1].startswith("registration looks wrong for sub-01_T2w.nii.gz: the fit "
                               "moved it by 10 mm")
    # the stacks are aligned: the fake 10 mm correction displaced T2w, which the alignment
    # check sees (moving it back by 5 mm along x matches the reference better)
    assert flags[2].startswith("registration looks wrong for sub-01_T2w.nii.gz: the reference "
                               "matches it better moved by -5 mm along world x")
    assert "sub-01_T2w.nii.gz 19 %" in flags[3]
    assert [f.split(":")[0] for f in flags[4:]] == ["slice profile of sub-01_T1w.nii.gz",
                                                    "slice profile of sub-01_T2w.nii.gz"]
    assert len(flags) == 6
    assert "T1w: SR better than interpolation by 1.50 dB" in lead(text)
    record = json.loads(qc_path(tmp_path, "01", None).read_text())
    assert [f.split(":")[0] for f in record["per_contrast"]["T2w"]["flags"]] == [
        "SR worse than interpolation on held-out slices", "registration looks wrong",
        "registration looks wrong", "noisy stack", "slice profile"]
    assert record["per_contrast"]["T2w"]["misaligned_stacks"] == 1
    assert record["stacks"][0]["alignment"] is None  # the reference


def test_report_without_held_out_slices_says_so(tmp_path, subject):
    volumes, affine, stacks = subject
    fit = fake_fit(stacks)
    for contrast in fit["validation"]:
        fit["validation"][contrast] = {"voxels": 0, "sr_psnr": None, "cubic_psnr": None,
                                       "gain_db": None, "consistency_rounds": 0,
                                       "consistency_curve_psnr": [], "stacks": []}
    text = write_subject_report(tmp_path, "01", None, stacks, 0,
                                fake_result(volumes, affine, fit=fit), {}).read_text()
    assert "T1w: no slice could be held out" in lead(text)
    assert 'class="flag"' not in text


@pytest.mark.parametrize("gain, expected", [(1.5, "better"), (0.21, "better"),
                                            (0.2, "no better"), (0.0, "no better"),
                                            (-0.2, "no better"), (-0.21, "worse"),
                                            (None, None), (float("nan"), None)])
def test_verdict_thresholds(gain, expected):
    assert verdict(gain) == expected


def test_mi_rule_epoch_replays_the_plateau_rule():
    settings = {"mi_stopping": {"window": 4, "tolerance_nats": 2e-3, "min_epochs": 6}}
    epochs = list(range(1, 11))
    flat = {"epoch": epochs, "mi": [0.5, 0.8, 0.9, 0.95, 0.951, 0.951, 0.951, 0.951, 0.951,
                                    0.951]}
    rising = {"epoch": epochs, "mi": [0.1 * e for e in epochs]}
    early = {"epoch": epochs, "mi": [0.9] * 10}  # flat at once: not before min_epochs
    assert mi_rule_epoch(flat, settings) == 8
    assert mi_rule_epoch(rising, settings) is None
    assert mi_rule_epoch(early, settings) == 6
    assert mi_rule_epoch({"epoch": [1, 2], "mi": [None, None]}, settings) is None


def test_qc_record_carries_the_quality_numbers(subject):
    volumes, affine, stacks = subject
    result = result_dict(fake_result(volumes, affine, fit=fake_fit(stacks, **BROKEN)))
    for entry in result["acquisition"]:  # the workflow's registered copies share one name
        entry["name"] = "registered.nii.gz"
    record = qc_record("01", None, ["T1w", "T2w"], result,
                       stack_names=["sub-01_T1w.nii.gz", "sub-01_T2w.nii.gz"])
    t2 = record["per_contrast"]["T2w"]
    assert t2["verdict"] == "worse" and t2["heldout_gain_db"] == pytest.approx(-1.0)
    assert t2["heldout_sr_psnr"] == pytest.approx(32.0)
    assert t2["heldout_cubic_psnr"] == pytest.approx(33.0)
    assert t2["consistency_rounds"] == 2 and t2["heldout_voxels"] == 900
    assert t2["pose_shift_max_mm"] == pytest.approx(10.0)
    assert t2["noise_percent_max"] == pytest.approx(19.4)
    assert t2["fwhm_ratio"] == pytest.approx(2.85 / SLAB_FWHM_OF_THICKNESS["gaussian"])  # synthetic: Gaussian
    assert t2["fwhm_header_mm"] == 2.0
    assert record["per_contrast"]["T1w"]["verdict"] == "better"
    assert [r["name"] for r in record["stacks"]] == ["sub-01_T1w.nii.gz", "sub-01_T2w.nii.gz"]
    assert record["stacks"][1]["heldout_gain_db"] == pytest.approx(-1.0)
    assert record["best_epoch"] == 7 and record["mi_rule_epoch"] == 8
    json.dumps(record)  # plain JSON


def test_training_curves_carry_the_held_out_error(subject):
    volumes, affine, _ = subject
    rows = curves_tsv(fake_result(volumes, affine).history).splitlines()
    assert rows[0].split("\t") == ["epoch", "loss_T1w", "loss_T2w", "heldout_mse_T1w",
                                   "heldout_mse_T2w", "mi", "seconds"]
    assert rows[1].split("\t")[3] == "0.02"


@pytest.mark.parametrize("shift, axis, flagged", [(0.0, 0, False), (10.0, 1, True),
                                                  (-8.0, 2, True), (1.0, 0, False)])
def test_alignment_check_sees_a_displaced_stack(subject, shift, axis, flagged):
    _, _, stacks = subject
    moved = np.eye(4)
    moved[axis, 3] = shift
    check = alignment_check(stacks[1].with_affine(moved @ stacks[1].affine), stacks[0], ALIGNMENT_STEP_MM)
    assert misaligned(check) is flagged, check
    if flagged:  # the better copy goes back towards the true place
        assert np.sign(check["offset_mm"][axis]) == -np.sign(shift)
    assert check["voxels"] > 1000


def test_acquisition_table_says_which_stacks_were_thick_2d_and_which_3d(subject):
    fit = fake_fit(subject[2])
    fit["acquisition"][0]["isotropic"] = True
    html = acquisition_table({"stacks": stack_rows(fit)})
    assert "<td>sub-01_T1w.nii.gz</td><td>T1w</td><td>3D</td>" in html
    assert "<td>sub-01_T2w.nii.gz</td><td>T2w</td><td>thick 2D</td>" in html
    del fit["acquisition"][1]["isotropic"]  # a record from before the field
    assert "<td>T2w</td><td>n/a</td>" in acquisition_table({"stacks": stack_rows(fit)})
