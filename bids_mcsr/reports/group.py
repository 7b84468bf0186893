"""Group level: collect every unit's QC record into one table, one page and a flag list.

Reads only the QC record the participant level wrote for each subject/session
(``*_desc-qc.json``, see :mod:`bids_mcsr.qc.records`); never touches images. Writes
``group_desc-qc.tsv`` (one row per subject/session/contrast) and ``group.html`` at the
output root.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
from scipy import stats

from bids_mcsr.dataset.entities import unit_name
from bids_mcsr.dataset.files import atomic_write
from bids_mcsr.dataset.naming import QC_SUFFIX
from bids_mcsr.qc.flags import (
    ALIGNMENT_STEP_MM,
    FWHM_RATIO_MAX,
    GAIN_MARGIN_DB,
    NOISE_PERCENT_MAX,
    POSE_ROTATION_MAX_DEG,
    POSE_SHIFT_MAX_MM,
    quality_flags,
    verdict,
)
from bids_mcsr.reports.html import page, paragraph, section, strip_plot_svg, table

OUTLIER_SIGMAS = 3.0
MIN_FOR_OUTLIERS = 4
QUALITY = ("heldout_gain_db", "heldout_sr_psnr", "heldout_cubic_psnr", "heldout_voxels",
           "consistency_rounds", "pose_shift_max_mm", "pose_rotation_max_deg",
           "noise_percent_max", "fwhm_fitted_mm", "fwhm_header_mm", "fwhm_ratio",
           "misaligned_stacks")
METRICS = ("heldout_gain_db", "heldout_sr_psnr", "heldout_cubic_psnr", "pose_shift_max_mm",
           "pose_rotation_max_deg", "noise_percent_max", "fwhm_ratio", "sharpness_ratio",
           "mi_sr", "runtime_s")
# metric -> (which side is bad, smallest deviation from the median worth a flag): one-sided
# so that a subject is never flagged for being better than the rest, and with a floor so
# that a very tight group does not flag differences too small to matter
OUTLIER_METRICS = {"heldout_gain_db": ("low", 1.0), "heldout_sr_psnr": ("low", 2.0),
                   "noise_percent_max": ("high", 1.0), "sharpness_ratio": ("low", 0.1),
                   "mi_sr": ("low", 0.05)}
OUTLIER_HINTS = {"mi_sr": " (low MI between the SR contrasts: check the registration)"}
COUNTS = ("heldout_voxels", "consistency_rounds", "misaligned_stacks", "epochs_run",
          "stopped_epoch", "best_epoch", "mi_rule_epoch")
COLUMNS = ("name", "subject", "session", "contrast", "status", "verdict", *QUALITY,
           "sharpness_ratio", "mi_sr", "final_mi_training", "epochs_run", "stopped_epoch",
           "best_epoch", "mi_rule_epoch", "runtime_s", "device", "error")


def robust_outliers(values: np.ndarray, sigmas: float = OUTLIER_SIGMAS, side: str = "both",
                    min_deviation: float = 0.0) -> np.ndarray:
    """Which values lie more than ``sigmas`` robust SDs (1.4826 MAD) from the median.

    Parameters
    ----------
    values : ndarray
        One metric across units; NaN is never an outlier.
    sigmas : float
        Threshold in robust standard deviations.
    side : {"both", "low", "high"}
        Which deviations count: below the median, above it, or either.
    min_deviation : float
        Deviations from the median no larger than this are never outliers.

    Returns
    -------
    ndarray of bool
        All False when fewer than ``MIN_FOR_OUTLIERS`` finite values are given.
    """
    values = np.asarray(values, float)
    finite = np.isfinite(values)
    if finite.sum() < MIN_FOR_OUTLIERS:
        return np.zeros(values.shape, bool)
    median = np.median(values[finite])
    scale = float(stats.median_abs_deviation(values[finite], scale="normal"))
    scale = max(scale, 1e-6 * max(1.0, abs(median)))
    deviation = {"both": np.abs(values - median), "low": median - values,
                 "high": values - median}[side]
    with np.errstate(invalid="ignore"):
        return finite & (deviation > sigmas * scale) & (deviation > min_deviation)


def find_records(output_dir: Path) -> dict[tuple[str, str | None], dict]:
    """The QC record of every subject/session under ``output_dir``.

    Returns
    -------
    dict
        ``(subject, session) -> record``; an unreadable file gives a ``failed`` record
        whose subject and session come from its name.
    """
    found: dict[tuple[str, str | None], dict] = {}
    for pattern in (f"sub-*/qc/*{QC_SUFFIX}", f"sub-*/ses-*/qc/*{QC_SUFFIX}"):
        for path in sorted(Path(output_dir).glob(pattern)):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                from bids.layout import parse_file_entities  # pybids: only for a broken file

                entities = parse_file_entities(str(path))
                record = {"subject": entities.get("subject"), "session": entities.get("session"),
                          "status": "failed", "error": f"unreadable {path.name}: {err}"}
            found[(record.get("subject"), record.get("session"))] = record
    return found


def expected_subjects(output_dir: Path) -> list[str]:
    """Subject labels of the raw dataset linked in ``dataset_description.json`` (if on disk)."""
    desc = Path(output_dir) / "dataset_description.json"
    try:
        raw = json.loads(desc.read_text()).get("DatasetLinks", {}).get("raw", "")
    except (OSError, ValueError):
        return []
    url = urlparse(raw)
    raw_dir = Path(unquote(url.path)) if url.scheme == "file" else None
    if raw_dir is None or not raw_dir.is_dir():
        return []
    return sorted(p.name.removeprefix("sub-") for p in raw_dir.glob("sub-*") if p.is_dir())


def _mi_sr(record: dict, contrast: str) -> float | None:
    """Mean MI between the SR volume of ``contrast`` and the unit's other SR contrasts."""
    contrasts = record["contrasts"]
    # pairs are keyed "A-B"; contrast keys hold "-" too, so match whole pairs
    pairs = {f"{a}-{b}" for other in contrasts for a, b in ((contrast, other),
                                                             (other, contrast))}
    mi = [v for pair, v in record.get("mi_between_sr", {}).items() if pair in pairs]
    return float(np.mean(mi)) if mi else None


