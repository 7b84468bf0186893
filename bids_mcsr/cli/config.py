"""The run configuration: the validated command line, frozen once and passed everywhere.

``parse_args`` validates the command line; :meth:`RunConfig.from_namespace` turns the result
into one immutable object. Everything after that reads the object, and what a derivative,
a report or the methods text records comes from :meth:`RunConfig.record`, which is also the
JSON written to ``logs/config_<run id>.json``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path

from bids_mcsr.dataset.files import write_json

# --pose-fit's words as SRConfig.refine_registration values (None: the model's choice)
POSE_FIT = {None: None, "auto": "auto", "on": True, "off": False}
# --profile-fit's words as SRConfig.learn_profile values (None: its default, auto)
PROFILE_FIT = {None: "auto", "auto": "auto", "on": True, "off": False}


@dataclass(frozen=True)
class RunConfig:
    """Every option of one ``bids-mcsr`` run, as validated by the parser.

    Attributes mirror the command-line options (``--omp-nthreads`` is ``omp_nthreads``);
    label lists are sorted tuples, paths absolute, ``filters`` the parsed filter file.
    ``omp_nthreads`` None means each unit's steps use every CPU the unit was given.
    """

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    participant_label: tuple[str, ...] | None
    session_label: tuple[str, ...] | None
    bids_filter_file: Path | None
    filters: dict
    contrasts: tuple[str, ...] | None
    reference: str | None
    skip_bids_validation: bool
    work_dir: Path
    nprocs: int
    omp_nthreads: int | None
    mem_gb: float | None
    device: str
    output_resolution: float | None
    output_grid: Path | None
    bias_correction: str
    registration: str
    model: str
    slice_profile: str
    consistency_iterations: int
    profile_fit: str | None
    pose_fit: str | None
    guided_upsampling: str
    holdout_fraction: float
    epochs: int | None
    seed: int
    stop_on_first_crash: bool
    force: bool
    verbose: int

    @classmethod
    def from_namespace(cls, opts: argparse.Namespace) -> RunConfig:
        """Freeze the options returned by ``bids_mcsr.cli.parser.parse_args``.

        Parameters
        ----------
        opts : argparse.Namespace
            Validated options; every field of this class must be present, and nothing else.

        Returns
        -------
        RunConfig
            The same values, lists turned into tuples.
        """
        values = dict(vars(opts))
        for name in ("participant_label", "session_label", "contrasts"):
            if values[name] is not None:
                values[name] = tuple(values[name])
        return cls(**values)

    def record(self) -> dict:
        """The options as JSON-ready values (paths as strings, tuples as lists), by option.

        Returns
        -------
        dict
            What sidecars, reports, the methods text and ``logs/config_*.json`` record.
        """
        return {field.name: _plain(getattr(self, field.name)) for field in fields(self)}

    def sr_config(self, threads: int, mem_gb: float | None) -> dict:
        """Keyword arguments of ``SRConfig`` for one unit.

        Parameters
        ----------
        threads : int
            Threads the unit's super-resolution step may use.
        mem_gb : float or None
            Memory the step plans its batches for; None: the model's own batch size.

        Returns
        -------
        dict
            ``SRConfig`` fields.
        """
        return {"model": self.model, "slice_profile": self.slice_profile,
                "epochs": self.epochs, "seed": self.seed, "device": self.device,
                "threads": threads, "mem_gb": mem_gb, "output_spacing": self.output_resolution,
                "consistency_iterations": self.consistency_iterations,
                "learn_profile": PROFILE_FIT[self.profile_fit],
                "refine_registration": POSE_FIT[self.pose_fit],
                "guided_upsampling": self.guided_upsampling == "on",
                "holdout_fraction": self.holdout_fraction}

    def dump(self, path: Path) -> Path:
        """Write :meth:`record` as JSON to ``path`` (atomically) and return ``path``."""
        return write_json(path, self.record())


def _plain(value: object) -> object:
    """``value`` with paths as strings and tuples as lists (recursively in dicts)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value

