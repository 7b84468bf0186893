"""BIDS derivatives: file names, sidecars, dataset-level files and atomic writes.

Every file lands in one piece: it is written to a temporary name in its own directory and
moved into place with ``os.replace``. A subject's files are first staged in a hidden
directory of the output dataset and published only once all of them exist, so a failed
subject leaves no derivative behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bids_mcsr.about import CODE_URL, NAME, container, get_version
from bids_mcsr.dataset.discovery import SubjectSession, bids_name, split_contrast
from bids_mcsr.qc.records import curves_tsv, qc_record

BIDS_VERSION = "1.10.0"
BIDSIGNORE = ["*.html", "logs/", "**/figures", "**/qc", "*_xfm.txt", "group_desc-qc.tsv"]
STAGING_PREFIX = ".staging-"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` when the block succeeds.

    The temporary name keeps the final suffixes (``.nii.gz``, ``.txt``) so that writers that
    pick a format by extension still work; the file gets the mode a plain ``open`` would give
    (0666 less the umask). On error the temporary file is removed.

    Parameters
    ----------
    path : Path
        Final destination.

    Yields
    ------
    Path
        Where to write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix="-" + path.name)
    os.close(handle)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def current_umask() -> int:
    """The process umask, from ``/proc`` where it is shown (no window in which another
    thread's files get mode 0666), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, content: str | bytes) -> Path:
    """Write text or bytes to ``path`` atomically.

    Parameters
    ----------
    path : Path
        Destination.
    content : str or bytes
        What to write (text is UTF-8).

    Returns
    -------
    Path
        ``path``.
    """
    with atomic_path(path) as tmp:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content, encoding="utf-8")
    return Path(path)


def write_json(path: Path, data: dict) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return atomic_write(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def res_label(spacing: tuple[float, float, float]) -> str:
    """The ``res-`` label of an output grid: ``1mm``, ``0p8mm``, or ``ref`` if anisotropic.

    Parameters
    ----------
    spacing : tuple of float
        Voxel sizes in mm.

    Returns
    -------
    str
        An alphanumeric BIDS label.
    """
    if max(spacing) - min(spacing) > 1e-3:
        return "ref"
    return f"{round(float(spacing[0]), 3):g}".replace(".", "p") + "mm"


def sr_name(unit: SubjectSession, contrast: str, res: str, extension: str = ".nii.gz") -> str:
    """File name of a super-resolved volume: the unit's and the contrast's entities, ``res-``
    and ``desc-sr`` in BIDS order, e.g. ``sub-01_ce-gadolinium_res-1mm_desc-sr_T1w.nii.gz``.

    Parameters
    ----------
    unit : SubjectSession
        The subject/session.
    contrast : str
        Contrast key (``T1w``, ``ce-gadolinium_T1w``).
    res : str
        ``res-`` label (``*`` makes a glob pattern).
    extension : str
        ``.nii.gz`` or ``.json``.

    Returns
    -------
    str
        The file name.
    """
    entities, suffix = split_contrast(contrast)
    return bids_name({**unit.entities, **entities, "res": res, "desc": "sr"}, suffix, extension)


def resolution_text(spacing: tuple[float, float, float], grid_source: str | None) -> str:
    """The sidecar ``Resolution`` value that explains the ``res-`` label."""
    sizes = "x".join(f"{s:g}" for s in spacing)
    where = f"on the grid of {grid_source}" if grid_source else "in the subject's scanner space"
    return f"{sizes} mm voxels {where}"


def anat_dir(root: Path, subject: str, session: str | None) -> Path:
    """``<root>/sub-<l>[/ses-<l>]/anat``."""
    return unit_dir(root, subject, session) / "anat"


def unit_dir(root: Path, subject: str, session: str | None) -> Path:
    """``<root>/sub-<l>[/ses-<l>]``."""
    base = Path(root) / f"sub-{subject}"
    return base / f"ses-{session}" if session else base


def bids_uri(relpath: str, dataset: str = "raw") -> str:
    """``bids:<dataset>:<relpath>``, the BIDS URI of a file of a linked dataset."""
    return f"bids:{dataset}:{relpath}"


def dataset_description(bids_dir: Path) -> dict:
    """The ``dataset_description.json`` of the output dataset.

    Parameters
    ----------
    bids_dir : Path
        The raw input dataset (linked as ``raw``).

    Returns
    -------
    dict
        JSON-serialisable description.
    """
    generated = {"Name": NAME, "Version": get_version(), "CodeURL": CODE_URL}
    box = container()
    if box:
        generated["Container"] = box
    source = {"URL": Path(bids_dir).resolve().as_uri()}
    raw_path = Path(bids_dir) / "dataset_description.json"
    raw = json.loads(raw_path.read_text()) if raw_path.is_file() else {}
    if raw.get("DatasetDOI"):
        source["DOI"] = raw["DatasetDOI"]
    return {
        "Name": f"{NAME}: multi-contrast super-resolution of {raw.get('Name', 'a BIDS dataset')}",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "SourceDatasets": [source],
        "DatasetLinks": {"raw": source["URL"]},
    }


def init_output_dataset(output_dir: Path, bids_dir: Path) -> None:
    """Create the output dataset's top-level files (description, ``.bidsignore``, ``logs/``).

    Parameters
    ----------
    output_dir : Path
        Output dataset root (created if needed).
    bids_dir : Path
        The raw input dataset.
    """
    output_dir = Path(output_dir)
    (output_dir / "logs").mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "dataset_description.json", dataset_description(bids_dir))
    atomic_write(output_dir / ".bidsignore", "\n".join(BIDSIGNORE) + "\n")


