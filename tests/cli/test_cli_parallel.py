"""Units side by side: each in its own process with its share of --nprocs, published whole."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_bids import tiny_dataset

from bids_mcsr.cli.run import main

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TWO_UNITS = {"01": ("T1w", "T2w"), "02": ("T1w", "T2w")}


def _argv(bids: Path, out: Path, work: Path, *extra: str) -> list[str]:
    """A fast run (no N4, no registration, CPU) that leaves threads and units to defaults."""
    return [str(bids), str(out), "participant", "-w", str(work), "--device", "cpu",
            "--bias-correction", "none", "--registration", "none", "--skip-bids-validation",
            *extra]


def _log(out: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((out / "logs").glob("bids-mcsr_*.log")))


def _published(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.name.startswith("sub-"))


def test_two_units_overlap_in_time_with_one_cpu_each(tmp_path):
    bids = tiny_dataset(tmp_path / "bids", TWO_UNITS)
    out = tmp_path / "out"
    assert main(_argv(bids, out, tmp_path / "work", "--nprocs", "2", "--epochs", "1")) == 0
    lines = _log(out).splitlines()
    started = [i for i, line in enumerate(lines) if ": started (" in line]
    done = [i for i, line in enumerate(lines) if ": done in " in line]
    assert len(started) == len(done) == 2 and max(started) < min(done)  # both ran at once
    assert sum("sub-01: training" in line for line in lines) == 1
    assert sum("cpu (1 threads)" in line for line in lines) == 2
    for subject in TWO_UNITS:
        qc = json.loads((out / f"sub-{subject}/qc/sub-{subject}_desc-qc.json").read_text())
        assert qc["status"] == "ok"
    record = json.loads(next((out / "logs").glob("config_*.json")).read_text())
    assert (record["nprocs"], record["omp_nthreads"]) == (2, None)


def test_one_unit_gets_every_thread_of_the_run(tmp_path):
    bids = tiny_dataset(tmp_path / "bids", {"01": ("T1w",)})
    out = tmp_path / "out"
    assert main(_argv(bids, out, tmp_path / "work", "--nprocs", "2", "--epochs", "1")) == 0
    log = _log(out)
    assert "sub-01: started (1 runs: T1w) with 2 CPU(s), 2 thread(s) per step" in log
    assert "cpu (2 threads)" in log


def _unit_processes(pid: int) -> list[int]:
    """The child processes of ``pid`` that run units (spawned by multiprocessing)."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(kid) for kid in found.stdout.split()
            if b"spawn_main" in Path(f"/proc/{kid}/cmdline").read_bytes()]


def test_sigterm_during_parallel_units_leaves_no_half_written_derivatives(tmp_path):
    bids = tiny_dataset(tmp_path / "bids", TWO_UNITS)
    out, log = tmp_path / "out", tmp_path / "stderr.txt"
    argv = [sys.executable, str(ROOT / "run.py"),
            *_argv(bids, out, tmp_path / "work", "--nprocs", "2", "--epochs", "200")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log.open("w"), cwd=ROOT)
    end = time.monotonic() + 120
    while log.read_text().count("training fast model") < 2:
        assert proc.poll() is None and time.monotonic() < end, log.read_text()
        time.sleep(0.2)
    units = _unit_processes(proc.pid)
    assert len(units) == 2
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert time.monotonic() - sent < 10
    text = log.read_text()
    for subject in TWO_UNITS:
        assert f"sub-{subject}: interrupted by SIGTERM; no derivative written" in text
    assert "Traceback" not in text
    assert [kid for kid in units if Path(f"/proc/{kid}").exists()] == []
    assert _published(out) == []
    assert not list(out.glob(".staging-*")) and not list(out.rglob(".tmp-*"))
