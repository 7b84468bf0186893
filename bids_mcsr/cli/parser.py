"""Command line of the bids-mcsr BIDS-App: argparse plus up-front validation of every path.

Anything wrong with the command line ends in ``parser.error`` (exit status 2) with a message
that says what to change; nothing is read beyond headers and small JSON files here.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from bids_mcsr.about import NAME, get_version
from bids_mcsr.dataset.entities import CONTRAST_HELP, bids_name, split_contrast
from bids_mcsr.dataset.files import atomic_write
from bids_mcsr.dataset.filters import load_filters
from bids_mcsr.errors import InputError
from bids_mcsr.inr.presets import PRESETS, run_choices

STAMP_FILE = "bids-mcsr-version.txt"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def _holdout_fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 0.5:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 0.5, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def _by_model(option: str) -> str:
    """Each model's default of ``option``, for the help text."""
    return ", ".join(f"{name}: {getattr(spec, option)}" for name, spec in PRESETS.items())


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser (no validation beyond types and choices).

    Returns
    -------
    argparse.ArgumentParser
        The parser of ``bids-mcsr bids_dir output_dir {participant,group} [options]``.
    """
    parser = argparse.ArgumentParser(
        prog=NAME,
        description="Multi-contrast super-resolution of anisotropic anatomical MRI stacks "
        "with an implicit neural representation (BIDS-App).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="root of the input BIDS dataset")
    parser.add_argument("output_dir", type=Path, help="where derivatives are written")
    parser.add_argument("analysis_level", choices=["participant", "group"])
    parser.add_argument("--version", action="version", version=f"{NAME} {get_version()}")

    sel = parser.add_argument_group("selecting data")
    sel.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                     help="subjects to process (the sub- prefix is optional); default: all")
    sel.add_argument("--session-label", nargs="+", metavar="LABEL",
                     help="sessions to process (the ses- prefix is optional); default: all")
    sel.add_argument("--bids-filter-file", type=Path, metavar="JSON",
                     help='per-contrast pybids filters, keyed like --contrasts, e.g. {"t2w": '
                     '{"acquisition": "tse"}}; null means the entity must be absent, "*" any '
                     'value')
    sel.add_argument("--contrasts", nargs="+", metavar="CONTRAST",
                     help=f"contrasts to use, each {CONTRAST_HELP}; default: every one found")
    sel.add_argument("--reference", metavar="CONTRAST_OR_NAME",
                     help="stack all others are registered to: a contrast (T1w, "
                     "ce-gadolinium_T1w) or else part of a file name; default: the stack with "
                     "the finest through-plane resolution")
    sel.add_argument("--skip-bids-validation", action="store_true",
                     help="do not run bids-validator-deno on the input")

    res = parser.add_argument_group("resources")
    res.add_argument("-w", "--work-dir", type=Path, default=Path("work"),
                     help="intermediate results; reusing it resumes finished steps")
    res.add_argument("--nprocs", type=_positive_int, default=os.cpu_count() or 1,
                     help="CPUs of the run; subjects/sessions run side by side when their "
                     "memory allows, each with its share")
    res.add_argument("--omp-nthreads", type=_positive_int,
                     help="threads of each step; default: every CPU of its subject/session")
    res.add_argument("--mem-gb", type=_positive_float,
                     help="memory limit in GB; default: the memory available at start")
    res.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")

    sr = parser.add_argument_group("super-resolution")
    grid = sr.add_mutually_exclusive_group()
    grid.add_argument("--output-resolution", type=_positive_float, metavar="MM",
                      help="isotropic voxel size of the outputs in mm")
    grid.add_argument("--output-grid", type=Path, metavar="NIFTI",
                      help="write the outputs on the grid (shape and affine) of this image")
    sr.add_argument("--bias-correction", choices=["n4", "none"], default="n4")
    sr.add_argument("--registration", choices=["rigid", "none"], default="rigid")
    sr.add_argument("--model", choices=["fast", "paper"], default="fast")
    sr.add_argument("--slice-profile", choices=["none", "gaussian", "boxcar"],
                    help=f"default: the model's ({_by_model('slice_profile')})")
    sr.add_argument("--consistency-iterations", type=_non_negative_int, metavar="N",
                    help="rounds of back-projecting the stacks' residuals into the outputs, "
                    "each weighted down to the stack's estimated noise floor "
                    f"(0: off; default: the model's, {_by_model('consistency_iterations')})")
    sr.add_argument("--profile-fit", choices=["auto", "on", "off"],
                    help="fit each stack's slab width on held-out slices, from the modelled one "
                    "(docs/method.md): auto (default) when a stack's SliceThickness leaves gaps "
                    "between its slices or exceeds their spacing, or every thick stack's slices "
                    "span a head (9000 foreground "
                    "voxels) and there are at most two contrasts, on, or off")
    sr.add_argument("--pose-fit", choices=["auto", "on", "off"],
                    help="refine each stack's rigid pose (on top of registration) during the fit: "
                    "auto (the fast model's default) when a stack looks misaligned by 1 mm or more "
                    f"(default: the model's, {_by_model('refine_registration')})")
    sr.add_argument("--guided-upsampling", choices=["on", "off"], default="on",
                    help="before back-projection, make each thick-sliced contrast a local linear "
                    "map of every contrast's network output, fitted on its own slices, so that "
                    "what only its slices show is kept between them (docs/method.md; default on)")
    sr.add_argument("--holdout-fraction", type=_holdout_fraction, metavar="F",
                    help="share of each thick-slice stack's slices withheld to validate the "
                    "fit (at least 2 per stack; 0: none; default: the model's, "
                    f"{_by_model('holdout_fraction')})")
    sr.add_argument("--epochs", type=_positive_int,
                    help="default: the model's own, fewer where a subject's epochs exceed its "
                         "training budget")
    sr.add_argument("--seed", type=int, default=0)

    run = parser.add_argument_group("run control")
    run.add_argument("--stop-on-first-crash", action="store_true",
                     help="stop at the first failed subject instead of going on")
    run.add_argument("--force", action="store_true",
                     help="redo subjects/sessions whose outputs are already complete "
                     "(default: skip them)")
    run.add_argument("-v", "--verbose", action="count", default=0,
                     help="more log output (repeat for more)")
    return parser


def _strip(labels: list[str] | None, prefix: str) -> list[str] | None:
    if not labels:
        return None
    return sorted({label.removeprefix(prefix) for label in labels})


def _inside(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def unwritable(path: Path) -> Path | None:
    """The directory that stops ``path`` from being created or written, or None.

    Parameters
    ----------
    path : Path
        A directory that need not exist yet.

    Returns
    -------
    Path or None
        ``path`` itself, or its nearest existing ancestor, when the user cannot write there.
    """
    existing = next(p for p in (path, *path.parents) if p.exists())
    if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        return None
    return existing


def check_work_dir_version(work_dir: Path) -> str | None:
    """Say why ``work_dir`` cannot be reused by this version, or None when it can.

    Parameters
    ----------
    work_dir : Path
        The work directory (need not exist).

    Returns
    -------
    str or None
        A one-line message when a stamp from another version is present.
    """
    stamp = work_dir / STAMP_FILE
    if not stamp.is_file():
        return None
    found = stamp.read_text().strip()
    expected = f"{NAME} {get_version()}"
    if found == expected:
        return None
    return (f"work directory {work_dir} was written by {found}, this is {expected}; "
            f"use another -w/--work-dir or delete {work_dir}")


def stamp_work_dir(work_dir: Path) -> None:
    """Create ``work_dir`` and record which version writes into it (atomically: parallel
    jobs may share the work directory)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(work_dir / STAMP_FILE, f"{NAME} {get_version()}\n")


