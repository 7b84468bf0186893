"""Derivative names, sidecars, dataset-level files, atomic writes, QC tables."""

import json
import os
import signal
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_mcsr.dataset.derivatives import acquired_as, stage_unit, write_failure
from bids_mcsr.dataset.description import BIDSIGNORE, dataset_description, init_output_dataset
from bids_mcsr.dataset.files import atomic_path, atomic_write
from bids_mcsr.dataset.naming import res_label
from bids_mcsr.dataset.publish import publish, recover_publish, staging_dir
from bids_mcsr.dataset.units import Run, SubjectSession
from bids_mcsr.dataset.validator import find_validator, validate
from bids_mcsr.qc.records import curves_tsv

OPTIONS = {"model": "fast", "bias_correction": "n4", "registration": "rigid", "seed": 3,
           "output_grid": None}
HISTORY = {"epoch": [1, 2], "loss": {"T1w": [0.5, 0.25], "T2w": [0.4, 0.2]},
           "mi": [None, 0.7], "seconds": [1.0, 2.0]}


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "Raw", "BIDSVersion": "1.10.0", "DatasetDOI": "doi:10.1/x"}))
    return root


@pytest.fixture
def unit() -> SubjectSession:
    return SubjectSession("01", "a", [
        Run("/r/t1.nii.gz", "sub-01/ses-a/anat/sub-01_ses-a_T1w.nii.gz", "T1w", {}),
        Run("/r/t2.nii.gz", "sub-01/ses-a/anat/sub-01_ses-a_T2w.nii.gz", "T2w", {})])


def _fit_outputs(folder: Path) -> tuple[dict, dict, dict]:
    folder.mkdir()
    volumes = {}
    for contrast in ("T1w", "T2w"):
        img = nib.Nifti1Image(np.random.default_rng(0).random((6, 6, 6), np.float32), np.eye(4))
        img.header.set_xyzt_units("mm")
        volumes[contrast] = str(folder / f"{contrast}.nii.gz")
        nib.save(img, volumes[contrast])
    nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.uint8), np.eye(4)), str(folder / "m.nii.gz"))
    (folder / "xfm.txt").write_text("identity\n")
    result = {"spacing": [1.0, 1.0, 1.0], "settings": {"slice_profile": "gaussian"},
              "epochs_run": 2, "stopped_epoch": 2, "final_mi": 0.7, "runtime_s": 5.0,
              "device": "cpu", "history": HISTORY}
    transforms = {"T1w": str(folder / "xfm.txt"), "T2w": str(folder / "xfm.txt")}
    return {"volumes": volumes, "mask": str(folder / "m.nii.gz")}, result, transforms


@pytest.mark.parametrize("spacing, label", [((1, 1, 1), "1mm"), ((0.8, 0.8, 0.8), "0p8mm"),
                                            ((1.25,) * 3, "1p25mm"), ((1, 1, 2), "ref")])
def test_res_label(spacing, label):
    assert res_label(spacing) == label


def test_dataset_description(raw, monkeypatch):
    monkeypatch.delenv("BIDS_MCSR_CONTAINER_TYPE", raising=False)
    desc = dataset_description(raw)
    assert desc["DatasetType"] == "derivative"
    assert {"Name", "Version", "CodeURL"} <= set(desc["GeneratedBy"][0])
    assert "Container" not in desc["GeneratedBy"][0]
    assert desc["DatasetLinks"]["raw"] == raw.resolve().as_uri()
    assert desc["SourceDatasets"][0]["DOI"] == "doi:10.1/x"
    monkeypatch.setenv("BIDS_MCSR_CONTAINER_TYPE", "docker")
    monkeypatch.setenv("BIDS_MCSR_CONTAINER_TAG", "bids-mcsr:1")
    container = dataset_description(raw)["GeneratedBy"][0]["Container"]
    assert container == {"Type": "docker", "Tag": "bids-mcsr:1"}


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "a" / "x.json"
    atomic_write(target, "{}")
    atomic_write(target, b"[]")
    assert target.read_text() == "[]"
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a" / "y.nii.gz") as tmp:
            assert tmp.name.endswith(".nii.gz")
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.json"]


