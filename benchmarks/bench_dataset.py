"""How a whole participant level scales over a dataset: N demo subjects through the real CLI.

Builds a BIDS dataset of N subjects (``--subjects``, default 8): the demo subject of
``bids_mcsr.evaluation.demo`` (a thick-slice axial T1w and sagittal T2w simulated from the
ICBM 2009a template) written once as ``sub-01`` and copied to ``sub-02`` ... ``sub-0N``. The
copies are identical but for their names, so every subject costs the same: the figures are
those of a dataset of same-sized subjects, not of a real dataset's spread of sizes.

Each configuration runs ``bids-mcsr <bids> <out> participant -w <work> --nprocs P --device
cpu --skip-bids-validation --seed 0 [--epochs E]`` as a subprocess on a fresh output and work
folder, under ``taskset -c CPUS`` when CPUs are given, and reports:

- the wall time of the whole run and subjects per hour (subjects done / wall time);
- mean and max seconds per subject, from the run log's ``sub-XX: started ...`` and
  ``sub-XX: done in N s`` lines (``<out>/logs/bids-mcsr_<run id>.log``);
- how many units (subjects/sessions) ran side by side at most, from the start and end times
  of those lines (whole seconds: the log's time stamps have no fractions);
- the CPUs and threads each unit was given (from the ``started`` lines);
- the peak resident memory of the whole process tree: every 0.5 s the RSS of ``bids-mcsr``
  and all its descendants (unit processes, nipype workers, ANTs) is summed. Pages shared
  between forked processes are counted once per process, so this is an upper bound.

Then a *planned* line per configuration, a paper estimate that nothing measured: the
subjects per hour of a ``--plan-cores`` node (default 16) running a long queue of such
subjects. The scheduler (``bids_mcsr.cli.resources``, docs/usage.md "Threads and parallel
subjects") runs as many units at once as there are CPUs and splits the CPUs between them, so
with at least as many subjects waiting as cores every unit gets 1 CPU and the node runs one
unit per core (with ``--omp-nthreads k``: ``cores // k`` units of k threads). The plan takes
the mean seconds per subject measured for units given k threads (k = what the measured units
got: 1 when there were at least as many subjects as ``--nprocs``) and assumes:

- the node's cores are as fast as this machine's, and a unit given k threads takes as long
  there as it did here beside the other units of this run (no more memory-bandwidth or cache
  contention with ``cores // k`` units side by side than with the units measured here);
- the node's memory holds ``cores // k`` units at once (the line prints what that needs, from
  the measured peak per running unit); otherwise the scheduler runs fewer side by side;
- the queue never runs dry (a partial last wave is left out), and start-up of the parent
  process is negligible over a long queue.

For the ``--subjects`` N dataset itself on the node, the plan gives ``ceil(N / width)`` waves
of the measured per-subject time, ``width = min(cores // k, N)``; when N is smaller than the
node's cores the scheduler gives each unit more than k threads, so the figure is an upper
bound on the wall time (marked ``<=``), assuming more threads never make a unit slower.

Usage::

    python benchmarks/bench_dataset.py --configs 2:0,1 1:0 --json benchmarks/results/dataset.json
    python benchmarks/bench_dataset.py --subjects 2 --epochs 1 --configs 2:0,1   # a quick check

A configuration is ``P:CPUS`` (``--nprocs P`` under ``taskset -c CPUS``), ``:CPUS`` (P = the
number of CPUs listed) or ``P`` (no ``taskset``); ``--nprocs``/``--cpus`` give a single one.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from bids_mcsr.evaluation.demo import build_demo

POLL_S = 0.5  # how often the process tree's memory is summed
GB = 2**30
DAY_S = 24 * 3600
CLI = Path(sys.executable).with_name("bids-mcsr")
_STAMP = r"^(?P<h>\d\d):(?P<m>\d\d):(?P<s>\d\d) \w+ "
START_LINE = re.compile(_STAMP + r"(?P<unit>sub-\S+?): start(?:ed|ing) \(.*?\)"
                        r"(?: with (?P<cpus>\d+) CPU\(s\), (?P<threads>\d+) thread\(s\) per step,"
                        r" [\d.]+ GB; (?P<running>\d+) running)?")
DONE_LINE = re.compile(_STAMP + r"(?P<unit>sub-\S+?): done(?: in (?P<seconds>\d+) s)?\b")
ANY_STAMP = re.compile(_STAMP)
UNIT_LINE = re.compile(_STAMP + r"(?P<unit>sub-\S+?): ")


@dataclass(frozen=True)
class Config:
    """One configuration of the run.

    Attributes
    ----------
    nprocs : int
        ``--nprocs`` of the run.
    cpus : str or None
        ``taskset -c`` CPU list; None: no ``taskset``.
    """

    nprocs: int
    cpus: str | None

    @property
    def label(self) -> str:
        """``P:CPUS`` or ``P``, as given on the command line."""
        return f"{self.nprocs}:{self.cpus}" if self.cpus else str(self.nprocs)


@dataclass
class UnitTiming:
    """One unit's start and end as the run log shows them.

    Attributes
    ----------
    name : str
        ``sub-XX[_ses-YY]``.
    start_s, end_s : float or None
        Seconds since the log's first time stamp; ``end_s`` None when it never got ``done``.
    seconds : float or None
        The log's ``done in N s`` (else ``end_s - start_s``).
    cpus, threads, running : int or None
        From the ``started`` line: its CPUs, threads per step, units running once it started.
    """

    name: str
    start_s: float
    end_s: float | None = None
    seconds: float | None = None
    cpus: int | None = None
    threads: int | None = None
    running: int | None = None


@dataclass
class RunResult:
    """What one configuration measured."""

    config: str
    nprocs: int
    cpus: str | None
    subjects: int
    exit_status: int
    wall_s: float
    peak_rss_gb: float
    log: str
    units: list[UnitTiming] = field(default_factory=list)

    @property
    def done(self) -> list[UnitTiming]:
        """The units that got a ``done`` line."""
        return [unit for unit in self.units if unit.seconds is not None]

    @property
    def subjects_per_hour(self) -> float:
        return len(self.done) * 3600 / self.wall_s if self.wall_s else float("nan")

    @property
    def mean_unit_s(self) -> float:
        seconds = [unit.seconds for unit in self.done]
        return sum(seconds) / len(seconds) if seconds else float("nan")

    @property
    def max_unit_s(self) -> float:
        return max((unit.seconds for unit in self.done), default=float("nan"))

    @property
    def side_by_side(self) -> int:
        """Most units running at once, from their start and end times in the log."""
        return max_overlap(self.units)

    @property
    def threads(self) -> int | None:
        """The threads per step most units were given (None: not in the log)."""
        given = [unit.threads for unit in self.units if unit.threads is not None]
        return max(set(given), key=given.count) if given else None

    def summary(self) -> dict:
        """The derived figures, for the JSON."""
        return {"done": len(self.done), "subjects_per_hour": self.subjects_per_hour,
                "mean_unit_s": self.mean_unit_s, "max_unit_s": self.max_unit_s,
                "side_by_side": self.side_by_side, "threads_per_unit": self.threads,
                "side_by_side_logged": max((u.running or 0 for u in self.units), default=0)}


def cpu_list_size(cpus: str) -> int:
    """How many CPUs a ``taskset -c`` list names, e.g. ``0,2-3`` -> 3."""
    count = 0
    for part in cpus.split(","):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


def parse_config(text: str) -> Config:
    """``P:CPUS``, ``:CPUS`` or ``P`` -> :class:`Config`.

    Raises
    ------
    argparse.ArgumentTypeError
        When it is none of these.
    """
    nprocs, colon, cpus = text.partition(":")
    try:
        if colon and not cpus:
            raise ValueError
        n = int(nprocs) if nprocs else cpu_list_size(cpus)
        if cpus:
            cpu_list_size(cpus)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected P:CPUS, :CPUS or P (e.g. 2:0,1)") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: nprocs must be at least 1")
    return Config(n, cpus or None)


def build_dataset(dest: Path, subjects: int, thickness: float, resolution: int) -> Path:
    """Write the demo subject as ``sub-01`` and copy it to the other subjects.

    Parameters
    ----------
    dest : Path
        Dataset root (created).
    subjects : int
        How many subjects.
    thickness, resolution
        ``build_demo``'s slice thickness (mm) and template resolution (mm).

    Returns
    -------
    Path
        ``dest``.
    """
    build_demo(dest, thickness=thickness, resolution=resolution)
    width = max(2, len(str(subjects)))
    labels = [f"{k:0{width}d}" for k in range(1, subjects + 1)]
    source = dest / "sub-01"
    if labels[0] != "01":
        source = source.rename(dest / f"sub-{labels[0]}")
        rename_files(source, "sub-01", f"sub-{labels[0]}")
    for label in labels[1:]:
        copy = dest / f"sub-{label}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(source, copy)
        rename_files(copy, f"sub-{labels[0]}", f"sub-{label}")
    (dest / "participants.tsv").write_text(
        "participant_id\n" + "".join(f"sub-{label}\n" for label in labels))
    return dest


def rename_files(folder: Path, old: str, new: str) -> None:
    """Rename every file under ``folder`` whose name starts with ``old`` to start with ``new``."""
    for path in sorted(folder.rglob(f"{old}*")):
        if path.is_file():
            path.rename(path.with_name(new + path.name[len(old):]))


def cli_command(bids: Path, out: Path, work: Path, config: Config, epochs: int | None,
                seed: int, extra: list[str]) -> list[str]:
    """The ``bids-mcsr`` command line of a configuration, under ``taskset`` if it has CPUs."""
    command = [str(CLI), str(bids), str(out), "participant", "-w", str(work),
               "--nprocs", str(config.nprocs), "--device", "cpu", "--skip-bids-validation",
               "--seed", str(seed)]
    if epochs is not None:
        command += ["--epochs", str(epochs)]
    command += extra
    return ["taskset", "-c", config.cpus, *command] if config.cpus else command


def tree_rss(root: psutil.Process) -> int:
    """Resident bytes of ``root`` and all its descendants (processes that end meanwhile are
    left out)."""
    total = 0
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for proc in processes:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_and_watch(command: list[str], console: Path) -> tuple[int, float, int]:
    """Run ``command`` (stdout and stderr to ``console``), polling its tree's memory.

    Returns
    -------
    tuple
        Exit status, wall seconds, peak summed RSS in bytes.
    """
    with open(console, "w") as sink:
        started = time.monotonic()
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
        peak = 0
        try:
            root = psutil.Process(proc.pid)
            while proc.poll() is None:
                peak = max(peak, tree_rss(root))
                time.sleep(POLL_S)
        finally:
            if proc.poll() is None:  # interrupted here: let the CLI stop its units
                proc.terminate()
                proc.wait()
        return proc.returncode, time.monotonic() - started, peak


def stamp_seconds(match: re.Match, previous: float) -> float:
    """A log line's ``HH:MM:SS`` in seconds, a day added while it would go back past midnight."""
    seconds = int(match["h"]) * 3600 + int(match["m"]) * 60 + int(match["s"])
    days = previous // DAY_S
    seconds += days * DAY_S
    return seconds + DAY_S if seconds < previous - DAY_S / 2 else seconds


