"""BIDS discovery on copies of bids-examples layouts (empty placeholder images) and on tiny
synthetic datasets with contrast-changing entities, rec- duplicates and part- images."""

import json
import re
from pathlib import Path

import pytest
from bids.layout import parse_file_entities
from tiny_bids import STACKS, tiny_dataset, write_stack

from bids_mcsr.dataset.discovery import acquisition_plane, discover, open_layout
from bids_mcsr.dataset.entities import bids_name, contrast_key, split_contrast
from bids_mcsr.dataset.filters import load_filters
from bids_mcsr.dataset.naming import sr_name
from bids_mcsr.dataset.units import SubjectSession
from bids_mcsr.errors import InputError
from bids_mcsr.steps import select_reference

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "bids-examples"


def _layout(name: str, tmp_path: Path):
    return open_layout(EXAMPLES / name, tmp_path / "db")


def test_every_anatomical_run_is_found(tmp_path):
    found = discover(_layout("ds004332", tmp_path))
    assert [u.name for u in found.units] == ["sub-01", "sub-02"]
    sub1, sub2 = found.units
    assert sub1.contrasts == ["T1w", "T2w", "T2starw"]
    assert sub2.contrasts == ["T1w", "T2w", "FLAIR", "T2starw"]
    on_disk = sorted(p.name for p in (EXAMPLES / "ds004332/sub-01/anat").glob("*.nii"))
    # one reconstruction per acquisition: rec-wore sorts before rec-wre and wins where both
    # exist; an acquisition with only rec-wre keeps it
    acquisition = {name: re.sub(r"_rec-[a-z]+", "", name) for name in on_disk}
    names = sorted(Path(r.path).name for r in sub1.runs)
    assert sorted(acquisition[n] for n in names) == sorted(set(acquisition.values()))
    assert len(names) < len(on_disk)
    assert {r.entities["reconstruction"] for r in sub1.runs} == {"wre", "wore"}
    assert all(n.replace("_rec-wre_", "_rec-wore_") not in on_disk
               for n in names if "_rec-wre_" in n)
    assert found.skipped == []
    both = len(on_disk) - len(names)
    sub1_notes = [n for n in found.notes if n.startswith("sub-01:")]
    assert len(sub1_notes) == both
    assert all("_rec-wre_" in n.split(": another")[0] and "--bids-filter-file" in n
               for n in sub1_notes)


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


# --- contrast identity: ce-/inv-/mt- entities, rec- duplicates, part-, run- repeats ---------

# (name before the suffix, suffix) of every image of the dataset below
ENTITY_FILES = [
    ("sub-01", "T1w"),
    ("sub-01_ce-gadolinium", "T1w"),
    ("sub-01_ce-gadolinium_rec-norm", "T1w"),  # another reconstruction of the line above
    ("sub-01_run-1", "T2w"),
    ("sub-01_run-2", "T2w"),
    ("sub-01_acq-cor", "T2w"),
    ("sub-01_rec-orig", "FLAIR"),
    ("sub-01_rec-norm", "FLAIR"),  # no rec-less FLAIR: rec-norm sorts first
    ("sub-01_part-mag", "T2starw"),
    ("sub-01_part-phase", "T2starw"),
]


@pytest.fixture
def entity_dataset(tmp_path):
    root = tiny_dataset(tmp_path / "ds", {})
    (root / "participants.tsv").write_text("participant_id\nsub-01\n")
    for name, suffix in ENTITY_FILES:
        write_stack(root / "sub-01" / "anat", name, suffix if suffix in STACKS else "T1w",
                    suffix=suffix)
    return root


def _names(unit, contrast=None):
    return [Path(r.path).name for r in unit.runs if contrast in (None, r.contrast)]


def test_contrast_entities_make_contrasts_of_their_own(entity_dataset, tmp_path):
    found = discover(open_layout(entity_dataset, tmp_path / "db"))
    (unit,) = found.units
    assert unit.contrasts == ["T1w", "ce-gadolinium_T1w", "T2w", "FLAIR", "T2starw"]
    assert _names(unit, "T1w") == ["sub-01_T1w.nii.gz"]
    assert _names(unit, "ce-gadolinium_T1w") == ["sub-01_ce-gadolinium_T1w.nii.gz"]
    # run- and acq- variants stay stacks of one contrast
    assert _names(unit, "T2w") == ["sub-01_acq-cor_T2w.nii.gz", "sub-01_run-1_T2w.nii.gz",
                                   "sub-01_run-2_T2w.nii.gz"]
    assert _names(unit, "FLAIR") == ["sub-01_rec-norm_FLAIR.nii.gz"]
    assert _names(unit, "T2starw") == ["sub-01_part-mag_T2starw.nii.gz"]
    labels = unit.labels()
    assert labels == ["T1w", "cegadoliniumT1w", "T2w1", "T2w2", "T2w3", "FLAIR", "T2starw"]
    assert found.skipped == []
    assert len(found.notes) == 3
    ce_note, flair_note, phase_note = sorted(found.notes,
                                             key=lambda n: ("phase" in n, "FLAIR" in n))
    assert "sub-01_ce-gadolinium_rec-norm_T1w.nii.gz" in ce_note.split(": another")[0]
    assert '{"ce-gadolinium_T1w": {"reconstruction": "<label>"}}' in ce_note
    assert "sub-01_rec-orig_FLAIR.nii.gz" in flair_note.split(": another")[0]
    assert "sub-01_rec-norm_FLAIR.nii.gz, which is used" in flair_note
    assert phase_note.startswith("sub-01: left out sub-01_part-phase_T2starw.nii.gz: only")