def _write_unit(tmp_path: Path, raw: Path, unit: SubjectSession) -> Path:
    out = tmp_path / "out"
    init_output_dataset(out, raw)
    sr, result, transforms = _fit_outputs(tmp_path / "fit")
    staging = staging_dir(out, unit.name)
    stage_unit(staging, unit, sr, result, transforms, "T1w", OPTIONS)
    assert not (out / "sub-01").exists()  # nothing visible before publishing
    publish(staging, out, unit)
    assert not staging.exists()
    return out


def test_staged_unit_names_and_sidecars(tmp_path, raw, unit):
    out = _write_unit(tmp_path, raw, unit)
    anat = out / "sub-01" / "ses-a" / "anat"
    assert sorted(p.name for p in anat.iterdir()) == [
        "sub-01_ses-a_from-T2w_to-T1w_mode-image_xfm.txt",
        "sub-01_ses-a_res-1mm_desc-foreground_mask.json",
        "sub-01_ses-a_res-1mm_desc-foreground_mask.nii.gz",
        "sub-01_ses-a_res-1mm_desc-sr_T1w.json",
        "sub-01_ses-a_res-1mm_desc-sr_T1w.nii.gz",
        "sub-01_ses-a_res-1mm_desc-sr_T2w.json",
        "sub-01_ses-a_res-1mm_desc-sr_T2w.nii.gz",
    ]
    sidecar = json.loads((anat / "sub-01_ses-a_res-1mm_desc-sr_T2w.json").read_text())
    assert sidecar["Sources"] == ["bids:raw:sub-01/ses-a/anat/sub-01_ses-a_T1w.nii.gz",
                                  "bids:raw:sub-01/ses-a/anat/sub-01_ses-a_T2w.nii.gz"]
    assert sidecar["SkullStripped"] is False
    assert sidecar["Resolution"].startswith("1x1x1 mm")
    assert (sidecar["Seed"], sidecar["EpochsRun"], sidecar["FinalMI"]) == (3, 2, 0.7)
    assert {"Model", "ModelSettings", "RuntimeSeconds", "Device"} <= set(sidecar)
    assert "Acquired" not in sidecar  # the result records no acquisition
    qc = json.loads((out / "sub-01/ses-a/qc/sub-01_ses-a_desc-qc.json").read_text())
    assert qc["status"] == "ok" and qc["contrasts"] == ["T1w", "T2w"]
    assert qc["per_contrast"]["T2w"]["final_loss"] == 0.2
    curves = (out / "sub-01/ses-a/qc/sub-01_ses-a_desc-training_curves.tsv").read_text()
    assert curves.splitlines()[0] == "epoch\tloss_T1w\tloss_T2w\tmi\tseconds"


def test_sidecars_say_which_contrast_came_from_a_3d_acquisition(tmp_path, unit):
    sr, result, transforms = _fit_outputs(tmp_path / "fit")
    result["acquisition"] = [{"contrast": "T1w", "isotropic": True},
                             {"contrast": "T2w", "isotropic": False}]
    stage_unit(tmp_path / "staged", unit, sr, result, transforms, "T1w", OPTIONS)
    anat = tmp_path / "staged" / "sub-01" / "ses-a" / "anat"
    t1 = json.loads((anat / "sub-01_ses-a_res-1mm_desc-sr_T1w.json").read_text())
    t2 = json.loads((anat / "sub-01_ses-a_res-1mm_desc-sr_T2w.json").read_text())
    assert t1["Acquired"] == "3D" and "acquired 3D" in t1["Description"]
    assert "not super-resolved" in t1["Description"]
    assert t2["Acquired"] == "thick 2D" and "super-resolved jointly" in t2["Description"]


@pytest.mark.parametrize("kinds, expected", [((True,), "3D"), ((False, False), "thick 2D"),
                                             ((True, False), "3D and thick 2D"),
                                             ((True, None), None), ((), None)])
