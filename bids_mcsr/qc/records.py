"""Per-subject QC record, training curves and the rules that judge a fit without ground truth.

This module is the one home of the QC rules; the subject report and the group level both
call them:

* the verdict: super-resolution against cubic B-spline interpolation of the same held-out
  slices (see :mod:`bids_mcsr.acquisition.holdout`), ``better`` when it gains more than
  :data:`GAIN_MARGIN_DB`, ``worse`` when it loses more, ``no better`` in between;
* the registration check, twice: the rigid pose correction the fit applied to a stack on top
  of registration, a problem above :data:`POSE_SHIFT_MAX_MM` or
  :data:`POSE_ROTATION_MAX_DEG`; and the alignment check of the report
  (:func:`bids_mcsr.qc.measures.alignment_check`), a problem when the reference matches
  a stack better (mutual information higher by more than :data:`ALIGNMENT_MARGIN`) with the
  stack moved by :data:`ALIGNMENT_STEP_MM` along a world axis than where it is;
* the noise level of each stack, a problem above :data:`NOISE_PERCENT_MAX` percent of the
  stack's intensity range;
* the slice profile: the fitted FWHM against the header's ``SliceThickness``, a problem when
  they differ by more than a factor :data:`FWHM_RATIO_MAX`.
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

GAIN_MARGIN_DB = 0.2
POSE_SHIFT_MAX_MM = 3.0
POSE_ROTATION_MAX_DEG = 3.0
NOISE_PERCENT_MAX = 10.0
FWHM_RATIO_MAX = 1.5
ALIGNMENT_STEP_MM = 5.0
ALIGNMENT_MARGIN = 0.1
DEFAULT_MI_RULE = {"window": 4, "tolerance_nats": 2e-3, "min_epochs": 6}


def _cell(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.6g}"


def _known(value: object) -> bool:
    """A finite number (numpy scalars included), not None, NaN or a bool."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def _num(value: object, digits: int = 1) -> str:
    return f"{float(value):.{digits}f}" if _known(value) else "n/a"


def curves_tsv(history: dict) -> str:
    """The training history as a TSV table, one row per epoch.

    Parameters
    ----------
    history : dict
        ``{"epoch": [...], "loss": {contrast: [...]}, "mi": [...], "seconds": [...]}`` and
        optionally ``"heldout_mse": {contrast: [...]}``.

    Returns
    -------
    str
        Columns ``epoch``, ``loss_<contrast>``..., ``heldout_mse_<contrast>``... (when the
        history has them), ``mi``, ``seconds``; ``n/a`` where a value was not computed.
    """
    contrasts = list(history.get("loss", {}))
    heldout = {c: v for c, v in (history.get("heldout_mse") or {}).items() if v}
    header = (["epoch"] + [f"loss_{c}" for c in contrasts]
              + [f"heldout_mse_{c}" for c in heldout] + ["mi", "seconds"])
    rows = ["\t".join(header)]
    for i, epoch in enumerate(history.get("epoch", [])):
        cells = [str(epoch)] + [_cell(history["loss"][c][i]) for c in contrasts]
        cells += [_cell(v[i] if i < len(v) else None) for v in heldout.values()]
        cells += [_cell(history["mi"][i]), _cell(history["seconds"][i])]
        rows.append("\t".join(cells))
    return "\n".join(rows) + "\n"


def verdict(gain_db: float | None) -> str | None:
    """``better``, ``no better`` or ``worse`` for a held-out gain (dB, SR minus cubic);
    None when nothing was held out."""
    if not _known(gain_db):
        return None
    if gain_db > GAIN_MARGIN_DB:
        return "better"
    return "worse" if gain_db < -GAIN_MARGIN_DB else "no better"


