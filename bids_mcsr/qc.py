"""Per-subject QC record and training curves, the inputs of reports and the group level."""

from __future__ import annotations

import math


def _cell(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.6g}"


def curves_tsv(history: dict) -> str:
    """The training history as a TSV table, one row per epoch.

    Parameters
    ----------
    history : dict
        ``{"epoch": [...], "loss": {contrast: [...]}, "mi": [...], "seconds": [...]}``.

    Returns
    -------
    str
        Columns ``epoch``, ``loss_<contrast>``..., ``mi``, ``seconds``; ``n/a`` where a value
        was not computed.
    """
    contrasts = list(history.get("loss", {}))
    header = ["epoch"] + [f"loss_{c}" for c in contrasts] + ["mi", "seconds"]
    rows = ["\t".join(header)]
    for i, epoch in enumerate(history.get("epoch", [])):
        cells = [str(epoch)] + [_cell(history["loss"][c][i]) for c in contrasts]
        cells += [_cell(history["mi"][i]), _cell(history["seconds"][i])]
        rows.append("\t".join(cells))
    return "\n".join(rows) + "\n"


def qc_record(subject: str, session: str | None, contrasts: list[str],
              result: dict | None = None, error: str | None = None) -> dict:
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

    Returns
    -------
    dict
        ``subject, session, contrasts, per_contrast`` (final loss, and the joint final MI),
        ``final_mi, runtime_s, device, epochs_run,
        stopped_epoch, status`` and, when failed, ``error``.
    """
    result = result or {}
    losses = result.get("history", {}).get("loss", {})
    record = {
        "subject": subject,
        "session": session,
        "contrasts": contrasts,
        "per_contrast": {c: {"final_loss": losses[c][-1] if losses.get(c) else None,
                             "final_mi": result.get("final_mi")}
                         for c in contrasts},
        "final_mi": result.get("final_mi"),
        "runtime_s": result.get("runtime_s"),
        "device": result.get("device"),
        "epochs_run": result.get("epochs_run"),
        "stopped_epoch": result.get("stopped_epoch"),
        "status": "failed" if error else "ok",
    }
    if error:
        record["error"] = error
    return record