def parse_log(text: str) -> list[UnitTiming]:
    """The units of a run log, with their start and end times (seconds since its first line).

    Parameters
    ----------
    text : str
        The run's ``logs/bids-mcsr_<run id>.log``.

    Returns
    -------
    list of UnitTiming
        In the order they started.
    """
    units: dict[str, UnitTiming] = {}
    last_seen: dict[str, float] = {}
    origin = clock = None
    for line in text.splitlines():
        stamp = ANY_STAMP.match(line)
        if not stamp:
            continue
        clock = stamp_seconds(stamp, clock or 0.0)
        origin = clock if origin is None else origin
        start, done, mention = START_LINE.match(line), DONE_LINE.match(line), UNIT_LINE.match(line)
        if mention:
            last_seen[mention["unit"]] = clock - origin
        if start:
            units[start["unit"]] = UnitTiming(
                start["unit"], clock - origin, cpus=_int(start["cpus"]),
                threads=_int(start["threads"]), running=_int(start["running"]))
        elif done and done["unit"] in units:
            unit = units[done["unit"]]
            unit.end_s = clock - origin
            unit.seconds = float(done["seconds"]) if done["seconds"] else unit.end_s - unit.start_s
    for unit in units.values():
        if unit.end_s is None and last_seen.get(unit.name, unit.start_s) > unit.start_s:
            unit.end_s = last_seen[unit.name]
    return list(units.values())