def verdict_text(quality: dict) -> str:
    """The verdict of one contrast as a sentence, from :func:`contrast_quality`."""
    gain = quality.get("heldout_gain_db")
    judged = verdict(gain)
    if judged is None:
        return ("no slice could be held out (isotropic stacks, or stacks of fewer than 10 "
                "slices): no estimate of what super-resolution added")
    scores = (f"SR {_num(quality.get('heldout_sr_psnr'), 2)} dB vs cubic "
              f"{_num(quality.get('heldout_cubic_psnr'), 2)} dB on "
              f"{quality.get('heldout_voxels')} voxels")
    if judged == "better":
        return f"SR better than interpolation by {gain:.2f} dB on held-out slices ({scores})"
    if judged == "worse":
        return f"SR worse than interpolation by {-gain:.2f} dB on held-out slices ({scores})"
    return (f"SR no better than interpolation on held-out slices: {gain:+.2f} dB, within "
            f"±{GAIN_MARGIN_DB:g} dB ({scores})")


def pose_problem(shift_mm: float | None, rotation_deg: float | None) -> bool:
    """Whether a pose correction after registration is too large to trust the registration."""
    return ((_known(shift_mm) and shift_mm > POSE_SHIFT_MAX_MM)
            or (_known(rotation_deg) and rotation_deg > POSE_ROTATION_MAX_DEG))


def misaligned(check: dict | None) -> bool:
    """Whether an alignment check found a better match away from the stack's place: the
    best MI of the moved copies above the MI in place by more than ``ALIGNMENT_MARGIN``
    (relative)."""
    if not check or not _known(check.get("mi_in_place")) or not _known(check.get("mi_moved")):
        return False
    return check["mi_moved"] > (1 + ALIGNMENT_MARGIN) * check["mi_in_place"]


def fwhm_ratio(fitted_mm: float | None, header_mm: float | None) -> float | None:
    """Fitted slice-profile FWHM over the header's SliceThickness (None if either is unknown)."""
    if not (_known(fitted_mm) and _known(header_mm)) or header_mm <= 0:
        return None
    return float(fitted_mm / header_mm)


def profile_problem(ratio: float | None) -> bool:
    """Whether the fitted FWHM and the header disagree by more than ``FWHM_RATIO_MAX``."""
    return _known(ratio) and ratio > 0 and abs(math.log(ratio)) > math.log(FWHM_RATIO_MAX)


def noise_problem(noise_percent: float | None) -> bool:
    """Whether a stack's noise exceeds ``NOISE_PERCENT_MAX`` % of its intensity range."""
    return _known(noise_percent) and noise_percent > NOISE_PERCENT_MAX


def stack_rows(result: dict, names: Sequence[str] | None = None) -> list[dict]:
    """One QC row per acquired stack, from a ``result.json``'s ``acquisition`` and
    ``validation``.

    Parameters
    ----------
    result : dict
        The ``result.json`` content (or the same keys of an ``SRResult``).
    names : sequence of str, optional
        Display names of the stacks, in the order of ``result["acquisition"]`` (e.g. the
        BIDS files the registered copies came from).

    Returns
    -------
    list of dict
        ``name, contrast, header_thickness_mm, spacing_mm, fitted_fwhm_mm, fwhm_ratio,
        pose_shift_mm, pose_rotation_deg, noise_percent, heldout_slices, heldout_sr_psnr,
        heldout_cubic_psnr, heldout_gain_db, isotropic``.
    """
    acquisition = list(result.get("acquisition") or [])
    validation = result.get("validation") or {}
    names = list(names) if names is not None and len(names) == len(acquisition) else None
    # held-out scores per stack are listed per contrast in the order of its stacks
    per_stack: dict[int, dict] = {}
    for contrast in dict.fromkeys(a.get("contrast") for a in acquisition):
        own = [k for k, a in enumerate(acquisition) if a.get("contrast") == contrast]
        scores = list((validation.get(contrast) or {}).get("stacks") or [])
        if len(scores) == len(own):
            per_stack.update(zip(own, scores))
    rows = []
    for k, acq in enumerate(acquisition):
        held = per_stack.get(k, {})
        rows.append({
            "name": names[k] if names else acq.get("name"), "contrast": acq.get("contrast"),
            "header_thickness_mm": acq.get("header_thickness_mm"),
            "spacing_mm": acq.get("spacing_mm"), "fitted_fwhm_mm": acq.get("fitted_fwhm_mm"),
            "fwhm_ratio": fwhm_ratio(acq.get("fitted_fwhm_mm"), acq.get("header_thickness_mm")),
            "pose_shift_mm": acq.get("pose_shift_mm"),
            "pose_rotation_deg": acq.get("pose_rotation_deg"),
            "noise_percent": acq.get("noise_percent"),
            "heldout_slices": list(acq.get("heldout_slices") or []),
            "heldout_sr_psnr": held.get("sr_psnr"), "heldout_cubic_psnr": held.get("cubic_psnr"),
            "heldout_gain_db": held.get("gain_db"), "isotropic": acq.get("isotropic")})
    return rows


