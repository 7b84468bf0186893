"""Report figures (PNG files) drawn with matplotlib's object API, no pyplot state.

Every image is shown on the SR output grid: acquired stacks are resampled onto its planes
through one voxel (those planes only) with nearest-neighbour interpolation so their thick
slices stay visibly blocky, every panel of a figure cuts through the same physical point, and
a row's intensity window is set on the pixels it shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from skimage.feature import canny

from bids_mcsr.image.geometry import Grid
from bids_mcsr.image.io import Stack
from bids_mcsr.image.metrics import resample_planes

DPI = 80
PLANE_NAMES = {"L": "sagittal", "R": "sagittal", "A": "coronal", "P": "coronal",
               "S": "axial", "I": "axial"}
ZOOM_FRACTION = 0.35
EDGE_COLOURS = ListedColormap(["red"])


def focus_point(mask: np.ndarray) -> tuple[int, int, int]:
    """Voxel index (on the grid) of the mask's centre of mass, or the grid centre."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return tuple(int(n // 2) for n in mask.shape)
    return tuple(int(round(c)) for c in np.argwhere(mask).mean(axis=0))


def plane_names(grid: Grid) -> list[str]:
    """Anatomical name of the plane normal to each grid axis (``axial`` ...)."""
    return [PLANE_NAMES[code] for code in nib.aff2axcodes(grid.affine)]


def _planes(volume: np.ndarray, point: Sequence[int]) -> list[np.ndarray]:
    """The three planes of a grid volume through ``point``, normal to axes 0, 1, 2 (as
    :func:`~bids_mcsr.image.metrics.resample_planes` gives a stack's)."""
    return [np.take(volume, point[axis], axis=axis) for axis in range(3)]


def _pixels(planes: Sequence[np.ndarray]) -> np.ndarray:
    """Every pixel of the three planes, the panels an intensity window is set on."""
    return np.concatenate([p.ravel() for p in planes])


