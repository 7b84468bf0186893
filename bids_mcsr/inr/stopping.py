"""Mutual information between predicted contrasts, and the plateau rule for early stopping."""

from __future__ import annotations

from itertools import combinations

import numpy as np

from bids_mcsr.image.metrics import mutual_information
from bids_mcsr.inr.presets import MI_TOLERANCE_NATS, MI_WINDOW


def mean_pairwise_mi(pred: np.ndarray, bins: int = 32) -> float | None:
    """Mean MI over every pair of columns of ``pred`` ``(N, C)``; ``None`` for one contrast."""
    pairs = list(combinations(range(pred.shape[1]), 2))
    if not pairs:
        return None
    return float(np.mean([mutual_information(pred[:, i], pred[:, j], bins) for i, j in pairs]))


def mi_plateaued(mi_history: list[float], window: int = MI_WINDOW,
                 tolerance: float = MI_TOLERANCE_NATS) -> bool:
    """True when the mean absolute epoch-to-epoch MI change over the last ``window``
    changes is below ``tolerance`` (nats), i.e. MI has stopped moving."""
    if len(mi_history) < window + 1:
        return False
    recent = np.asarray(mi_history[-(window + 1):])
    return bool(np.mean(np.abs(np.diff(recent))) < tolerance)