def test_derivative_names_carry_the_contrast_entities_in_bids_order(entity_dataset, tmp_path):
    (unit,) = discover(open_layout(entity_dataset, tmp_path / "db")).units
    assert [sr_name(unit, c, "1mm") for c in unit.contrasts] == [
        "sub-01_res-1mm_desc-sr_T1w.nii.gz",
        "sub-01_ce-gadolinium_res-1mm_desc-sr_T1w.nii.gz",
        "sub-01_res-1mm_desc-sr_T2w.nii.gz",
        "sub-01_res-1mm_desc-sr_FLAIR.nii.gz",
        "sub-01_res-1mm_desc-sr_T2starw.nii.gz",
    ]
    session = SubjectSession("01", "pre", [])
    assert (sr_name(session, "ce-gadolinium_T1w", "0p8mm", ".json")
            == "sub-01_ses-pre_ce-gadolinium_res-0p8mm_desc-sr_T1w.json")


def test_contrast_selection_is_by_contrast_key(entity_dataset, tmp_path):
    layout = open_layout(entity_dataset, tmp_path / "db")
    (unit,) = discover(layout, contrasts=["T1w"]).units
    assert _names(unit) == ["sub-01_T1w.nii.gz"]  # the post-contrast T1w is not T1w
    (unit,) = discover(layout, contrasts=["ce-gadolinium_t1w", "T2w"]).units
    assert unit.contrasts == ["ce-gadolinium_T1w", "T2w"]
    none = discover(layout, contrasts=["ce-manganese_T1w"])
    assert none.units == [] and "among ce-manganese_T1w" in none.skipped[0]


def test_filter_file_overrides_the_reconstruction_rule(entity_dataset, tmp_path):
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"ce-gadolinium_t1w": {"reconstruction": "norm"},
                                   "flair": {"reconstruction": "*"},
                                   "t2w": {"run": None}}))
    found = discover(open_layout(entity_dataset, tmp_path / "db"),
                     filters=load_filters(filters))
    (unit,) = found.units
    assert _names(unit, "ce-gadolinium_T1w") == ["sub-01_ce-gadolinium_rec-norm_T1w.nii.gz"]
    assert _names(unit, "FLAIR") == ["sub-01_rec-norm_FLAIR.nii.gz",
                                     "sub-01_rec-orig_FLAIR.nii.gz"]
    assert _names(unit, "T2w") == ["sub-01_acq-cor_T2w.nii.gz"]
    assert _names(unit, "T1w") == ["sub-01_T1w.nii.gz"]  # the ce- filter is not T1w's
    assert [n for n in found.notes if "reconstruction" in n] == []


def test_unknown_filter_key_names_the_fix(tmp_path):
    path = tmp_path / "filters.json"
    path.write_text(json.dumps({"t1w": {}, "gadolinium_t1w": {}}))
    with pytest.raises(InputError, match="'gadolinium_t1w'.*ce-gadolinium_T1w"):
        load_filters(path)


def test_contrast_key_and_split_contrast_are_inverse():
    entities = parse_file_entities("sub-01_ses-a_acq-x_ce-gd_rec-n_run-2_mt-on_inv-1_part-mag"
                                   "_T1w.nii.gz")
    key = contrast_key(entities)
    assert key == "ce-gd_inv-1_mt-on_T1w"  # BIDS order: ce, inv, mt; acq/rec/run/part ignored
    assert split_contrast(key) == ({"ce": "gd", "inv": "1", "mt": "on"}, "T1w")
    assert bids_name(*split_contrast("mt-on_ce-gd_t1w")) == "ce-gd_mt-on_T1w"
    assert contrast_key(parse_file_entities("sub-01_T2starw.nii")) == "T2starw"
    assert split_contrast("flair") == ({}, "FLAIR")
    for bad in ("T1", "ce-gd", "ce_T1w", "ce-g-d_T1w", "rec-n_T1w", "ce-a_ce-b_T1w", ""):
        with pytest.raises(ValueError, match="unknown contrast"):
            split_contrast(bad)


def test_bids_name_follows_the_schema_entity_order():
    name = bids_name({"desc": "sr", "res": "1mm", "mt": "off", "ce": "gd", "ses": None,
                      "sub": "01", "run": 2, "rec": "norm", "acq": "x"}, "T1w", ".nii.gz")
    assert name == "sub-01_acq-x_ce-gd_rec-norm_run-2_mt-off_res-1mm_desc-sr_T1w.nii.gz"
    with pytest.raises(ValueError, match="ceagent"):
        bids_name({"ceagent": "gd"}, "T1w")


def test_reference_names_a_contrast_before_a_file_name_part(entity_dataset):
    anat = entity_dataset / "sub-01" / "anat"
    names = ["sub-01_ce-gadolinium_T1w.nii.gz", "sub-01_T1w.nii.gz", "sub-01_run-1_T2w.nii.gz"]
    files = [str(anat / n) for n in names]
    contrasts = ["ce-gadolinium_T1w", "T1w", "T2w"]
    assert select_reference(files, contrasts, names, "T1w") == 1  # not the post-contrast T1w
    assert select_reference(files, contrasts, names, "ce-gadolinium_T1w") == 0
    assert select_reference(files, contrasts, names, "run-1") == 2
