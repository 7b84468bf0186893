"""Group level: collect every subject's QC JSONs into one table, one page and a flag list.

Reads only the per-subject files the participant level wrote (``*_desc-qc.json`` and, for
finished subjects, ``*_desc-metrics.json``); never touches images. Writes
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

from .derivatives import atomic_write
from .report import METRICS_SUFFIX, unit_name
from .report_html import page, paragraph, section, strip_plot_svg, table

QC_SUFFIX = "_desc-qc.json"
MAD_TO_SIGMA = 1.4826
OUTLIER_SIGMAS = 3.0
MIN_FOR_OUTLIERS = 4
DC_PSNR_MIN_DB = 20.0
DC_SSIM_MIN = 0.6
SHARPNESS_MIN = 0.5
METRICS = ("dc_psnr_db", "dc_ssim", "sharpness_ratio", "mi_sr", "final_mi_training",
           "mi_change_last_epochs", "runtime_s")
OUTLIER_METRICS = ("dc_psnr_db", "dc_ssim", "sharpness_ratio", "mi_sr")
COLUMNS = ("name", "subject", "session", "contrast", "status", *METRICS, "mi_converged",
           "epochs_run", "stopped_epoch", "device", "error")


def robust_outliers(values: np.ndarray, sigmas: float = OUTLIER_SIGMAS) -> np.ndarray:
    """Which values lie more than ``sigmas`` robust SDs (1.4826 MAD) from the median.

    Parameters
    ----------
    values : ndarray
        One metric across units; NaN is never an outlier.
    sigmas : float
        Threshold in robust standard deviations.

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
    scale = MAD_TO_SIGMA * np.median(np.abs(values[finite] - median))
    scale = max(scale, 1e-6 * max(1.0, abs(median)))
    return finite & (np.abs(values - median) > sigmas * scale)


def find_records(output_dir: Path) -> dict[tuple[str, str | None], dict]:
    """Every unit's QC record, with its metrics record merged in when there is one.

    Parameters
    ----------
    output_dir : Path
        Output dataset root.

    Returns
    -------
    dict
        ``(subject, session) -> record``; a record has ``qc`` and/or ``metrics`` keys.
    """
    found: dict[tuple[str, str | None], dict] = {}
    for suffix, key in ((QC_SUFFIX, "qc"), (METRICS_SUFFIX, "metrics")):
        for pattern in (f"sub-*/qc/*{suffix}", f"sub-*/ses-*/qc/*{suffix}"):
            for path in sorted(Path(output_dir).glob(pattern)):
                try:
                    data = json.loads(path.read_text())
                except (OSError, ValueError) as err:
                    data = {"status": "failed", "error": f"unreadable {path.name}: {err}"}
                subject = data.get("subject") or path.name.split("_")[0].removeprefix("sub-")
                found.setdefault((subject, data.get("session")), {})[key] = data
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


def unit_rows(subject: str, session: str | None, record: dict) -> list[dict]:
    """Table rows (one per contrast) of one unit's records."""
    qc, metrics = record.get("qc", {}), record.get("metrics")
    base = {"name": unit_name(subject, session), "subject": subject, "session": session}
    contrasts = (metrics or qc).get("contrasts") or [None]
    if qc.get("status") == "failed" or metrics is None:
        error = qc.get("error") or ("no report metrics: the report step did not finish"
                                    if qc else "no QC record")
        status = "failed" if qc.get("status") == "failed" else "incomplete"
        return [{**base, "contrast": c, "status": status, "error": error,
                 "runtime_s": qc.get("runtime_s"), "device": qc.get("device"),
                 "epochs_run": qc.get("epochs_run"), "stopped_epoch": qc.get("stopped_epoch"),
                 "final_mi_training": qc.get("final_mi")} for c in contrasts]
    rows = []
    for contrast in contrasts:
        per = metrics["per_contrast"][contrast]
        # pairs are keyed "A-B"; contrast keys hold "-" too, so match whole pairs
        pairs = {f"{a}-{b}" for other in contrasts for a, b in ((contrast, other),
                                                                 (other, contrast))}
        mi = [v for pair, v in metrics.get("mi_between_sr", {}).items() if pair in pairs]
        rows.append({**base, "contrast": contrast, "status": "ok",
                     "dc_psnr_db": per["dc_psnr_db"], "dc_ssim": per["dc_ssim"],
                     "sharpness_ratio": per["sharpness_ratio"],
                     "mi_sr": float(np.mean(mi)) if mi else None,
                     "final_mi_training": metrics.get("final_mi_training"),
                     "mi_change_last_epochs": metrics.get("mi_change_last_epochs"),
                     "mi_converged": metrics.get("mi_converged"),
                     "runtime_s": metrics.get("runtime_s"),
                     "epochs_run": metrics.get("epochs_run"),
                     "stopped_epoch": metrics.get("stopped_epoch"),
                     "device": metrics.get("device"), "error": None})
    return rows


