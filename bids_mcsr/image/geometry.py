"""World-space geometry: voxel positions, the common coordinate frame, output grids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from nibabel.affines import apply_affine, voxel_sizes

from bids_mcsr.errors import InputError
from bids_mcsr.image.io import Stack, direction_cosines

MAX_GRID_VOXELS = 2**31  # beyond this an output grid is a header error, not a head


@dataclass(frozen=True)
class Grid:
    """A voxel grid in scanner space: a shape and a voxel-to-world affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    spacing = property(lambda self: voxel_sizes(self.affine),
                       doc="Voxel sizes (mm) along the grid's axes.")
    n_voxels = property(lambda self: int(np.prod(self.shape)), doc="Number of voxels of the grid.")


def voxel_centres(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """World (mm) coordinates of every voxel centre, C order, shape ``(N, 3)``."""
    idx = np.indices(tuple(shape), dtype=np.float64).reshape(3, -1).T
    return apply_affine(affine, idx)


def voxel_centres_at(shape: Sequence[int], affine: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """World coordinates of the voxels at flat (C order) indices ``flat`` of a grid."""
    idx = np.stack(np.unravel_index(np.asarray(flat), tuple(shape)), axis=1).astype(np.float64)
    return apply_affine(affine, idx)


def voxel_centres_chunk(shape: Sequence[int], affine: np.ndarray, start: int, stop: int) -> np.ndarray:
    """World coordinates of voxels ``start:stop`` (flat C order) of a grid."""
    return voxel_centres_at(shape, affine, np.arange(start, stop))


def stack_corners(stack: Stack) -> np.ndarray:
    """World coordinates of the 8 outer corners of a stack's field of view.

    Raises
    ------
    InputError
        When the affine sends a corner to a non-finite coordinate.
    """
    lo = -0.5 * np.ones(3)
    hi = np.asarray(stack.data.shape, float) - 0.5
    corners = np.array([[hi[i] if (k >> i) & 1 else lo[i] for i in range(3)] for k in range(8)])
    with np.errstate(all="ignore"):
        world = apply_affine(stack.affine, corners)
    if not np.all(np.isfinite(world)):
        raise InputError(stack.path or stack.name, "the affine places the field of view at "
                         "non-finite coordinates", "fix the header's sform/qform (e.g. "
                         "reconvert from DICOM with dcm2niix)")
    return world


@dataclass(frozen=True)
class CoordinateFrame:
    """Maps world mm to the network's normalised coordinates, one scalar for all axes.

    The same frame is used for training and for inference, so a point has one
    normalised coordinate whatever grid it comes from.
    """

    centre: np.ndarray
    half_extent_mm: float

    @classmethod
    def from_stacks(cls, stacks: Sequence[Stack]) -> "CoordinateFrame":
        pts = np.concatenate([stack_corners(s) for s in stacks])
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        half = float((hi - lo).max() / 2)
        if not (np.isfinite(half) and half > 0):
            raise ValueError(f"the stacks span no finite volume (half extent {half} mm)")
        return cls(centre=(lo + hi) / 2, half_extent_mm=half)

    def normalise(self, world: np.ndarray) -> np.ndarray:
        return ((np.asarray(world) - self.centre) / self.half_extent_mm).astype(np.float32)

    def normalise_vector(self, vec_mm: np.ndarray) -> np.ndarray:
        return (np.asarray(vec_mm) / self.half_extent_mm).astype(np.float32)


def pick_reference(voxel_sizes: Sequence[Sequence[float]], contrasts: Sequence[str] = (),
                   names: Sequence[str] = (), reference: str | None = None) -> int:
    """The reference stack: registration target, output-grid orientation, fixed pose.

    Parameters
    ----------
    voxel_sizes : sequence of (3,) arrays
        Each stack's voxel sizes (mm).
    contrasts, names : sequence of str
        Each stack's contrast key and file name (needed with ``reference``).
    reference : str, optional
        A contrast key (``T1w`` is not ``ce-gadolinium_T1w``), else part of a file name.

    Returns
    -------
    int
        Among the stacks ``reference`` names (default: all), the one with the finest
        through-plane spacing (ties: the first).

    Raises
    ------
    InputError
        When ``reference`` matches no stack.
    """
    candidates = list(range(len(voxel_sizes)))
    if reference:
        candidates = ([i for i in candidates if contrasts[i] == reference]
                      or [i for i in candidates if reference in names[i]])
        if not candidates:
            raise InputError(reference, "matches no selected stack",
                             f"give --reference one of {sorted(set(contrasts))} or part of "
                             f"a file name among {list(names)}")
    return min(candidates, key=lambda i: float(np.max(voxel_sizes[i])))


def make_output_grid(stacks: Sequence[Stack], spacing: float | None = None,
                     reference: int | None = None) -> Grid:
    """An isotropic grid covering the union of the stacks' fields of view.

    Its axes follow the reference stack's orientation (default: the finest
    through-plane spacing), so an oblique acquisition keeps its planes.
    ``spacing`` defaults to the finest in-plane spacing of the inputs.
    """
    if spacing is None:
        spacing = float(min(s.voxel_sizes.min() for s in stacks))
    if not (np.isfinite(spacing) and spacing > 0):
        raise ValueError(f"output spacing must be a positive number of mm, got {spacing}")
    ref = stacks[pick_reference([s.voxel_sizes for s in stacks]) if reference is None else reference]
    rot = direction_cosines(ref.affine)
    pts = np.concatenate([stack_corners(s) for s in stacks])
    local = pts @ rot  # coordinates along the grid axes
    lo, hi = local.min(axis=0), local.max(axis=0)
    with np.errstate(all="ignore"):
        counts = np.maximum(np.ceil((hi - lo) / spacing - 1e-6), 1)
    if not (np.all(np.isfinite(counts)) and float(np.prod(counts)) <= MAX_GRID_VOXELS):
        raise ValueError(f"an output grid of {counts} voxels at {spacing:g} mm is too large; "
                         "use a coarser --output-resolution and check that the stacks overlap")
    shape = tuple(int(n) for n in counts)
    first_centre_local = lo + spacing / 2
    affine = np.eye(4)
    affine[:3, :3] = rot * spacing
    affine[:3, 3] = rot @ first_centre_local
    return Grid(shape, affine)


def _world_box(stack: Stack) -> tuple[np.ndarray, np.ndarray]:
    pts = stack_corners(stack)
    return pts.min(axis=0), pts.max(axis=0)


def check_overlap(stacks: Sequence[Stack], min_fraction: float = 0.05) -> None:
    """Raise if a stack does not overlap the others in world space.

    The test is on world-space bounding boxes: each stack must share at least
    ``min_fraction`` of its box volume with the box of the first stack.
    """
    if len(stacks) < 2:
        return
    lo0, hi0 = _world_box(stacks[0])
    for s in stacks[1:]:
        lo, hi = _world_box(s)
        inter = np.clip(np.minimum(hi, hi0) - np.maximum(lo, lo0), 0, None).prod()
        vol = (hi - lo).prod()
        if inter < min_fraction * vol:
            raise InputError(
                s.path or s.name,
                f"does not overlap {stacks[0].name} in scanner space "
                f"(shared box {100 * inter / vol:.1f}% of its volume)",
                "check that both runs come from the same session and that the headers keep "
                "the scanner coordinates (do not reset the origin)")