def unit_rows(subject: str, session: str | None, record: dict) -> list[dict]:
    """Table rows (one per contrast) of one unit's QC record: ``ok`` once the subject report
    added its measures (``report``), ``incomplete`` before, ``failed`` for a failed run."""
    base = {"name": unit_name(subject, session), "subject": subject, "session": session,
            "runtime_s": record.get("runtime_s"), "device": record.get("device"),
            "epochs_run": record.get("epochs_run"),
            "stopped_epoch": record.get("stopped_epoch")}
    contrasts = record.get("contrasts") or [None]
    per_contrast = record.get("per_contrast") or {}
    if record.get("status") == "failed" or "report" not in record:
        failed = record.get("status") == "failed"
        error = record.get("error") or "no report metrics: the report step did not finish"
        return [{**base, "contrast": c, "status": "failed" if failed else "incomplete",
                 "error": error, **{key: (per_contrast.get(c) or {}).get(key) for key in QUALITY},
                 "final_mi_training": record.get("final_mi")} for c in contrasts]
    rows = []
    for contrast in contrasts:
        per = per_contrast.get(contrast, {})
        rows.append({**base, "contrast": contrast, "status": "ok",
                     "verdict": verdict(per.get("heldout_gain_db")) or "n/a",
                     **{key: per.get(key) for key in QUALITY},
                     "sharpness_ratio": per.get("sharpness_ratio"),
                     "mi_sr": _mi_sr(record, contrast),
                     "final_mi_training": record.get("final_mi_training"),
                     "best_epoch": record.get("best_epoch"),
                     "mi_rule_epoch": record.get("mi_rule_epoch"), "error": None})
    return rows


def qc_table(records: dict[tuple[str, str | None], dict]) -> pd.DataFrame:
    """One row per subject/session/contrast, in the column order of ``COLUMNS``."""
    rows = [row for (subject, session), record in sorted(records.items(),
                                                         key=lambda kv: (kv[0][0], kv[0][1] or ""))
            for row in unit_rows(subject, session, record)]
    df = pd.DataFrame(rows).reindex(columns=list(COLUMNS))
    for column in COUNTS:  # integers stay integers next to n/a
        df[column] = pd.to_numeric(df[column], errors="coerce").round().astype("Int64")
    return df


