"""Bad input, re-runs and resource limits through ``main`` on a tiny dataset.

Every failure must reach the log as one line ``sub-XX: <step>: <file>: <problem>; <fix>``,
leave no derivative of that subject behind, and let the other subjects finish.
"""

import gzip
import json
import logging
from collections import namedtuple
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from tiny_bids import fast_args, phantom, tiny_dataset, write_stack

from bids_mcsr.cli.run import main
from bids_mcsr.inr import memory as resources
from bids_mcsr.inr.model import build_model
from bids_mcsr.inr.presets import model_spec
from bids_mcsr.steps import superresolve


def _main(bids: Path, out: Path, work: Path, *extra: str) -> int:
    return main([str(bids), str(out), "participant", *fast_args(work), *extra])


def _log(out: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((out / "logs").glob("bids-mcsr_*.log")))


def _qc(out: Path, subject: str) -> dict:
    return json.loads((out / f"sub-{subject}/qc/sub-{subject}_desc-qc.json").read_text())


def _line(log: str, prefix: str) -> str:
    return next(line for line in log.splitlines() if prefix in line)


def _refused_at_input_check(tmp_path: Path, *extra: str) -> tuple[str, str]:
    """Run a tiny two-contrast subject that must fail its input check: that line and the log."""
    bids = tiny_dataset(tmp_path / "bids", {"01": ("T1w", "T2w")})
    out = tmp_path / "out"
    assert _main(bids, out, tmp_path / "work", *extra) == 1
    log = _log(out)
    return _line(log, "sub-01: input check: "), log


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), path)


def _save_raw_sform(path: Path, data: np.ndarray, sform: np.ndarray) -> None:
    """Save with ``sform`` written verbatim into the header (nibabel cannot encode a
    singular affine as a qform)."""
    img = nib.Nifti1Image(np.asarray(data, np.float32), None)
    hdr = img.header
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = sform[0], sform[1], sform[2]
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    nib.save(img, path)


