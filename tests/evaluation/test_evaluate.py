"""bids-mcsr-eval: simulate a thick-slice BIDS dataset and score SR outputs against the truth."""

import json

import nibabel as nib
import numpy as np

from bids_mcsr.evaluation.evaluate import main, plane_voxel_axis, with_acq
from bids_mcsr.evaluation.phantom import mni_truth


def write_truth(root):
    vols, affine = mni_truth(2)
    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)
    for c, v in vols.items():
        nib.save(nib.Nifti1Image(v, affine), str(anat / f"sub-01_{c}.nii.gz"))
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.10.0"}))
    return vols, affine


def test_names_and_planes():
    assert with_acq("sub-01_ses-1_run-2_T1w.nii.gz", "ax4mm") == "sub-01_ses-1_acq-ax4mm_run-2_T1w.nii.gz"
    assert with_acq("sub-01_acq-mprage_T1w.nii", "cor4mm") == "sub-01_acq-cor4mm_T1w.nii"
    flipped = np.array([[0, 0, -1, 0], [-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]])
    assert plane_voxel_axis(flipped, "axial") == 1 and plane_voxel_axis(flipped, "sagittal") == 2


def test_simulate_then_score(tmp_path, capsys):
    truth, sim, out = tmp_path / "truth", tmp_path / "sim", tmp_path / "out"
    vols, affine = write_truth(truth)
    assert main(["simulate", str(truth), str(sim), "--plane", "T1w=axial", "--plane", "T2w=coronal",
                 "--thickness", "6"]) == 0
    t1 = nib.load(str(sim / "sub-01/anat/sub-01_acq-ax6mm_T1w.nii.gz"))
    t2 = nib.load(str(sim / "sub-01/anat/sub-01_acq-cor6mm_T2w.nii.gz"))
    assert np.allclose(t1.header.get_zooms(), (2, 2, 6)) and np.allclose(t2.header.get_zooms(), (2, 6, 2))
    side = json.loads((sim / "sub-01/anat/sub-01_acq-ax6mm_T1w.json").read_text())
    assert side["SliceThickness"] == 6
    # a perfect "SR" (the truth itself) must beat cubic interpolation of the stacks
    anat = out / "sub-01" / "anat"
    anat.mkdir(parents=True)
    for c, v in vols.items():
        nib.save(nib.Nifti1Image(v, affine), str(anat / f"sub-01_res-2_desc-sr_{c}.nii.gz"))
    tsv = tmp_path / "scores.tsv"
    assert main(["score", str(truth), str(sim), str(out), "--tsv", str(tsv)]) == 0
    import pandas as pd
    table = pd.read_csv(tsv, sep="\t")
    assert set(table["contrast"]) == {"T1w", "T2w"}
    assert (table["psnr_sr"] > 60).all() and (table["psnr_cubic"] < 35).all()
    assert (table["ssim_sr"] > table["ssim_cubic"]).all() and table["mi_sr"].notna().all()
    assert "psnr_cubic" in capsys.readouterr().out
