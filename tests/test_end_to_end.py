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

from bids_mcsr.demo import build_demo, head_motion
from bids_mcsr.validator import find_validator, validate
from workflows.main import main

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