def _max(values: Sequence[float | None]) -> float | None:
    known = [float(v) for v in values if _known(v)]
    return max(known) if known else None


def contrast_quality(result: dict, contrast: str, stacks: Sequence[dict] | None = None) -> dict:
    """The per-contrast QC numbers of one fit.

    Parameters
    ----------
    result : dict
        The ``result.json`` content.
    contrast : str
        Contrast key.
    stacks : sequence of dict, optional
        :func:`stack_rows` of ``result`` (computed when not given).

    Returns
    -------
    dict
        ``verdict``, ``heldout_gain_db``, ``heldout_sr_psnr``, ``heldout_cubic_psnr``,
        ``heldout_voxels``, ``consistency_rounds``, ``pose_shift_max_mm``,
        ``pose_rotation_max_deg``, ``noise_percent_max``, and the stack whose fitted FWHM
        departs most from its header: ``fwhm_fitted_mm``, ``fwhm_header_mm``,
        ``fwhm_ratio``.
    """
    held = (result.get("validation") or {}).get(contrast) or {}
    own = [s for s in (stacks if stacks is not None else stack_rows(result))
           if s["contrast"] == contrast]
    with_ratio = [s for s in own if _known(s["fwhm_ratio"]) and s["fwhm_ratio"] > 0]
    worst = max(with_ratio, key=lambda s: abs(math.log(s["fwhm_ratio"])), default=None)
    fitted = [s for s in own if _known(s["fitted_fwhm_mm"])]
    return {"verdict": verdict(held.get("gain_db")),
            "heldout_gain_db": held.get("gain_db"), "heldout_sr_psnr": held.get("sr_psnr"),
            "heldout_cubic_psnr": held.get("cubic_psnr"), "heldout_voxels": held.get("voxels"),
            "consistency_rounds": held.get("consistency_rounds"),
            "pose_shift_max_mm": _max([s["pose_shift_mm"] for s in own]),
            "pose_rotation_max_deg": _max([s["pose_rotation_deg"] for s in own]),
            "noise_percent_max": _max([s["noise_percent"] for s in own]),
            "fwhm_fitted_mm": (worst or (fitted[0] if fitted else {})).get("fitted_fwhm_mm"),
            "fwhm_header_mm": (worst or {}).get("header_thickness_mm"),
            "fwhm_ratio": (worst or {}).get("fwhm_ratio")}


