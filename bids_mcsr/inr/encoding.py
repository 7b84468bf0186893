"""Coordinate encodings: Gaussian Fourier features and a multi-resolution hash grid."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

_PRIMES = (1, 2654435761, 805459861)
_PAIR = (0, 1)


class GaussianFourierFeatures(nn.Module):
    """``[sin(2 pi x B), cos(2 pi x B)]`` with fixed ``B ~ N(0, scale^2)`` (Tancik et al. 2020).

    Coordinates are the normalised frame's (about [-1, 1]).
    """

    def __init__(self, n_frequencies: int = 256, scale: float = 4.0, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("B", torch.randn(3, n_frequencies, generator=gen) * scale)
        self.out_dim = 2 * n_frequencies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        proj = (2 * math.pi) * (x @ self.B)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


@torch.library.custom_op("bids_mcsr::weighted_lookup", mutates_args=())
def weighted_lookup(table: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``sum_c w[:, c] * table[idx[:, c]]``: forward by ``embedding_bag``, backward scattered
    with ``index_add_`` (``embedding_bag``'s own backward measured 4x slower).

    An operator of its own, so that ``torch.compile`` runs both as they are instead of
    generating them: compiled for a CPU, the scatter became parallel atomic adds whose order,
    hence rounding, changed from run to run (two same-seed fits of a crop differed by up to
    12 intensity units after 3 epochs); ``index_add_`` adds in a fixed order. The gradient with
    respect to the corner weights ``w`` (hence to the coordinates) is computed only when asked
    for: learned slice profiles and stack poses need it, plain training does not.
    """
    return F.embedding_bag(idx, table, per_sample_weights=w, mode="sum")


@weighted_lookup.register_fake
def _(table: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return table.new_empty((idx.shape[0], table.shape[1]))


@torch.library.custom_op("bids_mcsr::lookup_table_grad", mutates_args=())
def lookup_table_grad(grad_out: torch.Tensor, idx: torch.Tensor, w: torch.Tensor,
                      n_rows: int) -> torch.Tensor:
    """The gradient of :func:`weighted_lookup` with respect to its table (``n_rows`` rows)."""
    contrib = (w.unsqueeze(-1) * grad_out.unsqueeze(1)).reshape(-1, grad_out.shape[1])
    grad_table = torch.zeros((n_rows, grad_out.shape[1]), dtype=grad_out.dtype, device=grad_out.device)
    return grad_table.index_add_(0, idx.reshape(-1), contrib)


@lookup_table_grad.register_fake
def _(grad_out: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, n_rows: int) -> torch.Tensor:
    return grad_out.new_empty((n_rows, grad_out.shape[1]))


def _keep_inputs(ctx, inputs, output) -> None:
    table, idx, w = inputs
    ctx.save_for_backward(table, idx, w)


def _lookup_backward(ctx, grad_out: torch.Tensor):
    table, idx, w = ctx.saved_tensors
    grad_w = (table[idx] * grad_out.unsqueeze(1)).sum(dim=-1) if ctx.needs_input_grad[2] else None
    return lookup_table_grad(grad_out, idx, w, table.shape[0]), None, grad_w


weighted_lookup.register_autograd(_lookup_backward, setup_context=_keep_inputs)


def _corners(axes: list[torch.Tensor], combine) -> torch.Tensor:
    """``combine`` of per-axis pairs ``(N, 2)`` over the 8 corners of a cell, ``(N, 8)``;
    corner ``c`` is ``(c & 1, c >> 1 & 1, c >> 2 & 1)``."""
    x, y, z = axes
    return combine(combine(z[:, :, None, None], y[:, None, :, None]), x[:, None, None, :]).reshape(-1, 8)


class HashGridEncoding(nn.Module):
    """Multi-resolution hash-grid encoding (Mueller et al. 2022) in plain PyTorch.

    Cell sizes go geometrically from ``coarsest_mm`` to ``finest_mm`` over the frame's
    extent ``extent_mm``; a level whose grid fits its table is indexed densely, a finer
    one through a spatial hash. Each level has its own table of ``n_features`` features.
    """

    def __init__(self, extent_mm: float, n_levels: int = 8, n_features: int = 2,
                 log2_table_size: int = 19, coarsest_mm: float = 32.0, finest_mm: float = 2.0,
                 seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        cells = np.geomspace(coarsest_mm, finest_mm, n_levels) if n_levels > 1 else np.array([finest_mm])
        self.resolutions = [max(1, int(math.ceil(extent_mm / c))) for c in cells]
        self.cell_mm = [float(c) for c in cells]
        max_size = 2 ** log2_table_size
        self.dense = [(r + 1) ** 3 <= max_size for r in self.resolutions]
        self.tables = nn.ParameterList()
        for r, dense in zip(self.resolutions, self.dense):
            size = (r + 1) ** 3 if dense else max_size
            init = (torch.rand(size, n_features, generator=gen) * 2 - 1) * 1e-4
            self.tables.append(nn.Parameter(init))
        self.out_dim = n_levels * n_features
        self.register_buffer("pair", torch.tensor(_PAIR, dtype=torch.int64), persistent=False)
        self.register_buffer("level_weight", torch.ones(n_levels), persistent=False)

    def _level(self, u: torch.Tensor, level: int) -> torch.Tensor:
        """Trilinear interpolation of level ``level``'s table at ``u`` in [0, 1]^3.

        The 8 corners' indices and weights are outer products of the 2 per axis, not an
        (N, 8, 3) index array. Measured against that (one CPU thread, 262144 points, 8
        levels): forward 0.39 -> 0.19 s, forward and backward 0.57 -> 0.31 s. One table for
        all levels, looked up in one call, was slower still (0.49 / 0.74 s: the broadcasts
        over (N, levels, 2, 2, 2) cost more than the 8 calls they save).
        """
        res = self.resolutions[level]
        pos = u * res
        base = torch.clamp(pos.floor(), 0, res - 1)
        frac = pos - base
        lower = base.to(torch.int64)
        pair = self.pair
        if self.dense[level]:
            n = res + 1
            axes = [(lower[:, k:k + 1] + pair) * n ** k for k in range(3)]
            flat = _corners(axes, torch.add)
        else:
            axes = [(lower[:, k:k + 1] + pair) * _PRIMES[k] for k in range(3)]
            flat = _corners(axes, torch.bitwise_xor) % self.tables[level].shape[0]
        weights = [torch.stack([1 - frac[:, k], frac[:, k]], dim=1) for k in range(3)]
        return weighted_lookup(self.tables[level], flat, _corners(weights, torch.mul))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.clamp((x + 1) / 2, 0.0, 1.0)
        return torch.cat([self._level(u, lv) * self.level_weight[lv]
                          for lv in range(len(self.resolutions))], dim=-1)