def test_acquired_as(kinds, expected):
    result = {"acquisition": [{"contrast": "T1w", "isotropic": k} for k in kinds]
              + [{"contrast": "T2w", "isotropic": True}]}
    assert acquired_as(result, "T1w") == expected


class _Stop(BaseException):
    pass


def _raise_stop(signum, frame):
    raise _Stop()


def test_a_sigterm_during_the_swap_waits_until_the_unit_is_whole(tmp_path, raw, unit, monkeypatch):
    out = _write_unit(tmp_path, raw, unit)  # a published unit that a forced re-run replaces
    sr, result, transforms = _fit_outputs(tmp_path / "fit2")
    staging = staging_dir(out, unit.name)
    stage_unit(staging, unit, sr, result, transforms, "T1w", dict(OPTIONS, seed=4))
    real_replace = os.replace
    calls = []

    def replace_then_signal(src, dst):  # SIGTERM arrives between the two renames
        real_replace(src, dst)
        calls.append(dst)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr("bids_mcsr.dataset.publish.os.replace", replace_then_signal)
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        with pytest.raises(_Stop):
            publish(staging, out, unit)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert len(calls) >= 2  # the signal was held until both renames were done
    sidecar = out / "sub-01/ses-a/anat/sub-01_ses-a_res-1mm_desc-sr_T1w.json"
    assert json.loads(sidecar.read_text())["Seed"] == 4
    assert not list(out.glob(".staging-*"))


def test_a_kill_between_the_renames_is_repaired_by_the_next_run(tmp_path, raw, unit):
    out = _write_unit(tmp_path, raw, unit)
    assert recover_publish(out, unit) is None
    before = sorted(p.relative_to(out / "sub-01") for p in (out / "sub-01").rglob("*"))
    os.replace(out / "sub-01" / "ses-a", out / f".staging-old-{unit.name}-123")  # killed here
    other = out / ".staging-old-sub-01_ses-ab-7"  # another unit's: not touched
    other.mkdir()
    assert recover_publish(out, unit) == ("restored the previous outputs set aside by an "
                                          "interrupted re-run")
    assert sorted(p.relative_to(out / "sub-01") for p in (out / "sub-01").rglob("*")) == before
    assert [p.name for p in out.glob(".staging-*")] == [other.name]
    (out / f".staging-old-{unit.name}-456").mkdir()  # killed after the second rename
    (out / f".staging-{unit.name}").mkdir()
    assert recover_publish(out, unit) == "removed the previous outputs left set aside"
    assert sorted(p.relative_to(out / "sub-01") for p in (out / "sub-01").rglob("*")) == before
    assert [p.name for p in out.glob(".staging-*")] == [other.name]


def test_failure_record(tmp_path, unit):
    path = write_failure(tmp_path, unit, "registration: no overlap")
    record = json.loads(path.read_text())
    assert record["status"] == "failed" and record["error"] == "registration: no overlap"
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [path.name]


def test_top_level_files(tmp_path, raw):
    init_output_dataset(tmp_path / "out", raw)
    assert (tmp_path / "out" / ".bidsignore").read_text().split() == BIDSIGNORE
    assert (tmp_path / "out" / "logs").is_dir()


def test_curves_tsv_marks_missing_values():
    rows = curves_tsv(HISTORY).splitlines()
    assert rows[1] == "1\t0.5\t0.4\tn/a\t1"
    rows = curves_tsv({**HISTORY, "lr": [0.01, 0.005]}).splitlines()
    assert rows[0].split("\t")[-1] == "lr" and rows[2] == "2\t0.25\t0.2\t0.7\t2\t0.005"


@pytest.mark.skipif(find_validator() is None, reason="bids-validator-deno not installed")
def test_output_passes_the_bids_validator(tmp_path, raw, unit):
    out = _write_unit(tmp_path, raw, unit)
    write_failure(out, SubjectSession("02", None, []), "n4: failed")
    report = validate(out)
    assert report.errors == []


def test_written_files_get_the_umask_mode_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        target = tmp_path / "sub-01_desc-qc.json"
        atomic_write(target, "{}")
        assert (target.stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(old)