def _break_inputs(bids: Path) -> dict[str, tuple[str, str]]:
    """Spoil one file of subjects 02-08; subject -> (file name, expected problem)."""
    anat = {s: bids / f"sub-{s}" / "anat" for s in ("02", "03", "04", "05", "06", "07", "08")}
    t1 = {s: a / f"sub-{s}_T1w.nii.gz" for s, a in anat.items()}
    img = nib.load(t1["02"])
    data = np.asarray(img.dataobj, np.float32)
    raw = t1["02"].read_bytes()
    t1["02"].write_bytes(raw[: len(raw) // 3])
    with gzip.open(t1["03"], "wb") as handle:
        handle.write(b"not an image at all " * 40)
    nan = data.copy()
    nan[3, 3, 3] = np.nan
    _save(t1["04"], nan, img.affine)
    _save(t1["05"], np.zeros_like(data), img.affine)
    singular = img.affine.copy()
    singular[:, 2] = 0
    _save_raw_sform(t1["06"], data, singular)
    _save(t1["07"], np.stack([data, data * 2], axis=-1), img.affine)
    far = img.affine.copy()
    far[0, 3] += 500
    t2 = anat["08"] / "sub-08_T2w.nii.gz"
    _save(t2, nib.load(t2).get_fdata(), far)
    return {"02": (t1["02"].name, "is not a readable NIfTI image"),
            "03": (t1["03"].name, "is not a readable NIfTI image"),
            "04": (t1["04"].name, "has 1 NaN/Inf voxels"),
            "05": (t1["05"].name, "is constant"),
            "06": (t1["06"].name, "the affine is singular"),
            "07": (t1["07"].name, "is 4D with shape (24, 24, 8, 2)"),
            "08": (t2.name, "does not overlap sub-08_T1w.nii.gz")}


@pytest.mark.slow
def test_bad_inputs_fail_their_subject_only_with_one_line_each(tmp_path):
    subjects = {s: ("T1w", "T2w") for s in ("01", "02", "03", "04", "05", "06", "07", "08")}
    bids = tiny_dataset(tmp_path / "bids", subjects)
    (bids / "sub-07/anat/sub-07_T1w.json").write_text(json.dumps({"EchoTime": [0.01, 0.02]}))
    expected = _break_inputs(bids)
    out = tmp_path / "out"
    assert _main(bids, out, tmp_path / "work") == 1
    log = _log(out)
    assert _qc(out, "01")["status"] == "ok"
    for subject, (name, problem) in expected.items():
        line = _line(log, f"sub-{subject}: input check: ")
        assert f"/sub-{subject}/anat/{name}: {problem}" in line and "; " in line, line
        record = _qc(out, subject)
        assert record["status"] == "failed" and problem in record["error"]
        assert not (out / f"sub-{subject}" / "anat").exists()
    assert log.count("training fast model") == 1  # bad subjects are refused before any training
    assert not list(out.glob(".staging-*")) and not list(out.rglob(".tmp-*"))


@pytest.mark.slow
def test_single_contrast_runs_and_an_empty_subject_is_skipped(tmp_path):
    bids = tiny_dataset(tmp_path / "bids", {"01": ("T1w", "T2w"), "02": ("FLAIR",)})
    (bids / "sub-03" / "anat").mkdir(parents=True)
    (bids / "sub-03" / "anat" / "sub-03_T1w.json").write_text("{}")
    out = tmp_path / "out"
    assert _main(bids, out, tmp_path / "work") == 1  # sub-03 was skipped
    log = _log(out)
    assert "sub-02: only one contrast (FLAIR): single-contrast super-resolution" in log
    assert "skipped sub-03: found no anatomical image" in log
    assert _qc(out, "01")["status"] == "ok" and _qc(out, "02")["status"] == "ok"
    assert (out / "sub-02/anat/sub-02_res-2mm_desc-sr_FLAIR.nii.gz").is_file()
    assert "single-contrast" in (out / "sub-02.html").read_text()


def test_unknown_participant_is_a_one_line_usage_error(tmp_path):
    bids = tiny_dataset(tmp_path / "bids", {"01": ("T1w", "T2w")})
    out = tmp_path / "out"
    assert _main(bids, out, tmp_path / "work", "--participant-label", "09") == 2
    assert "has no subject(s) 09; choose --participant-label among: 01" in _log(out)


def test_too_little_disk_space_is_refused_before_training(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(resources.shutil, "disk_usage", lambda path: usage(10**6, 10**6, 1000))
    line, log = _refused_at_input_check(tmp_path)
    assert f"{tmp_path / 'out'}: has 0.00 GB free, the outputs need about" in line
    assert "free disk space" in line and "training fast model" not in log


def test_mem_gb_too_small_is_refused_before_training(tmp_path):
    line, log = _refused_at_input_check(tmp_path, "--mem-gb", "0.05")
    assert "sub-01_T1w.nii.gz: training on 9216 samples" in line
    assert "more than --mem-gb 0.05; give a larger --mem-gb or a coarser --output-resolution" in line
    assert "training fast model" not in log


def test_memory_plan_adapts_batch_and_chunk_to_mem_gb():
    need = resources.Estimate(samples=4_300_000, output_voxels=8_700_000, n_contrasts=2)
    fast, paper = model_spec("fast"), model_spec("paper")
    free = resources.plan_memory(need, fast, 5)
    assert (free.batch_size, free.chunk, free.fits) == (8192, 131072, True)
    assert 2.25 * resources.GB < free.peak_bytes < 3.0 * resources.GB  # bench_pipeline: 2.28 GB peak
    roomy = resources.plan_memory(need, fast, 5, mem_gb=16)
    assert roomy.batch_size == 8192 and roomy.fits and roomy.peak_bytes <= 16 * resources.GB
    tight = resources.plan_memory(need, fast, 5, mem_gb=2.5)  # the floor: 2.24 GB
    assert 256 <= tight.batch_size < 8192 and tight.fits and tight.peak_bytes <= 2.5 * resources.GB
    assert 4096 <= tight.chunk < 262144
    assert not resources.plan_memory(need, fast, 5, mem_gb=1.0).fits
    # the paper model's activations are ~10x the fast one's per evaluation
    assert resources.evaluation_bytes(paper, 2) > 8 * resources.evaluation_bytes(fast, 2)
    assert resources.plan_memory(need, paper, 5, mem_gb=2.4).batch_size < 1000


def test_memory_plan_counts_the_threads_and_the_gpu():
    six = resources.Estimate(samples=19_464_657, output_voxels=8_675_289, n_contrasts=4)  # bench_scale row 3
    fast = model_spec("fast")
    cpu = resources.plan_memory(need=six, spec=fast, n_profile=5, workers=2)
    gpu = resources.plan_memory(need=six, spec=fast, n_profile=5, workers=16, cuda=True)
    # measured peaks: the whole participant level on 2 CPU cores, the bare fit on an H100
    assert cpu.peak_bytes >= 3.48 * resources.GB and gpu.peak_bytes >= 3.88 * resources.GB
    on_cpu = resources.plan_memory(six, fast, 5, workers=16).peak_bytes
    assert gpu.peak_bytes - on_cpu == resources.CUDA_HOST_BYTES
    assert on_cpu == cpu.peak_bytes  # training leads: the threads' re-simulation chunks fit beside it
    few = resources.Estimate(samples=300_000, output_voxels=8_000_000, n_contrasts=2)  # re-simulation leads
    one, many = (resources.plan_memory(few, fast, 5, workers=w).peak_bytes for w in (1, 16))
    assert 0 < many - one <= 15 * resources.RESIMULATE_CHUNK * resources.CONSISTENCY_BYTES_PER_SAMPLE


def test_parameter_count_matches_the_built_model():
    for name in ("fast", "paper"):
        spec = model_spec(name)
        model = build_model(spec, 3, extent_mm=20000.0)  # every hash level at full table size
        assert resources.parameter_count(spec, 3) == sum(p.numel() for p in model.parameters())


@pytest.mark.slow
def test_rerun_skips_complete_force_replaces_whole_and_failed_force_keeps_old(tmp_path):
    bids = tiny_dataset(tmp_path / "bids", {"01": ("T1w", "T2w")})
    out, work = tmp_path / "out", tmp_path / "work"
    assert _main(bids, out, work, "--output-resolution", "3") == 0
    anat = out / "sub-01" / "anat"
    first = sorted(p.name for p in anat.iterdir())
    assert "sub-01_res-3mm_desc-sr_T1w.nii.gz" in first
    assert _main(bids, out, work) == 0
    assert "sub-01: outputs already complete; skipped (use --force to redo)" in _log(out)
    assert sorted(p.name for p in anat.iterdir()) == first
    assert _main(bids, out, work, "--force") == 0
    second = sorted(p.name for p in anat.iterdir())
    assert second == [name.replace("res-3mm", "res-2mm") for name in first]
    t2 = bids / "sub-01/anat/sub-01_T2w.nii.gz"
    t2.write_bytes(t2.read_bytes()[:100])
    assert _main(bids, out, work, "--force", "--output-resolution", "3") == 1
    assert "sub-01: the outputs of an earlier run are kept unchanged" in _log(out)
    assert sorted(p.name for p in anat.iterdir()) == second
    assert _qc(out, "01")["status"] == "ok"


def test_an_isotropic_single_stack_is_used_as_is(tmp_path, caplog):
    iso = tmp_path / "iso_T1w.nii.gz"
    data, affine = phantom("T1w")
    _save(iso, data, affine)
    thick = write_stack(tmp_path, "thick", "T2w")
    logger = logging.getLogger("bids_mcsr")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="bids_mcsr"):
            superresolve([str(iso), str(thick)], ["T1w", "T2w"], [None, 6.0],
                         str(tmp_path / "sr"), {"epochs": 1, "device": "cpu", "threads": 1})
    finally:
        logger.removeHandler(caplog.handler)
    assert ("iso_T1w.nii.gz: the only T1w stack is already isotropic (2x2x2 mm); it is used "
            "as it is") in caplog.text
    assert "thick_T2w.nii.gz: the only" not in caplog.text


def test_an_absurd_output_resolution_is_refused_before_training(tmp_path):
    line, _ = _refused_at_input_check(tmp_path, "--output-resolution", "0.0001")
    assert "is too large; use a coarser --output-resolution" in line