def staging_dir(output_dir: Path, name: str) -> Path:
    """A fresh hidden directory in ``output_dir`` to stage one unit's files.

    Parameters
    ----------
    output_dir : Path
        Output dataset root.
    name : str
        Unit name, e.g. ``sub-01_ses-02``.

    Returns
    -------
    Path
        An empty directory on the same file system as the outputs.
    """
    path = Path(output_dir) / f"{STAGING_PREFIX}{name}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGTERM and SIGINT until the block ends; they are raised again right after.

    The handlers are swapped rather than the signal mask, because a signal sent to the
    process may land on any thread (torch's, nipype's) that does not block it. Python runs
    handlers in the main thread only, so elsewhere the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: pending.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in pending:
            signal.raise_signal(sig)


def _set_aside_name(output_dir: Path, unit: SubjectSession) -> Path:
    return Path(output_dir) / f"{STAGING_PREFIX}old-{unit.name}-{os.getpid()}"


def recover_publish(output_dir: Path, unit: SubjectSession) -> str | None:
    """Repair what a process killed in the middle of :func:`publish` left behind.

    A unit's previous outputs set aside (``.staging-old-<unit>-<pid>``) are moved back when
    no published directory replaced them, and deleted when one did; a left-over staging
    directory of the unit is deleted.

    Returns
    -------
    str or None
        What was done, for the log; None when there was nothing to repair.
    """
    pattern = re.compile(rf"{re.escape(STAGING_PREFIX)}old-{re.escape(unit.name)}-\d+")
    set_aside = sorted((p for p in Path(output_dir).glob(f"{STAGING_PREFIX}old-*")
                        if pattern.fullmatch(p.name)), key=lambda p: p.stat().st_mtime)
    shutil.rmtree(Path(output_dir) / f"{STAGING_PREFIX}{unit.name}", ignore_errors=True)
    if not set_aside:
        return None
    dest_unit = unit_dir(output_dir, unit.subject, unit.session)
    action = "removed the previous outputs left set aside"
    if not dest_unit.exists():
        os.replace(set_aside.pop(), dest_unit)
        action = "restored the previous outputs set aside by an interrupted re-run"
    for path in set_aside:
        shutil.rmtree(path, ignore_errors=True)
    return action


def publish(staging: Path, output_dir: Path, unit: SubjectSession) -> list[Path]:
    """Move a unit's staged files into ``output_dir``, replacing its previous outputs whole.

    The staged ``sub-<l>[/ses-<l>]`` directory takes the place of the published one in two
    renames (the old one is moved aside first, then deleted), so the unit never shows a mix
    of old and new files; other staged files (the HTML report) are moved one by one.
    SIGTERM/SIGINT are held until all of it is done; a harder kill between the renames is
    repaired by :func:`recover_publish` on the next run.

    Parameters
    ----------
    staging : Path
        Directory from ``staging_dir``.
    output_dir : Path
        Output dataset root.
    unit : SubjectSession
        The unit staged.

    Returns
    -------
    list of Path
        The published files.
    """
    staged_unit = unit_dir(staging, unit.subject, unit.session)
    dest_unit = unit_dir(output_dir, unit.subject, unit.session)
    published = [dest_unit / p.relative_to(staged_unit)
                 for p in sorted(staged_unit.rglob("*")) if p.is_file()]
    dest_unit.parent.mkdir(parents=True, exist_ok=True)
    old = _set_aside_name(output_dir, unit)
    with signals_held():
        if dest_unit.exists():
            os.replace(dest_unit, old)
        os.replace(staged_unit, dest_unit)
        for src in sorted(p for p in Path(staging).rglob("*") if p.is_file()):
            dest = Path(output_dir) / src.relative_to(staging)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
            published.append(dest)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(staging)
    return published