def quality_flags(quality: dict) -> list[str]:
    """Why one contrast of one fit deserves a look, from :func:`contrast_quality` numbers
    (or a group-table row with the same keys); empty for a healthy fit."""
    reasons = []
    gain, judged = quality.get("heldout_gain_db"), verdict(quality.get("heldout_gain_db"))
    if judged in ("no better", "worse"):
        reasons.append(f"SR {judged} than interpolation on held-out slices: {gain:+.2f} dB "
                       f"(SR {_num(quality.get('heldout_sr_psnr'), 2)} vs cubic "
                       f"{_num(quality.get('heldout_cubic_psnr'), 2)} dB)")
    if quality.get("misaligned_stacks"):
        reasons.append(f"registration looks wrong: {quality['misaligned_stacks']} stack(s) "
                       f"match the reference better moved by {ALIGNMENT_STEP_MM:g} mm than "
                       "where they are")
    shift, rotation = quality.get("pose_shift_max_mm"), quality.get("pose_rotation_max_deg")
    if pose_problem(shift, rotation):
        reasons.append(f"registration looks wrong: the fit moved a stack by {_num(shift)} mm "
                       f"/ {_num(rotation)}° on top of registration (limit "
                       f"{POSE_SHIFT_MAX_MM:g} mm / {POSE_ROTATION_MAX_DEG:g}°)")
    noise = quality.get("noise_percent_max")
    if noise_problem(noise):
        reasons.append(f"noisy stack: noise {_num(noise)} % of its intensity range "
                       f"(limit {NOISE_PERCENT_MAX:g} %)")
    if profile_problem(quality.get("fwhm_ratio")):
        reasons.append(f"slice profile: fitted FWHM {_num(quality.get('fwhm_fitted_mm'), 2)} "
                       f"mm vs header SliceThickness {_num(quality.get('fwhm_header_mm'), 2)} "
                       "mm (check the header)")
    return reasons


def mi_rule_epoch(history: dict, settings: dict | None = None) -> int | None:
    """The epoch at which the MI plateau rule stops (or would have stopped) training.

    The rule of :func:`bids_mcsr.inr.stopping.mi_plateaued` with the run's window,
    tolerance and minimum epochs, replayed on the recorded MI; None with a single contrast
    or when MI never plateaued within the epochs run.
    """
    from bids_mcsr.inr.stopping import mi_plateaued

    rule = {**DEFAULT_MI_RULE, **((settings or {}).get("mi_stopping") or {})}
    values: list[float] = []
    for epoch, mi in zip(history.get("epoch", []), history.get("mi", [])):
        if mi is None:
            continue
        values.append(float(mi))
        if epoch >= int(rule["min_epochs"]) and mi_plateaued(
                values, int(rule["window"]), float(rule["tolerance_nats"])):
            return int(epoch)
    return None


def qc_record(subject: str, session: str | None, contrasts: list[str],
              result: dict | None = None, error: str | None = None,
              stack_names: Sequence[str] | None = None) -> dict:
    """The QC summary of one subject/session, for the group level.

    Parameters
    ----------
    subject, session : str
        Labels without prefixes (session may be None).
    contrasts : list of str
        Contrasts that were (to be) super-resolved.
    result : dict, optional
        The ``result.json`` content of a finished fit.
    error : str, optional
        Why the subject failed; sets ``status`` to ``failed``.
    stack_names : sequence of str, optional
        Names of the input stacks in the fit's order (the acquisition entries otherwise
        carry the names of the registered copies).

    Returns
    -------
    dict
        ``subject, session, contrasts, per_contrast`` (final loss, the joint final MI and
        the :func:`contrast_quality` numbers), ``stacks`` (:func:`stack_rows`),
        ``final_mi, runtime_s, device, epochs_run, stopped_epoch, best_epoch`` (the epoch
        with the lowest held-out error), ``mi_rule_epoch`` (:func:`mi_rule_epoch`), ``status``
        and, when failed, ``error``.
    """
    result = result or {}
    history = result.get("history", {})
    losses = history.get("loss", {})
    stacks = stack_rows(result, stack_names)
    record = {
        "subject": subject,
        "session": session,
        "contrasts": contrasts,
        "per_contrast": {c: {"final_loss": losses[c][-1] if losses.get(c) else None,
                             "final_mi": result.get("final_mi"),
                             **contrast_quality(result, c, stacks)}
                         for c in contrasts},
        "stacks": stacks,
        "final_mi": result.get("final_mi"),
        "runtime_s": result.get("runtime_s"),
        "device": result.get("device"),
        "epochs_run": result.get("epochs_run"),
        "stopped_epoch": result.get("stopped_epoch"),
        "best_epoch": history.get("best_epoch"),
        "mi_rule_epoch": mi_rule_epoch(history, result.get("settings")) if history else None,
        "status": "failed" if error else "ok",
    }
    if error:
        record["error"] = error
    return record
