"""Command line: path guards, label handling, usage exit status."""

import json
import os
from pathlib import Path

import pytest

from bids_mcsr.cli.parser import STAMP_FILE, parse_args
from bids_mcsr.cli.run import main


@pytest.fixture
def bids_dir(tmp_path: Path) -> Path:
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    return root


def _usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        parse_args(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_output_equal_to_bids_dir_is_refused(bids_dir, capsys):
    err = _usage_error([str(bids_dir), str(bids_dir), "participant"], capsys)
    assert "derivatives/bids-mcsr" in err


def test_output_inside_bids_dir_is_refused_but_derivatives_allowed(bids_dir, tmp_path, capsys):
    err = _usage_error([str(bids_dir), str(bids_dir / "out"), "participant"], capsys)
    assert "must not be inside bids_dir" in err
    opts = parse_args([str(bids_dir), str(bids_dir / "derivatives" / "bids-mcsr"),
                       "participant", "-w", str(tmp_path / "work")])
    assert opts.output_dir == bids_dir / "derivatives" / "bids-mcsr"


def test_work_dir_inside_bids_dir_is_refused(bids_dir, tmp_path, capsys):
    err = _usage_error([str(bids_dir), str(tmp_path / "out"), "participant",
                        "-w", str(bids_dir / "work")], capsys)
    assert "work dir" in err and "derivatives/bids-mcsr" in err


def test_missing_dataset_description_is_refused(tmp_path, capsys):
    err = _usage_error([str(tmp_path), str(tmp_path / "out"), "participant"], capsys)
    assert "dataset_description.json" in err


def test_labels_are_stripped_sorted_and_deduplicated(bids_dir, tmp_path):
    opts = parse_args([str(bids_dir), str(tmp_path / "out"), "participant",
                       "--participant-label", "sub-02", "01", "02",
                       "--session-label", "ses-b", "a", "-w", str(tmp_path / "w")])
    assert opts.participant_label == ["01", "02"]
    assert opts.session_label == ["a", "b"]


def test_defaults(bids_dir, tmp_path):
    opts = parse_args([str(bids_dir), str(tmp_path / "out"), "participant", "--nprocs", "4"])
    assert opts.omp_nthreads is None  # each unit's steps get every CPU of the unit
    assert (opts.bias_correction, opts.registration, opts.model) == ("n4", "rigid", "fast")
    assert opts.filters == {}


def test_filter_file_is_read_and_checked(bids_dir, tmp_path, capsys):
    good = tmp_path / "filters.json"
    good.write_text(json.dumps({"t2w": {"acquisition": "tse", "run": None},
                                "ce-gadolinium_t1w": {"reconstruction": "norm"}}))
    opts = parse_args([str(bids_dir), str(tmp_path / "out"), "participant",
                       "--bids-filter-file", str(good)])
    assert opts.filters == {"T2w": {"acquisition": "tse", "run": None},
                            "ce-gadolinium_T1w": {"reconstruction": "norm"}}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"bold": {}}))
    err = _usage_error([str(bids_dir), str(tmp_path / "out"), "participant",
                        "--bids-filter-file", str(bad)], capsys)
    assert "unknown filter key 'bold'" in err and "ce-gadolinium_T1w" in err


def test_contrasts_are_contrast_keys(bids_dir, tmp_path, capsys):
    opts = parse_args([str(bids_dir), str(tmp_path / "out"), "participant", "--contrasts",
                       "T1w", "ce-gadolinium_t1w", "T2w", "flair", "-w", str(tmp_path / "w")])
    assert opts.contrasts == ["T1w", "ce-gadolinium_T1w", "T2w", "FLAIR"]
    for bad in ("T1", "gadolinium_T1w", "rec-norm_T1w", "ce-gad-olinium_T1w", "ce-a_ce-b_T1w",
                "inv-1_MP2RAGE"):
        err = _usage_error([str(bids_dir), str(tmp_path / "out"), "participant",
                            "--contrasts", "T2w", bad], capsys)
        line = err.strip().splitlines()[-1]
        assert f"--contrasts: unknown contrast '{bad}'" in line
        assert "ce-gadolinium_T1w" in line and "T2starw" in line


def test_work_dir_of_another_version_is_refused(bids_dir, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / STAMP_FILE).write_text("bids-mcsr 0.0.1\n")
    err = _usage_error([str(bids_dir), str(tmp_path / "out"), "participant",
                        "-w", str(work)], capsys)
    assert "bids-mcsr 0.0.1" in err and "another -w/--work-dir" in err


def test_output_resolution_and_grid_are_exclusive(bids_dir, tmp_path, capsys):
    _usage_error([str(bids_dir), str(tmp_path / "out"), "participant",
                  "--output-resolution", "1", "--output-grid", str(bids_dir)], capsys)


def test_non_finite_or_negative_sizes_are_usage_errors(bids_dir, tmp_path, capsys):
    for value in ("inf", "nan", "-1", "0"):
        err = _usage_error([str(bids_dir), str(tmp_path / "out"), "participant",
                            "--output-resolution", value], capsys)
        assert f"expected a finite number > 0, got {value}" in err


def test_main_returns_2_on_usage_errors(bids_dir, capsys):
    assert main([str(bids_dir), str(bids_dir), "participant"]) == 2
    assert main([str(bids_dir)]) == 2
    assert main([str(bids_dir), "out", "participant", "--model", "huge"]) == 2


def test_invalid_filter_json_is_a_one_line_usage_error(bids_dir, tmp_path, capsys):
    bad = tmp_path / "broken.json"
    bad.write_text('{"t1w": {"acquisition": ')
    err = _usage_error([str(bids_dir), str(tmp_path / "out"), "participant",
                        "--bids-filter-file", str(bad)], capsys)
    assert f"{bad}: is not valid JSON" in err and "fix the --bids-filter-file" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_dir_is_refused(bids_dir, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        err = _usage_error([str(bids_dir), str(locked / "out"), "participant",
                            "-w", str(tmp_path / "w")], capsys)
    finally:
        locked.chmod(0o700)
    assert f"output_dir {locked / 'out'}: {locked} is not a writable directory" in err


def test_force_defaults_to_off(bids_dir, tmp_path):
    opts = parse_args([str(bids_dir), str(tmp_path / "out"), "participant"])
    assert opts.force is False
    assert parse_args([str(bids_dir), str(tmp_path / "out"), "participant", "--force"]).force


def test_output_dir_under_a_file_is_refused(bids_dir, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    err = _usage_error([str(bids_dir), str(blocker / "out"), "participant",
                        "-w", str(tmp_path / "w")], capsys)
    assert f"{blocker} is not a writable directory" in err