def is_complete(output_dir: Path, unit: SubjectSession) -> bool:
    """Whether a unit's outputs are published: QC status ``ok`` and a volume per contrast.

    Parameters
    ----------
    output_dir : Path
        Output dataset root.
    unit : SubjectSession
        The unit.

    Returns
    -------
    bool
        True when a re-run has nothing to add (unless forced).
    """
    base = unit_dir(output_dir, unit.subject, unit.session)
    try:
        qc = json.loads((base / "qc" / f"{unit.name}_desc-qc.json").read_text())
    except (OSError, ValueError):
        return False
    return qc.get("status") == "ok" and all(
        any((base / "anat").glob(sr_name(unit, contrast, "*")))
        for contrast in unit.contrasts)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name.split(".")[0] + ".json")


def stage_unit(staging: Path, unit: SubjectSession, sr: dict, result: dict,
               transforms: dict[str, str], reference: str, options: dict) -> None:
    """Write one subject/session's derivatives into ``staging`` (mirroring the output tree).

    Parameters
    ----------
    staging : Path
        Directory from ``staging_dir``.
    unit : SubjectSession
        The subject/session and its runs.
    sr : dict
        ``volumes`` (contrast key -> NIfTI path) and ``mask`` from the super-resolution step.
    result : dict
        Content of the step's ``result.json``.
    transforms : dict
        Run label -> ITK transform file, for every run (the reference's is the identity).
    reference : str
        Label of the reference run.
    options : dict
        Run settings recorded in sidecars: ``model``, ``bias_correction``, ``registration``,
        ``seed``, ``output_grid`` (path or None).
    """
    out = anat_dir(staging, unit.subject, unit.session)
    out.mkdir(parents=True, exist_ok=True)
    spacing = tuple(result["spacing"])
    res = res_label(spacing)
    sources = [bids_uri(run.relpath) for run in unit.runs]
    common = {"Sources": sources,
              "Resolution": resolution_text(spacing, options.get("output_grid"))}
    labels = unit.labels()
    fit = {
        "SkullStripped": False,
        "Model": options["model"],
        "ModelSettings": result["settings"],
        "Seed": options["seed"],
        "EpochsRun": result["epochs_run"],
        "StoppedEpoch": result["stopped_epoch"],
        "FinalMI": result["final_mi"],
        "RuntimeSeconds": round(result["runtime_s"], 2),
        "Device": result["device"],
        "BiasCorrection": options["bias_correction"],
        "Registration": options["registration"],
        "ReferenceImage": sources[labels.index(reference)],
    }
    for contrast, volume in sr["volumes"].items():
        dest = out / sr_name(unit, contrast, res)
        shutil.copyfile(volume, dest)
        write_json(_sidecar(dest), {
            "Description": f"{contrast} super-resolved jointly from all listed stacks with a "
                           "multi-contrast implicit neural representation", **common, **fit})
    mask = out / f"{unit.name}_res-{res}_desc-foreground_mask.nii.gz"
    shutil.copyfile(sr["mask"], mask)
    write_json(_sidecar(mask), {"Description": "Foreground of the input stacks on the "
                                               "output grid", **common})
    for label, path in transforms.items():
        if label != reference:
            shutil.copyfile(path, out / f"{unit.name}_from-{label}_to-{reference}"
                                        "_mode-image_xfm.txt")
    qc_dir = unit_dir(staging, unit.subject, unit.session) / "qc"
    qc_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(qc_dir / f"{unit.name}_desc-training_curves.tsv",
                 curves_tsv(result["history"]))
    write_json(qc_dir / f"{unit.name}_desc-qc.json",
               qc_record(unit.subject, unit.session, unit.contrasts, result,
                         stack_names=[Path(run.path).name for run in unit.runs]))


def write_failure(output_dir: Path, unit: SubjectSession, error: str) -> Path:
    """Record a failed subject/session in its QC file (the only file it gets).

    Parameters
    ----------
    output_dir : Path
        Output dataset root.
    unit : SubjectSession
        The failed unit.
    error : str
        ``<step>: <message>``.

    Returns
    -------
    Path
        The QC JSON written.
    """
    path = unit_dir(output_dir, unit.subject, unit.session) / "qc" / f"{unit.name}_desc-qc.json"
    return write_json(path, qc_record(unit.subject, unit.session, unit.contrasts, error=error))
