"""Group level: table, page and flags from per-subject JSONs, with failed and missing units."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from bids_mcsr.derivatives import dataset_description, write_json
from bids_mcsr.group import robust_outliers, run_group, unit_rows
from bids_mcsr.qc import qc_record
from bids_mcsr.report import metrics_path, write_subject_report
from report_synth import CHROMIUM, browser_dom, fake_result, phantom, stacks_of

QC = "sub-{s}/qc/sub-{s}_desc-qc.json"


def test_robust_outliers_flags_only_the_injected_one():
    values = np.array([30.1, 29.8, 30.5, 31.0, 29.5, 30.2, 12.0, np.nan])
    assert robust_outliers(values).tolist() == [False] * 6 + [True, False]
    assert not robust_outliers(np.array([1.0, 50.0, 2.0])).any()  # too few to judge


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory):
    """Five finished subjects (05 an outlier), one failed, one without metrics, one missing."""
    root = tmp_path_factory.mktemp("group")
    raw = root / "raw"
    for label in ("01", "02", "03", "04", "05", "06", "07", "08"):
        (raw / f"sub-{label}" / "anat").mkdir(parents=True)
    (raw / "dataset_description.json").write_text('{"Name": "toy", "BIDSVersion": "1.10.0"}')
    out = root / "out"
    write_json(out / "dataset_description.json", dataset_description(raw))
    volumes, affine = phantom()
    stacks = stacks_of(volumes, affine)
    write_subject_report(out, "01", None, stacks, 0, fake_result(volumes, affine), {})
    template = json.loads(metrics_path(out, "01", None).read_text())
    spread = {"01": 0.0, "02": -1.0, "03": 1.0, "04": -0.5, "05": 0.5}
    for label, offset in spread.items():
        record = json.loads(json.dumps(template))
        record["subject"] = label
        for per in record["per_contrast"].values():
            per["dc_psnr_db"] = 40.0 + offset
            per["sharpness_ratio"] = 0.95 + 0.02 * offset
        if label == "05":
            record["per_contrast"]["T2w"]["dc_psnr_db"] = 26.0
            record["mi_converged"], record["mi_change_last_epochs"] = False, 0.2
        write_json(metrics_path(out, label, None), record)
        write_json(out / QC.format(s=label), qc_record(label, None, ["T1w", "T2w"],
                                                        {"final_mi": 0.9, "runtime_s": 12.0}))
    write_json(out / QC.format(s="06"),
               qc_record("06", None, ["T1w", "T2w"], error="register: no overlap"))
    write_json(out / QC.format(s="07"), qc_record("07", None, ["T1w"], {"final_mi": None}))
    assert run_group(out) == 0
    return out


def test_group_table(output_dir):
    df = pd.read_csv(output_dir / "group_desc-qc.tsv", sep="\t", na_values="n/a",
                     dtype={"subject": str})
    assert df.columns[0] == "name"
    assert len(df) == 5 * 2 + 2 + 1  # five ok x 2 contrasts, failed x 2, incomplete x 1
    assert df.set_index(["subject", "contrast"]).loc[("06", "T1w"), "status"] == "failed"
    assert df.set_index(["subject", "contrast"]).loc[("07", "T1w"), "status"] == "incomplete"
    ok = df[df["status"] == "ok"]
    assert ok["dc_psnr_db"].between(20, 45).all() and ok["mi_sr"].gt(0).all()


def test_group_page_flags_and_says_what_is_missing(output_dir):
    text = (output_dir / "group.html").read_text()
    flagged = text.split("<h2>Flagged</h2>")[1].split("</section>")[0]
    assert "outlier in dc_psnr_db: 26" in flagged and "MI not converged" in flagged
    assert "failed: register: no overlap" in flagged
    assert "incomplete: no report metrics" in flagged
    for good in ("sub-01", "sub-02", "sub-03", "sub-04"):
        assert good not in flagged
    assert "sub-08" in text.split("no QC record")[1].split("</p>")[0]
    assert len(re.findall(r"<svg", text)) == 7
    assert "<title>sub-05 T2w: 26</title>" in text
    assert '<a href="sub-01.html">' in text


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed")
def test_group_page_renders(output_dir, tmp_path):
    dom = browser_dom(output_dir / "group.html", tmp_path)
    assert re.search(r'<body[^>]*data-images="ok"', dom)
    assert "Metrics across subjects" in dom


def test_no_qc_is_a_one_line_error(tmp_path, capsys):
    assert run_group(tmp_path) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run the participant level first" in err
    assert not (tmp_path / "group.html").exists()


def test_sessions_are_separate_rows(tmp_path):
    for session in ("1", "2"):
        write_json(tmp_path / f"sub-01/ses-{session}/qc/sub-01_ses-{session}_desc-qc.json",
                   qc_record("01", session, ["T1w"], error="superres: out of memory"))
    assert run_group(tmp_path) == 0
    df = pd.read_csv(tmp_path / "group_desc-qc.tsv", sep="\t", dtype=str)
    assert df["name"].tolist() == ["sub-01_ses-1", "sub-01_ses-2"]
    assert (df["status"] == "failed").all()


def test_mi_of_contrast_keys_with_hyphens_is_matched_by_whole_pairs():
    contrasts = ["T1w", "ce-gadolinium_T1w", "T2w"]
    per = {"dc_psnr_db": 40.0, "dc_ssim": 0.9, "sharpness_ratio": 1.0}
    metrics = {"contrasts": contrasts, "per_contrast": {c: per for c in contrasts},
               "mi_between_sr": {"T1w-ce-gadolinium_T1w": 1.0, "T1w-T2w": 0.5,
                                 "ce-gadolinium_T1w-T2w": 0.2}}
    rows = unit_rows("01", None, {"qc": {"status": "ok"}, "metrics": metrics})
    assert {r["contrast"]: r["mi_sr"] for r in rows} == pytest.approx(
        {"T1w": 0.75, "ce-gadolinium_T1w": 0.6, "T2w": 0.35})