def _int(text: str | None) -> int | None:
    return None if text is None else int(text)


def max_overlap(units: list[UnitTiming]) -> int:
    """Most units running at once; at equal times an end counts before a start (the scheduler
    starts a unit in a finished one's place), a unit with no end runs to the last time."""
    last = max([u.end_s for u in units if u.end_s is not None] + [u.start_s for u in units],
               default=0.0)
    events = sorted([(u.start_s, 1) for u in units]
                    + [(u.end_s if u.end_s is not None else last, -1) for u in units])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def run_config(bids: Path, root: Path, index: int, config: Config, subjects: int, epochs: int | None,
               seed: int, extra: list[str]) -> RunResult:
    """Run configuration number ``index`` on fresh output and work folders under ``root``."""
    tag = f"{index}_nprocs" + config.label.replace(":", "_cpus").replace(",", "-")
    out, work = root / f"out_{tag}", root / f"work_{tag}"
    for folder in (out, work):
        shutil.rmtree(folder, ignore_errors=True)
    command = cli_command(bids, out, work, config, epochs, seed, extra)
    print("$", shlex.join(command), flush=True)
    status, wall, peak = run_and_watch(command, root / f"console_{tag}.txt")
    logs = sorted((out / "logs").glob("bids-mcsr_*.log"))
    text = logs[-1].read_text() if logs else ""
    if status != 0:
        print(f"  exit status {status}; see {root / f'console_{tag}.txt'}", file=sys.stderr)
    return RunResult(config.label, config.nprocs, config.cpus, subjects, status, wall,
                     peak / GB, str(logs[-1]) if logs else "", parse_log(text))


