"""Real processes: SIGTERM during training, then a re-run; two jobs into one output directory."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from tiny_bids import fast_args, tiny_dataset

from bids_mcsr.evaluation.demo import build_demo

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _start(bids: Path, out: Path, work: Path, *extra: str, log: Path) -> subprocess.Popen:
    argv = [sys.executable, str(ROOT / "run.py"), str(bids), str(out), "participant",
            *fast_args(work), *extra]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log.open("w"), cwd=ROOT)


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < end, log.read_text()
        time.sleep(0.2)


def _complete(out: Path, subject: str, contrasts: tuple[str, ...]) -> None:
    qc = json.loads((out / f"sub-{subject}/qc/sub-{subject}_desc-qc.json").read_text())
    assert qc["status"] == "ok"
    for contrast in contrasts:
        img = nib.load(out / f"sub-{subject}/anat/sub-{subject}_res-2mm_desc-sr_{contrast}.nii.gz")
        assert np.all(np.isfinite(img.get_fdata())) and img.get_fdata().std() > 0


def test_sigterm_during_training_stops_cleanly_and_a_rerun_completes(tmp_path):
    bids = build_demo(tmp_path / "bids", thickness=8.0)
    out, work, log = tmp_path / "out", tmp_path / "work", tmp_path / "stderr.txt"
    proc = _start(bids, out, work, log=log)
    _wait_for(log, "training fast model", proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert time.monotonic() - sent < 10
    text = log.read_text()
    assert "sub-01: interrupted by SIGTERM; no derivative written" in text
    assert not (out / "sub-01").exists() and not (out / "sub-01.html").exists()
    assert not list(out.glob(".staging-*")) and not list(out.rglob(".tmp-*"))
    rerun = _start(bids, out, work, log=log)
    assert rerun.wait(timeout=300) == 0, log.read_text()
    _complete(out, "01", ("T1w", "T2w"))


def test_parallel_jobs_share_one_output_and_work_directory(tmp_path):
    subjects = {"01": ("T1w", "T2w"), "02": ("T1w", "T2w"), "03": ("T2w",)}
    bids = tiny_dataset(tmp_path / "bids", subjects)
    out, work = tmp_path / "out", tmp_path / "work"
    procs = [_start(bids, out, work, "--participant-label", s, log=tmp_path / f"{s}.txt")
             for s in subjects]
    for subject, proc in zip(subjects, procs):
        assert proc.wait(timeout=300) == 0, (tmp_path / f"{subject}.txt").read_text()
    for subject, contrasts in subjects.items():
        _complete(out, subject, contrasts)
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert (out / ".bidsignore").read_text().startswith("*.html")
    assert "McGinnis" in (out / "logs" / "CITATION.md").read_text()
    assert len(list((out / "logs").glob("bids-mcsr_*.log"))) == len(subjects)
    leftovers = [p for p in (*out.rglob(".*"), *work.glob("bids_db*"))
                 if p.name != ".bidsignore"]
    assert leftovers == []


def _busy_children(pid: int) -> list[int]:
    """Child processes of ``pid`` that have used more than half a second of CPU."""
    kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    busy = []
    for kid in kids:
        try:
            fields = Path(f"/proc/{kid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[11]) > 0.5 * os.sysconf("SC_CLK_TCK"):  # utime
            busy.append(int(kid))
    return busy


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_sigterm_with_parallel_workers_kills_them_at_once(tmp_path):
    """The unit runs in a child process and, with --nprocs 2, its N4 nodes in that child's
    worker processes: the run must not wait for them (N4 of a 1 mm stack takes over 10 s);
    the unit's process group is stopped at once and a re-run redoes the killed node."""
    bids = build_demo(tmp_path / "bids", thickness=4.0, resolution=1)
    out, work, log = tmp_path / "out", tmp_path / "work", tmp_path / "stderr.txt"
    argv = [sys.executable, str(ROOT / "run.py"), str(bids), str(out), "participant",
            "-w", str(work), "--nprocs", "2", "--omp-nthreads", "1", "--device", "cpu",
            "--registration", "none", "--skip-bids-validation"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log.open("w"), cwd=ROOT,
                            start_new_session=True)
    end = time.monotonic() + 120
    while not (workers := _busy_children(proc.pid)):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < end, log.read_text()
        time.sleep(0.2)
    sent, sent_wall = time.monotonic(), time.time()
    os.killpg(proc.pid, signal.SIGTERM)  # as SLURM does: the whole process group
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert time.monotonic() - sent < 5, log.read_text()
    time.sleep(0.5)
    assert [w for w in workers if Path(f"/proc/{w}").exists()] == []
    assert "interrupted by SIGTERM; no derivative written" in log.read_text()
    assert "Traceback" not in log.read_text()
    # nothing finished after the signal (an N4 node that was already done may stay: on an
    # idle machine the smaller stack's N4 can end before the workers are seen busy)
    late = [p for p in work.rglob("result_*n4*.pklz") if p.stat().st_mtime > sent_wall]
    assert late == []
    assert not (out / "sub-01").exists() and not list(out.glob(".staging-*"))