def _window(volume: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    vals = volume[mask] if mask.any() else volume.ravel()
    lo, hi = np.percentile(vals, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def _show(ax: Axes, image: np.ndarray, window: tuple[float, float], title: str) -> None:
    ax.imshow(image, cmap="gray", origin="lower", vmin=window[0], vmax=window[1],
              interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def _zoom_box(shape: tuple[int, int], centre: tuple[int, int]) -> tuple[slice, slice]:
    """Rows/columns of a detail window around ``centre`` in a 2D image of ``shape``."""
    out = []
    for n, c in zip(shape, centre):
        half = max(4, int(n * ZOOM_FRACTION / 2))
        lo = int(np.clip(c - half, 0, max(n - 2 * half, 0)))
        out.append(slice(lo, min(n, lo + 2 * half)))
    return out[0], out[1]


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def plot_lr_vs_sr(stacks: Sequence[Stack], volume: np.ndarray, grid: Grid, mask: np.ndarray,
                  point: Sequence[int], through_axis: int, path: Path) -> Path:
    """Acquired stacks of one contrast against its SR volume: three planes and a detail.

    Parameters
    ----------
    stacks : sequence of Stack
        The contrast's acquired (registered) stacks.
    volume : ndarray
        Its SR volume on ``grid``.
    grid : Grid
        SR output grid.
    mask : ndarray
        Foreground on ``grid`` (for intensity windows).
    point : sequence of int
        Grid voxel every plane goes through.
    through_axis : int
        Grid axis of the first stack's slice direction; the detail is cut along it.
    path : Path
        PNG to write (and return).
    """
    inside = _pixels(_planes(np.asarray(mask, bool), point))
    rows = [(f"acquired {s.name}", resample_planes(s, grid, point, order=0)) for s in stacks]
    rows.append(("super-resolved", _planes(np.asarray(volume, np.float32), point)))
    names = plane_names(grid)
    detail_axis = next(a for a in range(3) if a != through_axis)
    fig = Figure(figsize=(12, 3.1 * len(rows)))
    axes = fig.subplots(len(rows), 4, squeeze=False)
    for r, (label, planes) in enumerate(rows):
        window = _window(_pixels(planes), inside)
        for axis in range(3):
            _show(axes[r][axis], planes[axis].T, window, f"{label}\n{names[axis]}")
        image = planes[detail_axis].T
        centre = [point[a] for a in range(3) if a != detail_axis][::-1]
        box = _zoom_box(image.shape, (centre[0], centre[1]))
        _show(axes[r][3], image[box], window, f"detail, {names[detail_axis]}")
    return _save(fig, path)


def plot_registration(reference: Stack, moving: Stack, grid: Grid, point: Sequence[int],
                      path: Path) -> Path:
    """Edges of the reference (red) over a registered stack, in three planes.

    Parameters
    ----------
    reference, moving : Stack
        The reference stack and a stack registered to it.
    grid : Grid
        The grid both are resampled onto (linear interpolation), cut through its voxel
        ``point`` in each plane.
    point : sequence of int
        See ``grid``.
    path : Path
        PNG to write (and return).
    """
    ref = resample_planes(reference, grid, point, order=1)
    mov = resample_planes(moving, grid, point, order=1)
    ref_scale = max(float(np.percentile(_pixels(ref), 99)), 1e-6)
    names = plane_names(grid)
    fig = Figure(figsize=(12, 4))
    axes = fig.subplots(1, 3)
    shown = _pixels(mov)
    window = _window(shown, shown > np.percentile(shown, 50))
    for axis in range(3):
        edges = canny(ref[axis].T / ref_scale, sigma=1.5)
        _show(axes[axis], mov[axis].T, window, f"{moving.name}\n{names[axis]}")
        axes[axis].imshow(np.ma.masked_where(~edges, edges.astype(float)), cmap=EDGE_COLOURS,
                          origin="lower", vmin=0, vmax=1, interpolation="nearest", alpha=0.9)
    fig.suptitle(f"edges of the reference {reference.name}", fontsize=10)
    return _save(fig, path)


def plot_training(history: dict, stopped_epoch: int | None, mi_rule_epoch: int | None,
                  path: Path) -> Path:
    """Loss per contrast, held-out error per contrast and MI between contrasts per epoch.

    Parameters
    ----------
    history : dict
        ``SRResult.history`` (``heldout_mse`` and ``best_epoch`` when slices were held out).
    stopped_epoch : int, optional
        Epoch training stopped at (dashed line).
    mi_rule_epoch : int, optional
        Epoch at which the MI plateau rule stops, or would have (dotted line on the MI
        panel).
    path : Path
        PNG to write (and return).
    """
    fig = Figure(figsize=(15, 3.6))
    loss_ax, held_ax, mi_ax = fig.subplots(1, 3)
    _plot_loss(loss_ax, history)
    _plot_heldout(held_ax, history)
    has_mi = _plot_mi(mi_ax, history, mi_rule_epoch)
    if stopped_epoch:
        for ax in (loss_ax, held_ax, mi_ax):
            ax.axvline(stopped_epoch, color="k", ls="--", lw=1,
                       label=f"stopped at {stopped_epoch}" if ax is mi_ax else None)
    if has_mi:
        mi_ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _plot_loss(ax: Axes, history: dict) -> None:
    """Training loss per contrast and epoch, on a log scale when positive."""
    for contrast, values in history.get("loss", {}).items():
        ax.plot(history.get("epoch", []), values, marker="o", ms=3, label=contrast)
    ax.set(xlabel="epoch", ylabel="training loss", title="loss per contrast")
    if any(v and v > 0 for vals in history.get("loss", {}).values() for v in vals):
        ax.set_yscale("log")
    ax.legend(fontsize=8)


def _plot_heldout(held_ax: Axes, history: dict) -> None:
    """Held-out error per contrast and epoch, its lowest epoch marked in green and where the
    held-out slices joined the training dashed."""
    epochs = history.get("epoch", [])
    best = history.get("best_epoch") or None
    curves = {c: [(e, v) for e, v in zip(epochs, values) if v is not None]
              for c, values in (history.get("heldout_mse") or {}).items()}
    curves = {c: pts for c, pts in curves.items() if pts}
    for contrast, points in curves.items():
        held_ax.plot(*zip(*points), marker="o", ms=3, label=contrast)
    if curves:
        if all(v > 0 for pts in curves.values() for _, v in pts):
            held_ax.set_yscale("log")
        if best:
            held_ax.axvline(best, color="tab:green", lw=1.5, label=f"lowest: epoch {best}")
        joined = history.get("heldout_joined_after")
        if joined:
            held_ax.axvline(joined + 0.5, color="tab:gray", ls="--", lw=1,
                            label=f"trained on after epoch {joined}")
        held_ax.legend(fontsize=8)
    else:
        held_ax.text(0.5, 0.5, "no held-out slices", ha="center", transform=held_ax.transAxes)
    held_ax.set(xlabel="epoch", ylabel="held-out MSE (normalised)",
                title="held-out slices (lower is better)")


def _plot_mi(mi_ax: Axes, history: dict, mi_rule_epoch: int | None) -> bool:
    """MI between the contrasts per epoch, where the MI rule stops dotted; False (and a
    note) with a single contrast."""
    epochs = history.get("epoch", [])
    mi = [(e, m) for e, m in zip(epochs, history.get("mi", [])) if m is not None]
    if mi:
        mi_ax.plot(*zip(*mi), marker="o", ms=3, color="tab:purple", label="MI")
        if mi_rule_epoch:
            mi_ax.axvline(mi_rule_epoch, color="tab:purple", ls=":", lw=1.5,
                          label=f"MI rule stops: epoch {mi_rule_epoch}")
    else:
        mi_ax.text(0.5, 0.5, "single contrast: no MI", ha="center", transform=mi_ax.transAxes)
    mi_ax.set(xlabel="epoch", ylabel="MI (nats)", title="MI between contrasts (information)")
    return bool(mi)
