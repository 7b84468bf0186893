"""boutiques.json: valid (plain and --bids), simulated command lines, and in step with the CLI."""
from __future__ import annotations

import argparse
import importlib
import json
import shlex
from pathlib import Path

import pytest
import tomllib

boutiques = pytest.importorskip("boutiques", reason="pip install -e '.[test]' installs boutiques")
from boutiques import bosh  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTOR = ROOT / "boutiques.json"
INVOCATION = ROOT / "tests" / "data" / "boutiques_invocation.json"
# Parser options that have no place in an invocation: they print and exit.
NOT_IN_DESCRIPTOR = {"--help", "--version"}


def _descriptor() -> dict:
    return json.loads(DESCRIPTOR.read_text())


def _simulate(invocation: dict, tmp_path: Path) -> str:
    inv = tmp_path / "invocation.json"
    inv.write_text(json.dumps(invocation))
    out = bosh(["exec", "simulate", str(DESCRIPTOR), "-i", str(inv)])
    return out.shell_command


def _app_argv(shell_command: str) -> list[str]:
    """The argv after `bids-mcsr` in the simulated `mkdir -p OUT; bids-mcsr ...` line."""
    mkdir, app = shell_command.split(";", 1)
    argv = shlex.split(app)
    assert argv[0] == "bids-mcsr"
    return argv[1:]


def _get_parser() -> argparse.ArgumentParser:
    """The app's real ArgumentParser from bids_mcsr.cli.parser; skip while it does not exist."""
    try:
        mod = importlib.import_module("bids_mcsr.cli.parser")
    except ModuleNotFoundError as exc:
        if exc.name in ("bids_mcsr.cli.parser",):
            pytest.skip("bids_mcsr/cli/parser.py does not exist yet")
        raise
    for name in ("get_parser", "build_parser", "create_parser", "_build_parser", "make_parser"):
        fn = getattr(mod, name, None)
        if callable(fn):
            parser = fn()
            if isinstance(parser, argparse.ArgumentParser):
                return parser
    for value in vars(mod).values():
        if isinstance(value, argparse.ArgumentParser):
            return value
    pytest.fail("bids_mcsr.cli.parser has no get_parser()/build_parser() returning an ArgumentParser")


def _cli_inputs(desc: dict) -> dict[str, dict]:
    """Descriptor inputs keyed by their long command-line flag."""
    return {i["command-line-flag"]: i for i in desc["inputs"] if "command-line-flag" in i}


def _long(action: argparse.Action) -> str:
    return next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])


def _optional_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Parser optionals keyed by their first long option string (help/version left out)."""
    out = {}
    for action in parser._actions:
        if action.option_strings and _long(action) not in NOT_IN_DESCRIPTOR:
            out[_long(action)] = action
    return out


# --- the descriptor on its own --------------------------------------------------------------

def test_descriptor_validates():
    bosh(["validate", str(DESCRIPTOR)])


def test_descriptor_validates_as_bids_app():
    bosh(["validate", "--bids", str(DESCRIPTOR)])


def test_descriptor_matches_project_version_and_bids_app_layout():
    desc = _descriptor()
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert desc["tool-version"] == version
    assert desc["container-image"]["image"].endswith(f":{version}")
    assert desc["command-line"].startswith(
        "mkdir -p [OUTPUT_DIR]; bids-mcsr [BIDS_DIR] [OUTPUT_DIR] [ANALYSIS_LEVEL] "
        "[PARTICIPANT_LABEL] [SESSION_LABEL]")
    outs = [i for i in desc["inputs"] if i["value-key"] == "[OUTPUT_DIR]"]
    assert sorted(i["type"] for i in outs) == ["File", "String"]
    (group,) = [g for g in desc["groups"] if set(g["members"]) == {i["id"] for i in outs}]
    assert group["mutually-exclusive"] and group["one-is-required"]
    assert [o["path-template"] for o in desc["output-files"]] == ["[OUTPUT_DIR]"]
    # every value-key is used once in the command line
    for inp in desc["inputs"]:
        assert inp["value-key"] in desc["command-line"], inp["id"]


EXPECTED = (
    "mkdir -p /data/derivatives/bids-mcsr; bids-mcsr /data/bids /data/derivatives/bids-mcsr "
    "participant --participant-label 01 02 --session-label pre --bids-filter-file "
    "/data/filters.json --contrasts T1w T2w --work-dir /scratch/work/bids-mcsr --nprocs 4 "
    "--omp-nthreads 2 --mem-gb 8.5 --skip-bids-validation --output-resolution 1.0 "
    "--bias-correction n4 --registration rigid --model fast --slice-profile gaussian "
    "--consistency-iterations 2 --epochs 20 --device cpu --seed 7 --stop-on-first-crash -vv"
)


def test_example_invocation_simulates_expected_command(tmp_path):
    invocation = json.loads(INVOCATION.read_text())
    assert _simulate(invocation, tmp_path) == EXPECTED


def test_minimal_group_invocation(tmp_path):
    cmd = _simulate({"bids_dir": "/d", "output_dir_name": "/o", "analysis_level": "group"},
                    tmp_path)
    assert cmd == "mkdir -p /o; bids-mcsr /d /o group"


@pytest.mark.xfail(reason="boutiques 0.5.x removes every [OUTPUT_DIR] when the first input "
                   "with that value-key (output_dir_name) is unset; use output_dir_name")
def test_group_invocation_with_existing_output_dir(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    cmd = _simulate({"bids_dir": "/d", "output_dir": str(out), "analysis_level": "group"},
                    tmp_path)
    assert cmd == f"mkdir -p {out}; bids-mcsr /d {out} group"


def test_invalid_choice_is_refused(tmp_path):
    bad = {"bids_dir": "/d", "output_dir": "/o", "analysis_level": "participant",
           "model": "huge"}
    with pytest.raises(Exception):
        _simulate(bad, tmp_path)


# --- the descriptor against the real parser --------------------------------------------------

def _probe(action):
    """The option's type applied to a valid sample value ("2", or a fraction)."""
    if action.type is None:
        return "2"
    try:
        return action.type("2")
    except argparse.ArgumentTypeError:
        return action.type("0.25")