def validate(parser: argparse.ArgumentParser, opts: argparse.Namespace) -> argparse.Namespace:
    """Check and normalise parsed options; call ``parser.error`` (exit 2) on bad input.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The parser, used to report errors.
    opts : argparse.Namespace
        Options as parsed.

    Returns
    -------
    argparse.Namespace
        The options with absolute paths, stripped labels, contrast keys in their canonical
        spelling, ``filters`` (dict), and the model's slice profile, back-projection rounds
        and held-out share where not given.
    """
    try:
        opts.contrasts = opts.contrasts and [bids_name(*split_contrast(c)) for c in opts.contrasts]
    except ValueError as err:
        parser.error(f"--contrasts: {err}")
    _check_paths(parser, opts)
    opts.filters = {}
    if opts.bids_filter_file is not None:
        try:
            opts.filters = load_filters(opts.bids_filter_file)
        except InputError as err:
            parser.error(str(err))
    opts.participant_label = _strip(opts.participant_label, "sub-")
    opts.session_label = _strip(opts.session_label, "ses-")
    vars(opts).update(run_choices(opts.model, slice_profile=opts.slice_profile,
                                  consistency_iterations=opts.consistency_iterations,
                                  holdout_fraction=opts.holdout_fraction))
    return opts


def _check_paths(parser: argparse.ArgumentParser, opts: argparse.Namespace) -> None:
    """Make the paths absolute and check them: a BIDS root, outputs and work outside it (or
    under its derivatives/), writable, a work directory of this version."""
    opts.bids_dir = opts.bids_dir.expanduser().resolve()
    opts.output_dir = opts.output_dir.expanduser().resolve()
    opts.work_dir = opts.work_dir.expanduser().resolve()
    suggestion = opts.bids_dir / "derivatives" / NAME
    if not opts.bids_dir.is_dir():
        parser.error(f"bids_dir {opts.bids_dir} is not a directory")
    if not (opts.bids_dir / "dataset_description.json").is_file():
        parser.error(f"{opts.bids_dir} has no dataset_description.json; "
                     "point bids_dir at the root of a BIDS dataset")
    in_derivatives = opts.bids_dir / "derivatives" in opts.output_dir.parents
    if _inside(opts.output_dir, opts.bids_dir) and not in_derivatives:
        parser.error(f"output_dir {opts.output_dir} must not be inside bids_dir; "
                     f"use e.g. {suggestion}")
    if _inside(opts.work_dir, opts.bids_dir):
        parser.error(f"work dir {opts.work_dir} must not be inside bids_dir {opts.bids_dir}; "
                     f"use e.g. a folder outside it, like ./work (outputs go to {suggestion})")
    if opts.output_grid is not None:
        opts.output_grid = opts.output_grid.expanduser().resolve()
        if not opts.output_grid.is_file():
            parser.error(f"--output-grid {opts.output_grid} does not exist")
    for label, path in (("output_dir", opts.output_dir), ("work dir", opts.work_dir)):
        blocked = unwritable(path)
        if blocked is not None:
            parser.error(f"{label} {path}: {blocked} is not a writable directory; choose "
                         "another directory or fix its permissions (in containers, bind a "
                         "writable host directory)")
    stale = check_work_dir_version(opts.work_dir)
    if stale:
        parser.error(stale)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate a command line (exits with status 2 on usage errors).

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    argparse.Namespace
        Validated options.
    """
    parser = build_parser()
    return validate(parser, parser.parse_args(argv))
