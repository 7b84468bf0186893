"""The QC record of one unit, and the training curves.

One JSON per subject/session, ``qc/<unit>_desc-qc.json``, in the spirit of MRIQC's image
quality records: the unit's entities and ``status`` (``ok`` or ``failed`` with ``error``),
its quality numbers, per contrast under ``per_contrast`` and per input stack under
``stacks``, and how it was made under ``provenance``. The derivatives step writes it from
the fit's ``result.json`` (or from the error); the subject report rewrites it with its
image measures and ``report`` added (see :func:`qc_record`). The group level reads only
this file. The rules that judge the numbers live in :mod:`bids_mcsr.qc.flags`.
"""

from __future__ import annotations

import math
from typing import Sequence

from bids_mcsr.inr.presets import MI_MIN_EPOCHS, MI_TOLERANCE_NATS, MI_WINDOW
from bids_mcsr.qc.flags import fwhm_ratio, known, verdict

DEFAULT_MI_RULE = {"window": MI_WINDOW, "tolerance_nats": MI_TOLERANCE_NATS,
                   "min_epochs": MI_MIN_EPOCHS}


def _cell(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.6g}"

def curves_tsv(history: dict) -> str:
    """The training history as a TSV table, one row per epoch.

    Parameters
    ----------
    history : dict
        ``{"epoch": [...], "loss": {contrast: [...]}, "mi": [...], "seconds": [...]}`` and
        optionally ``"heldout_mse": {contrast: [...]}`` and ``"lr": [...]``.

    Returns
    -------
    str
        Columns ``epoch``, ``loss_<contrast>``..., ``heldout_mse_<contrast>``... (when the
        history has them), ``mi``, ``seconds`` and ``lr`` (when it has it); ``n/a`` where a
        value was not computed.
    """
    contrasts = list(history.get("loss", {}))
    heldout = {c: v for c, v in (history.get("heldout_mse") or {}).items() if v}
    lrs = history.get("lr") or []
    header = (["epoch"] + [f"loss_{c}" for c in contrasts]
              + [f"heldout_mse_{c}" for c in heldout] + ["mi", "seconds"] + (["lr"] if lrs else []))
    rows = ["\t".join(header)]
    for i, epoch in enumerate(history.get("epoch", [])):
        cells = [str(epoch)] + [_cell(history["loss"][c][i]) for c in contrasts]
        cells += [_cell(v[i] if i < len(v) else None) for v in heldout.values()]
        cells += [_cell(history["mi"][i]), _cell(history["seconds"][i])]
        cells += [_cell(lrs[i])] if lrs else []
        rows.append("\t".join(cells))
    return "\n".join(rows) + "\n"


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
    profile = (result.get("settings") or {}).get("slice_profile")
    rows = []
    for k, acq in enumerate(acquisition):
        held = per_stack.get(k, {})
        rows.append({
            "name": names[k] if names else acq.get("name"), "contrast": acq.get("contrast"),
            "header_thickness_mm": acq.get("header_thickness_mm"),
            "spacing_mm": acq.get("spacing_mm"), "fitted_fwhm_mm": acq.get("fitted_fwhm_mm"),
            "fwhm_ratio": fwhm_ratio(acq.get("fitted_fwhm_mm"), acq.get("header_thickness_mm"),
                                     profile),
            "pose_shift_mm": acq.get("pose_shift_mm"),
            "pose_rotation_deg": acq.get("pose_rotation_deg"),
            "noise_percent": acq.get("noise_percent"),
            "heldout_slices": list(acq.get("heldout_slices") or []),
            "heldout_sr_psnr": held.get("sr_psnr"), "heldout_cubic_psnr": held.get("cubic_psnr"),
            "heldout_gain_db": held.get("gain_db"), "isotropic": acq.get("isotropic")})
    return rows


def _max(values: Sequence[float | None]) -> float | None:
    finite = [float(v) for v in values if known(v)]
    return max(finite) if finite else None


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
    with_ratio = [s for s in own if known(s["fwhm_ratio"]) and s["fwhm_ratio"] > 0]
    worst = max(with_ratio, key=lambda s: abs(math.log(s["fwhm_ratio"])), default=None)
    fitted = [s for s in own if known(s["fitted_fwhm_mm"])]
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




def _per_contrast(result: dict, contrasts: Sequence[str], stacks: list[dict]) -> dict:
    """Per contrast: the final training loss, the joint final MI and the
    :func:`contrast_quality` numbers."""
    losses = (result.get("history") or {}).get("loss", {})
    return {c: {"final_loss": losses[c][-1] if losses.get(c) else None,
                "final_mi": result.get("final_mi"), **contrast_quality(result, c, stacks)}
            for c in contrasts}


def qc_record(subject: str, session: str | None, contrasts: list[str],
              result: dict | None = None, error: str | None = None,
              stack_names: Sequence[str] | None = None, measures: dict | None = None) -> dict:
    """The QC record of one subject/session (the content of ``<unit>_desc-qc.json``).

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
    measures : dict, optional
        What the subject report measured on the images
        (:func:`bids_mcsr.qc.measures.subject_metrics`, with ``provenance`` and ``report``):
        its ``per_contrast`` entries join the record's, its other keys are added (its
        ``stacks`` rows extend the record's with the alignment check).

    Returns
    -------
    dict
        ``subject, session, contrasts, per_contrast`` (final loss, the joint final MI and
        the :func:`contrast_quality` numbers), ``stacks`` (:func:`stack_rows`),
        ``final_mi, runtime_s, device, epochs_run, stopped_epoch, best_epoch`` (the epoch
        with the lowest held-out error), ``mi_rule_epoch`` (:func:`mi_rule_epoch`), the keys
        of ``measures``, ``status`` and, when failed, ``error``.
    """
    result = result or {}
    history = result.get("history", {})
    stacks = stack_rows(result, stack_names)
    record = {
        "subject": subject,
        "session": session,
        "contrasts": contrasts,
        "per_contrast": _per_contrast(result, contrasts, stacks),
        "stacks": stacks,
        "final_mi": result.get("final_mi"),
        "runtime_s": result.get("runtime_s"),
        "device": result.get("device"),
        "epochs_run": result.get("epochs_run"),
        "stopped_epoch": result.get("stopped_epoch"),
        "best_epoch": history.get("best_epoch"),
        "mi_rule_epoch": mi_rule_epoch(history, result.get("settings")) if history else None,
    }
    for contrast, per in (measures or {}).get("per_contrast", {}).items():
        record["per_contrast"].setdefault(contrast, {}).update(per)
    record.update({k: v for k, v in (measures or {}).items() if k != "per_contrast"})
    record["status"] = "failed" if error else "ok"
    if error:
        record["error"] = error
    return record
