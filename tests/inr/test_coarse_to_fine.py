"""Coarse-to-fine hash-grid levels while stack poses are refined."""

import numpy as np
import pytest
import torch

from bids_mcsr.inr.encoding import HashGridEncoding
from bids_mcsr.inr.training import level_weights

CELLS = list(np.geomspace(32.0, 2.0, 8))  # the default model's levels


def test_levels_come_in_coarse_to_fine():
    coarse = np.asarray(CELLS) >= 10.0
    assert np.array_equal(level_weights(CELLS, 0.0, 10.0), coarse.astype(float))
    assert np.all(level_weights(CELLS, 1.0, 10.0) == 1.0)
    previous = level_weights(CELLS, 0.0, 10.0)
    for progress in np.linspace(0.05, 1.0, 20):
        w = level_weights(CELLS, progress, 10.0)
        assert np.all(w[coarse] == 1.0) and np.all((w >= 0) & (w <= 1))
        assert np.all(w >= previous)  # nothing is switched off again
        assert np.all(np.diff(w) <= 0)  # a finer level never ahead of a coarser one
        previous = w
    half = level_weights(CELLS, 0.5, 10.0)
    assert 0 < half[~coarse].sum() < (~coarse).sum()


def _encoding() -> HashGridEncoding:
    enc = HashGridEncoding(100.0, n_levels=4, log2_table_size=12)
    for table in enc.tables:
        table.data.uniform_(-1, 1)
    return enc


@pytest.mark.parametrize("compiled", [False, True])
def test_the_encoding_follows_its_level_weights(compiled):
    """Weights set between calls reach the output, also through ``torch.compile`` (which
    training uses on large subjects), without touching the other levels."""
    torch.manual_seed(0)
    enc = _encoding()
    forward = torch.compile(enc, dynamic=False) if compiled else enc
    x = torch.rand(64, 3) * 2 - 1
    full = forward(x).clone()
    assert full[:, 4:].abs().sum() > 1.0
    enc.level_weight.copy_(torch.tensor([1.0, 1.0, 0.5, 0.0]))
    part = forward(x)
    assert torch.allclose(part[:, :4], full[:, :4])
    assert torch.allclose(part[:, 4:6], 0.5 * full[:, 4:6]) and torch.all(part[:, 6:] == 0)
