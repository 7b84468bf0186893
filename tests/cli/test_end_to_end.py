"""End to end: ``main`` on a tiny demo dataset, one good and one broken subject.

Checks exit status, the failure message, atomic per-subject outputs, reuse of the work
directory, the recovered head motion, and the BIDS validator on the output.
"""

import json
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from tiny_bids import fast_args, tiny_dataset, write_stack

from bids_mcsr.cli.run import main
from bids_mcsr.dataset.validator import find_validator, validate
from bids_mcsr.evaluation.demo import build_demo, head_motion

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run():
    # a private directory: pytest's shared basetemp may be pruned by a concurrent session
    root = Path(tempfile.mkdtemp(prefix="bids-mcsr-e2e-"))
    bids = build_demo(root / "bids", thickness=8.0)
    broken = bids / "sub-02" / "anat"
    shutil.copytree(bids / "sub-01" / "anat", broken)
    for path in broken.iterdir():
        path.rename(path.with_name(path.name.replace("sub-01", "sub-02")))
    t2 = broken / "sub-02_acq-sag_T2w.nii.gz"
    img = nib.load(t2)
    nib.save(nib.Nifti1Image(np.ones(img.shape, np.float32), img.affine), t2)
    (bids / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\n")
    argv = [str(bids), str(root / "out"), "participant", "-w", str(root / "work"),
            "--epochs", "2", "--nprocs", "1", "--omp-nthreads", "2", "--device", "cpu"]
    yield root, argv
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def first(run):
    root, argv = run
    return main(argv)


def test_failed_subject_is_reported_and_others_finish(run, first):
    root, _ = run
    assert first == 1
    out = root / "out"
    anat = sorted(p.name for p in (out / "sub-01" / "anat").iterdir())
    assert "sub-01_res-2mm_desc-sr_T1w.nii.gz" in anat
    assert "sub-01_res-2mm_desc-sr_T2w.nii.gz" in anat
    assert "sub-01_from-T2w_to-T1w_mode-image_xfm.txt" in anat
    assert not (out / "sub-02" / "anat").exists()
    failed = json.loads((out / "sub-02/qc/sub-02_desc-qc.json").read_text())
    assert failed["status"] == "failed"
    assert failed["error"].startswith("input check: ")
    assert "sub-02_acq-sag_T2w.nii.gz: is constant" in failed["error"]
    assert not list(out.glob(".staging-*")) and not list(out.rglob(".tmp-*"))
    log = next((out / "logs").glob("bids-mcsr_*.log")).read_text()
    assert "sub-02: input check: " in log


def test_outputs_content(run, first):
    root, _ = run
    out = root / "out"
    t1 = nib.load(out / "sub-01/anat/sub-01_res-2mm_desc-sr_T1w.nii.gz")
    t2 = nib.load(out / "sub-01/anat/sub-01_res-2mm_desc-sr_T2w.nii.gz")
    assert t1.shape == t2.shape and np.allclose(t1.affine, t2.affine)
    assert np.allclose(nib.affines.voxel_sizes(t1.affine), 2.0)
    sidecar = json.loads((out / "sub-01/anat/sub-01_res-2mm_desc-sr_T1w.json").read_text())
    assert sidecar["EpochsRun"] == 2 and sidecar["Device"].startswith("cpu")
    qc = json.loads((out / "sub-01/qc/sub-01_desc-qc.json").read_text())
    assert qc["status"] == "ok" and qc["final_mi"] == sidecar["FinalMI"]
    assert "McGinnis" in (out / "logs" / "CITATION.md").read_text()
    assert list((out / "logs").glob("config_*.json"))
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"


def test_registration_recovers_the_demo_motion(run, first):
    root, _ = run
    xfm = (root / "out/sub-01/anat/sub-01_from-T2w_to-T1w_mode-image_xfm.txt").read_text()
    values = np.array(next(line for line in xfm.splitlines()
                           if line.startswith("Parameters:")).split()[1:], float)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    itk = np.eye(4)
    itk[:3, :3], itk[:3, 3] = values[:9].reshape(3, 3), values[9:]
    world = np.linalg.inv(flip @ itk @ flip)  # T2w world -> T1w world
    residual = world @ head_motion()
    angle = np.degrees(np.arccos(np.clip((np.trace(residual[:3, :3]) - 1) / 2, -1, 1)))
    assert angle < 1.0
    assert np.linalg.norm(residual[:3, 3]) < 1.0 + 0.02 * 100  # 1 mm plus 1 degree at 10 cm


@pytest.mark.skipif(find_validator() is None, reason="bids-validator-deno not installed")
def test_output_is_valid_bids(run, first):
    """Valid after the participant level and still after the group level has written into it."""
    root, argv = run
    assert validate(root / "out").errors == []
    assert main(argv[:2] + ["group"]) == 0
    assert (root / "out" / "group_desc-qc.tsv").is_file()
    assert validate(root / "out").errors == []


def test_rerun_reuses_the_work_directory(run, first):
    root, argv = run
    results = list((root / "work" / "nipype").rglob("superres/result_superres.pklz"))
    assert len(results) == 1
    before = results[0].stat().st_mtime
    assert main(argv + ["--participant-label", "01", "--force"]) == 0
    assert results[0].stat().st_mtime == before


def test_a_post_contrast_t1w_is_a_contrast_of_its_own(tmp_path):
    """T1w + ce-gadolinium_T1w + T2w: three heads, three outputs named with their entities."""
    bids = tiny_dataset(tmp_path / "bids", {"01": ("T1w", "T2w")})
    anat = bids / "sub-01" / "anat"
    write_stack(anat, "sub-01_ce-gadolinium", "FLAIR", suffix="T1w")  # other intensities
    write_stack(anat, "sub-01_part-phase", "T2w")  # left out: not a magnitude image
    out = tmp_path / "out"
    argv = [str(bids), str(out), "participant", *fast_args(tmp_path / "work")]
    assert main(argv) == 0
    names = {"T1w": "sub-01_res-2mm_desc-sr_T1w",
             "ce-gadolinium_T1w": "sub-01_ce-gadolinium_res-2mm_desc-sr_T1w",
             "T2w": "sub-01_res-2mm_desc-sr_T2w"}
    assert sorted(p.name for p in (out / "sub-01/anat").glob("*_desc-sr_*")) == sorted(
        n + ext for n in names.values() for ext in (".json", ".nii.gz"))
    volumes = {c: nib.load(out / "sub-01/anat" / f"{n}.nii.gz").get_fdata()
               for c, n in names.items()}
    assert not np.allclose(volumes["T1w"], volumes["ce-gadolinium_T1w"])
    sidecar = json.loads((out / "sub-01/anat" / f"{names['ce-gadolinium_T1w']}.json").read_text())
    assert sidecar["Description"].startswith("ce-gadolinium_T1w super-resolved")
    assert "bids:raw:sub-01/anat/sub-01_ce-gadolinium_T1w.nii.gz" in sidecar["Sources"]
    assert not any("part-phase" in source for source in sidecar["Sources"])
    qc = json.loads((out / "sub-01/qc/sub-01_desc-qc.json").read_text())
    assert qc["contrasts"] == list(names)
    curves = (out / "sub-01/qc/sub-01_desc-training_curves.tsv").read_text().splitlines()[0]
    assert curves.split("\t")[1:4] == [f"loss_{c}" for c in names]
    assert (out / "sub-01/figures/sub-01_ce-gadolinium_desc-srcompare_T1w.png").is_file()
    log = next((out / "logs").glob("bids-mcsr_*.log")).read_text()
    assert "sub-01: left out sub-01_part-phase_T2w.nii.gz: only magnitude images" in log
    assert main(argv[:2] + ["group"]) == 0
    group = (out / "group_desc-qc.tsv").read_text().splitlines()
    rows = [line.split("\t") for line in group[1:]]
    assert [r[3] for r in rows] == list(names)
    mi_column = group[0].split("\t").index("mi_sr")
    assert all(r[mi_column] != "n/a" for r in rows)
    if find_validator() is not None:
        assert validate(out).errors == []
    assert main(argv) == 0  # complete: every contrast's output is found under its own name
    log = "\n".join(p.read_text() for p in (out / "logs").glob("bids-mcsr_*.log"))
    assert "sub-01: outputs already complete" in log


def test_reference_orients_the_output_grid(tmp_path):
    """``--reference T2w``: registration target, output grid and fixed pose are all the T2w."""
    bids = tiny_dataset(tmp_path / "bids", {"01": ("T1w", "T2w")})
    t2 = bids / "sub-01" / "anat" / "sub-01_T2w.nii.gz"
    img = nib.load(t2)
    centre = img.affine[:3, :3] @ ((np.asarray(img.shape) - 1) / 2) + img.affine[:3, 3]
    angle = np.radians(20)
    turn = np.eye(4)
    turn[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    turn[:3, 3] = centre - turn[:3, :3] @ centre
    oblique = turn @ img.affine
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), oblique), t2)
    rotation = oblique[:3, :3] / np.linalg.norm(oblique[:3, :3], axis=0)
    for reference, expected in ((["--reference", "T2w"], rotation), ([], None)):
        out = tmp_path / f"out{len(reference)}"
        assert main([str(bids), str(out), "participant", *fast_args(tmp_path / f"w{len(reference)}"),
                     *reference]) == 0
        sr = next((out / "sub-01" / "anat").glob("*desc-sr_T1w.nii.gz"))
        axes = nib.load(sr).affine[:3, :3]
        axes = axes / np.linalg.norm(axes, axis=0)
        if expected is None:
            assert not np.allclose(np.abs(axes), np.abs(rotation), atol=1e-3)
        else:
            assert np.allclose(axes, expected, atol=1e-4)
