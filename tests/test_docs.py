"""The mkdocs site builds strictly, and the pages cover what users look up."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="pip install -e '.[test]' installs mkdocs")
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                           "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for page in ("index", "installation", "usage", "outputs", "method", "evaluation", "hpc",
                 "troubleshooting"):
        assert (site / page / "index.html").is_file() or (site / "index.html").is_file(), page
    assert (site / "hpc" / "index.html").is_file()


def test_every_cli_option_is_documented():
    parser_mod = pytest.importorskip("bids_mcsr.cli.parser")
    usage = (DOCS / "usage.md").read_text()
    for action in parser_mod.build_parser()._actions:
        for opt in action.option_strings:
            if opt.startswith("--") and "_" not in opt and opt != "--help":
                pattern = r"`[^`\n]*" + re.escape(opt) + r"(?![\w-])"
                assert re.search(pattern, usage), f"{opt} is not in docs/usage.md"


@pytest.mark.parametrize("pattern", [
    "_res-<label>_desc-sr_<suffix>.nii.gz", "_desc-sr_<suffix>.json",
    "_from-<src>_to-<ref>_mode-image_xfm.txt", "_desc-foreground_mask.nii.gz",
    "_desc-training_curves.tsv", "_desc-qc.json", "sub-<l>[_ses-<l>].html", "figures/",
    "group_desc-qc.tsv", "group.html", "logs/CITATION.md", "dataset_description.json",
])
def test_outputs_page_explains(pattern):
    assert pattern in (DOCS / "outputs.md").read_text()


def test_method_page_states_the_design_and_citation():
    text = (DOCS / "method.md").read_text()
    for fact in ("256 frequencies", "N(0, 4²)", "width 1024", "hash-grid", "rectangular slab",
                 "mutual information", "McGinnis", "MICCAI"):
        assert fact in text, fact


def test_benchmark_section_reports_measured_numbers():
    text = (DOCS / "evaluation.md").read_text()
    assert re.search(r"^## Benchmark", text, re.M) and "placeholder" not in text.lower()
    for command in ("benchmarks/bench_quality.py", "benchmarks/bench_pipeline.py"):
        assert command in text
    assert re.search(r"\| cubic B-spline[^\n]*\| \d+\.\d+ / 0\.\d+", text)


def test_hpc_page_covers_apptainer_and_slurm():
    text = (DOCS / "hpc.md").read_text()
    for fact in ("apptainer build", "docker-daemon://", "--cleanenv", "-B ", "--nv",
                 "scripts/slurm_array.sh", "SLURM_ARRAY_TASK_ID", "DRY_RUN=1", "group"):
        assert fact in text, fact
