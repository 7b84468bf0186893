"""Split-head multi-contrast INR: a shared trunk over an encoding, one head per contrast."""

from __future__ import annotations

import torch
from torch import nn

from bids_mcsr.inr.encoding import GaussianFourierFeatures, HashGridEncoding
from bids_mcsr.inr.presets import ModelSpec


class SplitHeadINR(nn.Module):
    """Encoding -> shared ReLU trunk -> one small ReLU head per contrast.

    ``forward`` returns every contrast's prediction, shape ``(N, n_contrasts)``.
    """

    def __init__(self, encoding: nn.Module, n_contrasts: int, trunk_width: int,
                 trunk_depth: int, head_width: int) -> None:
        super().__init__()
        self.encoding = encoding
        layers: list[nn.Module] = []
        width_in = encoding.out_dim
        for _ in range(trunk_depth):
            layers += [nn.Linear(width_in, trunk_width), nn.ReLU()]
            width_in = trunk_width
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(width_in, head_width), nn.ReLU(), nn.Linear(head_width, 1))
            for _ in range(n_contrasts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(self.encoding(x))
        return torch.cat([head(h) for head in self.heads], dim=-1)


def build_model(spec: ModelSpec, n_contrasts: int, extent_mm: float, seed: int = 0) -> SplitHeadINR:
    """Instantiate the network of ``spec`` for a frame of ``extent_mm`` (full width)."""
    torch.manual_seed(seed)
    if spec.encoding == "fourier":
        enc: nn.Module = GaussianFourierFeatures(seed=seed, **spec.encoding_args)
    elif spec.encoding == "hashgrid":
        enc = HashGridEncoding(extent_mm=extent_mm, seed=seed, **spec.encoding_args)
    else:
        raise ValueError(f"unknown encoding {spec.encoding!r}")
    return SplitHeadINR(enc, n_contrasts, spec.trunk_width, spec.trunk_depth, spec.head_width)