@dataclass(frozen=True)
class Plan:
    """A paper estimate for a node with more cores (nothing here is measured on it)."""

    cores: int
    threads: int
    width: int
    unit_s: float
    subjects_per_hour: float
    dataset_subjects: int
    dataset_wall_s: float
    dataset_upper_bound: bool
    memory_gb: float


def plan(result: RunResult, cores: int) -> Plan | None:
    """Plan ``cores`` cores from a measured configuration (see the module docstring).

    Returns
    -------
    Plan or None
        None when no unit got done or the log gave no thread counts.
    """
    threads = result.threads
    timed = [u.seconds for u in result.done if u.threads == threads]
    if not timed or threads is None:
        return None
    unit_s = sum(timed) / len(timed)
    width = max(1, cores // threads)
    dataset_width = min(width, result.subjects)
    per_unit_gb = result.peak_rss_gb / max(1, result.side_by_side)
    return Plan(cores, threads, width, unit_s, width * 3600 / unit_s, result.subjects,
                math.ceil(result.subjects / dataset_width) * unit_s, dataset_width < width,
                width * per_unit_gb)


def table_header() -> str:
    return ("| config (nprocs:cpus) | subjects done | wall (s) | subjects/h | mean s/subject "
            "| max s/subject | max side by side | CPUs x threads per unit | peak RSS tree (GB) |\n"
            "|---|---|---|---|---|---|---|---|---|")


def table_row(result: RunResult) -> str:
    """One measured configuration as a markdown table row."""
    grants = sorted({f"{u.cpus}x{u.threads}" for u in result.units if u.cpus is not None})
    failed = "" if result.exit_status == 0 else f" (exit {result.exit_status})"
    return (f"| {result.config}{failed} | {len(result.done)}/{result.subjects} | {result.wall_s:.0f} "
            f"| {result.subjects_per_hour:.1f} | {result.mean_unit_s:.0f} | {result.max_unit_s:.0f} "
            f"| {result.side_by_side} | {', '.join(grants) or '?'} | {result.peak_rss_gb:.2f} |")


def plan_line(result: RunResult, planned: Plan | None) -> str:
    """The planned (not measured) line of a configuration."""
    if planned is None:
        return f"planned from {result.config}: nothing to plan from (no unit done with known threads)"
    bound = "<=" if planned.dataset_upper_bound else "~"
    return (f"PLANNED, not measured (from {result.config}, {planned.threads} thread(s) per unit, "
            f"{planned.unit_s:.0f} s/subject): {planned.cores} cores run {planned.width} units side by "
            f"side -> {planned.subjects_per_hour:.1f} subjects/h on a long queue; "
            f"the {planned.dataset_subjects}-subject dataset in {bound} {planned.dataset_wall_s:.0f} s; "
            f"needs ~{planned.memory_gb:.1f} GB for {planned.width} units at once")


def machine_meta() -> dict:
    """What the figures were measured on."""
    model = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"machine": platform.machine(), "platform": platform.platform(), "cpu_model": model,
            "cpu_count": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
            "memory_gb": psutil.virtual_memory().total / GB,
            "load_average_at_start": os.getloadavg(), "python": platform.python_version(),
            "torch": _version("torch"), "bids_mcsr": _version("bids-mcsr"),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The benchmark's command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", type=int, default=8, help="subjects in the dataset (default 8)")
    p.add_argument("--dataset", type=Path, help="build the dataset here (default: in --root)")
    p.add_argument("--root", type=Path,
                   help="outputs, work folders and console logs (default: a temporary folder, removed)")
    p.add_argument("--configs", nargs="+", type=parse_config, metavar="P:CPUS",
                   help="configurations, e.g. 2:0,1 1:0 (each on a fresh output folder)")
    p.add_argument("--nprocs", type=int, help="one configuration: --nprocs (default: number of --cpus)")
    p.add_argument("--cpus", help="one configuration: taskset -c CPU list, e.g. 0 or 0,1")
    p.add_argument("--epochs", type=int, help="bids-mcsr --epochs (default: the model's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--thickness", type=float, default=5.0, help="demo slice thickness, mm")
    p.add_argument("--resolution", type=int, choices=[1, 2], default=2, help="demo template mm")
    p.add_argument("--extra", default="", help="more bids-mcsr arguments, one quoted string")
    p.add_argument("--plan-cores", type=int, default=16, help="cores of the planned node (default 16)")
    p.add_argument("--json", type=Path, help="write every result and the machine's description here")
    a = p.parse_args(argv)
    if a.subjects < 1:
        p.error("--subjects must be at least 1")
    if not a.configs:
        cpus = a.cpus
        nprocs = a.nprocs or (cpu_list_size(cpus) if cpus else len(os.sched_getaffinity(0)))
        a.configs = [Config(nprocs, cpus)]
    return a


def main(argv: list[str] | None = None) -> None:
    """Build the dataset, run every configuration, print the table and the plans."""
    a = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_dataset_") as tmp:
        root = a.root or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        bids = build_dataset(a.dataset or root / "bids", a.subjects, a.thickness, a.resolution)
        print(f"dataset: {bids} (the demo subject and {a.subjects - 1} identical copies)", flush=True)
        results = [run_config(bids, root, index, config, a.subjects, a.epochs, a.seed,
                              shlex.split(a.extra)) for index, config in enumerate(a.configs, 1)]
    meta = machine_meta()
    print(f"\n{meta['cpu_model']}, {meta['cpu_count']} CPUs, torch {meta['torch']}, "
          f"epochs {a.epochs or 'default'}, {a.subjects} subjects\n")
    print(table_header())
    for result in results:
        print(table_row(result))
    plans = [plan(result, a.plan_cores) for result in results]
    print()
    for result, planned in zip(results, plans):
        print(plan_line(result, planned))
    if a.json:
        rows = [{**asdict(result), **result.summary(),
                 "planned": asdict(planned) if planned else None}
                for result, planned in zip(results, plans)]
        meta.update(subjects=a.subjects, epochs=a.epochs, seed=a.seed, extra=a.extra,
                    thickness=a.thickness, resolution=a.resolution, plan_cores=a.plan_cores)
        a.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=float))


if __name__ == "__main__":
    main()