def flag_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Why each row deserves a look: a failed run; SR no better than interpolation on the
    held-out slices, a registration the fit had to correct by more than the limits, a noisy
    stack or a slice profile that contradicts its header (the rules of
    :func:`bids_mcsr.qc.records.quality_flags`); blur left through-plane; or a robust outlier, on
    its bad side, of a metric among the same contrast.

    Returns
    -------
    DataFrame
        Columns ``name``, ``contrast``, ``reason``; one row per reason.
    """
    flags = []

    def add(mask: pd.Series, reason) -> None:
        for idx in df.index[mask.fillna(False).astype(bool)]:
            text = reason(df.loc[idx]) if callable(reason) else reason
            flags.append({"name": df.at[idx, "name"], "contrast": df.at[idx, "contrast"],
                          "reason": text})

    ok = df["status"] == "ok"
    add(~ok, lambda r: f"{r['status']}: {r['error']}")
    for idx in df.index[ok]:
        row = {k: (None if pd.isna(v) else v) for k, v in df.loc[idx].items()}
        for reason in quality_flags(row):
            flags.append({"name": row["name"], "contrast": row["contrast"], "reason": reason})
    for metric, (side, floor) in OUTLIER_METRICS.items():
        for _, group in df[ok].groupby("contrast"):
            values = pd.to_numeric(group[metric], errors="coerce").to_numpy(float)
            median = np.nanmedian(values) if np.isfinite(values).any() else np.nan
            outliers = robust_outliers(values, side=side, min_deviation=floor)
            add(pd.Series(outliers, index=group.index).reindex(df.index),
                lambda r, m=metric, med=median: f"outlier in {m}: {float(r[m]):.4g} "
                                                f"(median {med:.4g} for {r['contrast']})"
                                                + OUTLIER_HINTS.get(m, ""))
    return pd.DataFrame(flags, columns=["name", "contrast", "reason"])


def render_group(df: pd.DataFrame, flags: pd.DataFrame, missing: list[str],
                 output_dir: Path) -> str:
    """The group page: counts, flagged units, one strip plot per metric, the full table."""
    units = df.drop_duplicates("name")
    counts = units["status"].value_counts().to_dict()
    summary = (f"{len(units)} subject/session(s) found: "
               + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    parts = [paragraph(summary)]
    if missing:
        parts.append(paragraph("Subjects of the input dataset with no QC record (not run yet, "
                               "or crashed before writing it): "
                               + ", ".join(f"sub-{s}" for s in missing), "flag"))
    flagged = set(zip(flags["name"], flags["contrast"]))
    flag_list = (table(["subject/session", "contrast", "reason"], flags.values.tolist())
                 if len(flags) else paragraph("nothing flagged", "ok"))
    plots = []
    for metric in METRICS:
        values = pd.to_numeric(df[metric], errors="coerce")
        points = [(f"{r['name']} {r['contrast']}", v, (r["name"], r["contrast"]) in flagged)
                  for (_, r), v in zip(df.iterrows(), values)]
        plots.append(f"<h3>{metric}</h3>{strip_plot_svg(metric, points)}")
    reports = [f'<li><a href="{name}.html">{name}</a></li>' for name in units["name"]
               if (Path(output_dir) / f"{name}.html").is_file()]
    rules = paragraph(
        f"A subject/contrast is flagged when its run failed or is incomplete; when SR is not "
        f"better than cubic interpolation on its held-out slices by more than "
        f"{GAIN_MARGIN_DB:g} dB; when the fit had to move a stack by more than "
        f"{POSE_SHIFT_MAX_MM:g} mm or {POSE_ROTATION_MAX_DEG:g}° on top of registration, or a "
        f"stack matches the reference better moved by {ALIGNMENT_STEP_MM:g} mm; when "
        f"a stack's noise exceeds {NOISE_PERCENT_MAX:g} % of its intensity range; when the "
        f"fitted slice-profile FWHM and the header's SliceThickness differ by more than a "
        f"factor {FWHM_RATIO_MAX:g}; or "
        f"when a metric is a robust outlier on its bad side among the same contrast "
        f"(more than {OUTLIER_SIGMAS:g} x 1.4826 x MAD from the median, at least "
        f"{MIN_FOR_OUTLIERS} subjects).")
    parts += [section("Flagged", flag_list + rules),
              section("Metrics across subjects",
                      paragraph("Hover a dot for its subject and contrast; red = flagged.")
                      + "".join(plots)),
              section("Subject reports", f"<ul>{''.join(reports)}</ul>" if reports
                      else paragraph("no subject report found")),
              section("Table", table(list(df.columns), df.astype(object).where(df.notna(), None)
                                     .values.tolist()))]
    return page("bids-mcsr group report", "".join(parts))


def run_group(output_dir: Path) -> int:
    """Write ``group_desc-qc.tsv`` and ``group.html`` into the participant level's output
    root ``output_dir`` from its QC records; return 0 when written, 1 (with a one-line
    message on stderr) when there is no QC record."""
    output_dir = Path(output_dir)
    records = find_records(output_dir)
    if not records:
        print(f"bids-mcsr: no per-subject QC found under {output_dir} "
              f"(sub-*/[ses-*/]qc/*{QC_SUFFIX}); run the participant level first, or check "
              "that output_dir is the participant level's output directory", file=sys.stderr)
        return 1
    df = qc_table(records)
    flags = flag_rows(df)
    missing = [s for s in expected_subjects(output_dir) if s not in {k[0] for k in records}]
    atomic_write(output_dir / "group_desc-qc.tsv",
                 df.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.6g"))
    atomic_write(output_dir / "group.html", render_group(df, flags, missing, output_dir))
    print(f"bids-mcsr: group QC of {df['name'].nunique()} subject/session(s), "
          f"{flags['name'].nunique()} flagged; wrote {output_dir / 'group.html'}")
    return 0