def test_every_parser_option_is_in_the_descriptor_and_back():
    parser = _get_parser()
    desc = _descriptor()
    actions = _optional_actions(parser)
    inputs = _cli_inputs(desc)
    verbose = [a for a in actions.values() if "-v" in a.option_strings]
    parser_flags = set(actions) - {_long(a) for a in verbose}
    assert parser_flags == set(inputs), (
        f"only in the parser: {sorted(parser_flags - set(inputs))}; "
        f"only in boutiques.json: {sorted(set(inputs) - parser_flags)}")
    for flag, inp in inputs.items():
        action = actions[flag]
        if action.nargs == 0:
            assert inp["type"] == "Flag", flag
            continue
        assert inp["type"] != "Flag", flag
        assert bool(inp.get("list")) == (action.nargs in ("+", "*") or
                                         isinstance(action.nargs, int) and action.nargs > 1), flag
        if action.choices is not None:
            assert sorted(map(str, action.choices)) == sorted(inp.get("value-choices", [])), flag
        else:
            assert "value-choices" not in inp, flag
        parsed = _probe(action)
        if isinstance(parsed, int):
            assert inp["type"] == "Number" and inp.get("integer") is True, flag
        elif isinstance(parsed, float):
            assert inp["type"] == "Number" and not inp.get("integer"), flag
        else:
            assert inp["type"] in ("String", "File"), flag
    # positionals: bids_dir output_dir analysis_level, same choices
    positionals = [a for a in parser._actions if not a.option_strings]
    assert len(positionals) == 3
    (level,) = [i for i in desc["inputs"] if i["value-key"] == "[ANALYSIS_LEVEL]"]
    assert sorted(positionals[2].choices) == sorted(level["value-choices"])
    # -v is given as a repeatable count in the descriptor
    if verbose:
        (vinp,) = [i for i in desc["inputs"] if i["id"] == "verbosity"]
        assert all(set(c) == {"-", "v"} for c in vinp["value-choices"])


def _real_paths(tmp_path: Path) -> dict:
    """Existing inputs for an invocation the parser can check for real."""
    nib = pytest.importorskip("nibabel")
    np = pytest.importorskip("numpy")
    bids = tmp_path / "bids"
    (bids / "sub-01" / "anat").mkdir(parents=True)
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "t", "BIDSVersion": "1.9.0"}))
    (bids / "participants.tsv").write_text("participant_id\nsub-01\n")
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"t1w": {"acquisition": None}}))
    grid = tmp_path / "grid.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), grid)
    return {"bids": bids, "filters": filters, "grid": grid, "out": tmp_path / "derivatives",
            "work": tmp_path / "work"}


def test_simulated_command_lines_parse_with_the_real_parser(tmp_path):
    parser = _get_parser()
    p = _real_paths(tmp_path)
    example = json.loads(INVOCATION.read_text())
    example.update(bids_dir=str(p["bids"]), output_dir_name=str(p["out"]),
                   bids_filter_file=str(p["filters"]), work_dir=str(p["work"]),
                   participant_label=["01"])
    variants = [
        example,
        {"bids_dir": str(p["bids"]), "output_dir_name": str(p["out"]),
         "analysis_level": "participant", "output_grid": str(p["grid"]), "model": "paper",
         "slice_profile": "boxcar", "bias_correction": "none", "registration": "none",
         "device": "auto", "verbosity": "-v", "reference": "T2w"},
        {"bids_dir": str(p["bids"]), "output_dir_name": str(p["out"]), "analysis_level": "group"},
    ]
    mod = importlib.import_module("bids_mcsr.cli.parser")
    for i, invocation in enumerate(variants):
        (tmp_path / f"v{i}").mkdir()
        argv = _app_argv(_simulate(invocation, tmp_path / f"v{i}"))
        # parse_args validates the paths as well; fall back to plain argparse
        parse = getattr(mod, "parse_args", parser.parse_args)
        ns = parse(argv)
        assert str(ns.analysis_level) == invocation["analysis_level"]