def qc_table(records: dict[tuple[str, str | None], dict]) -> pd.DataFrame:
    """One row per subject/session/contrast, in the column order of ``COLUMNS``."""
    rows = [row for (subject, session), record in sorted(records.items(),
                                                         key=lambda kv: (kv[0][0], kv[0][1] or ""))
            for row in unit_rows(subject, session, record)]
    return pd.DataFrame(rows).reindex(columns=list(COLUMNS))


def flag_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Why each row deserves a look: failure, MI not converged, poor data consistency,
    blur left through-plane, or an outlier of a metric among the same contrast.

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

    add(df["status"] != "ok", lambda r: f"{r['status']}: {r['error']}")
    add(df["mi_converged"].astype(object) == False,  # noqa: E712 (None means not applicable)
        lambda r: f"MI not converged (changed {r['mi_change_last_epochs']:.3g} nats "
                  "over the last epochs)")
    add(df["dc_psnr_db"] < DC_PSNR_MIN_DB,
        lambda r: f"poor data consistency: PSNR {r['dc_psnr_db']:.1f} dB < {DC_PSNR_MIN_DB:g}")
    add(df["dc_ssim"] < DC_SSIM_MIN,
        lambda r: f"poor data consistency: SSIM {r['dc_ssim']:.3f} < {DC_SSIM_MIN:g}")
    add(df["sharpness_ratio"] < SHARPNESS_MIN,
        lambda r: f"blurred through-plane: sharpness ratio {r['sharpness_ratio']:.2f} "
                  f"< {SHARPNESS_MIN:g}")
    for metric in OUTLIER_METRICS:
        for _, group in df[df["status"] == "ok"].groupby("contrast"):
            values = pd.to_numeric(group[metric], errors="coerce").to_numpy(float)
            median = np.nanmedian(values) if np.isfinite(values).any() else np.nan
            add(pd.Series(robust_outliers(values), index=group.index).reindex(df.index),
                lambda r, m=metric, med=median: f"outlier in {m}: {r[m]:.4g} "
                                                f"(median {med:.4g} for {r['contrast']})")
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
    parts += [section("Flagged", flag_list),
              section("Metrics across subjects",
                      paragraph("Hover a dot for its subject and contrast; red = flagged.")
                      + "".join(plots)),
              section("Subject reports", f"<ul>{''.join(reports)}</ul>" if reports
                      else paragraph("no subject report found")),
              section("Table", table(list(df.columns), df.astype(object).where(df.notna(), None)
                                     .values.tolist()))]
    return page("bids-mcsr group report", "".join(parts))


def run_group(output_dir: Path) -> int:
    """Write ``group_desc-qc.tsv`` and ``group.html`` from the per-subject QC JSONs.

    Parameters
    ----------
    output_dir : Path
        Output dataset root of the participant level.

    Returns
    -------
    int
        0 when written; 1 (with a one-line message on stderr) when no QC record exists.
    """
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
    atomic_write(output_dir / "group_desc-qc.tsv", df.to_csv(sep="\t", index=False, na_rep="n/a"))
    atomic_write(output_dir / "group.html", render_group(df, flags, missing, output_dir))
    print(f"bids-mcsr: group QC of {df['name'].nunique()} subject/session(s), "
          f"{flags['name'].nunique()} flagged; wrote {output_dir / 'group.html'}")
    return 0
