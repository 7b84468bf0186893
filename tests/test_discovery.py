"""BIDS discovery on copies of bids-examples layouts (empty placeholder images)."""

import json
from pathlib import Path

import pytest

from bids_mcsr.bids import acquisition_plane, discover, open_layout
from bids_mcsr.errors import InputError

EXAMPLES = Path(__file__).parent / "data" / "bids-examples"


def _layout(name: str, tmp_path: Path):
    return open_layout(EXAMPLES / name, tmp_path / "db")


def test_every_anatomical_run_is_found(tmp_path):
    found = discover(_layout("ds004332", tmp_path))
    assert [u.name for u in found.units] == ["sub-01", "sub-02"]
    sub1, sub2 = found.units
    assert sub1.contrasts == ["T1w", "T2w", "T2starw"]
    assert sub2.contrasts == ["T1w", "T2w", "FLAIR", "T2starw"]
    on_disk = sorted(p.name for p in (EXAMPLES / "ds004332/sub-01/anat").glob("*.nii"))
    assert sorted(Path(r.path).name for r in sub1.runs) == on_disk
    assert {r.entities["reconstruction"] for r in sub1.runs} == {"wre", "wore"}
    assert found.skipped == []


def test_sidecar_metadata_is_collected(tmp_path):
    unit = discover(_layout("ds004332", tmp_path), participants=["01"]).units[0]
    run = next(r for r in unit.runs if r.path.endswith(
        "sub-01_task-still_acq-t2tsePMCon_rec-wore_T2w.nii"))
    assert run.slice_thickness == 5
    assert run.relpath == "sub-01/anat/sub-01_task-still_acq-t2tsePMCon_rec-wore_T2w.nii"
    assert run.acquisition_plane in {"axial", "coronal", "sagittal"}


def test_labels_are_unique_per_unit(tmp_path):
    unit = discover(_layout("ds004332", tmp_path), participants=["02"]).units[0]
    labels = unit.labels()
    assert len(set(labels)) == len(labels)
    assert all(label.isalnum() for label in labels)


def test_filters_and_contrast_selection(tmp_path):
    layout = _layout("ds004332", tmp_path)
    found = discover(layout, participants=["01"], contrasts=["T1w", "T2w"],
                     filters={"T1w": {"acquisition": "mpragePMCoff", "task": "still"},
                              "T2w": {"reconstruction": "wre"}})
    names = [Path(r.path).name for r in found.units[0].runs]
    assert names[0] == "sub-01_task-still_acq-mpragePMCoff_rec-wore_T1w.nii"
    assert all("_rec-wre_" in n for n in names if n.endswith("T2w.nii"))
    absent = discover(layout, participants=["01"], contrasts=["T1w", "T2w"],
                      filters={"T2w": {"task": None}})
    assert [u.contrasts for u in absent.units] == [["T1w"]] and absent.skipped == []
    none = discover(layout, participants=["01"], contrasts=["FLAIR"])
    assert none.units == [] and "found no anatomical image among FLAIR" in none.skipped[0]


def test_sessions(tmp_path):
    found = discover(_layout("eyetracking_fmri", tmp_path))
    assert [(u.name, u.contrasts) for u in found.units] == [("sub-01_ses-01", ["T1w", "T2w"])]
    none = discover(_layout("eyetracking_fmri", tmp_path), sessions=["02"])
    assert none.units == [] and "--session-label" in none.skipped[0]


def test_single_contrast_subjects_are_kept_for_single_contrast_sr(tmp_path):
    found = discover(_layout("ds114", tmp_path))
    assert len(found.units) == 4 and found.skipped == []
    assert found.units[0].name == "sub-01_ses-retest" and found.units[0].contrasts == ["T1w"]


def test_usable_subjects_still_run_beside_unusable_ones(tmp_path):
    root = tmp_path / "ds"
    (root / "sub-01" / "anat").mkdir(parents=True)
    (root / "sub-02" / "anat").mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "x",
                                                                "BIDSVersion": "1.10.0"}))
    for name in ("sub-01/anat/sub-01_T1w", "sub-01/anat/sub-01_FLAIR", "sub-02/anat/sub-02_bold"):
        (root / f"{name}.nii.gz").touch()
    found = discover(open_layout(root, tmp_path / "db"))
    assert [u.name for u in found.units] == ["sub-01"]
    assert found.units[0].contrasts == ["T1w", "FLAIR"]
    assert found.skipped == [found.skipped[0]] and found.skipped[0].startswith("sub-02:")


def test_unknown_participant_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="03"):
        discover(_layout("ds004332", tmp_path), participants=["01", "03"])


def test_database_is_kept_outside_the_dataset(tmp_path):
    _layout("eyetracking_fmri", tmp_path)
    assert any((tmp_path / "db").iterdir())


@pytest.mark.parametrize("cosines, plane", [
    ([1, 0, 0, 0, 1, 0], "axial"),
    ([0, 1, 0, 0, 0, -1], "sagittal"),
    ([1, 0, 0, 0, 0, -1], "coronal"),
    (None, None),
])
def test_acquisition_plane(cosines, plane):
    assert acquisition_plane(cosines) == plane
