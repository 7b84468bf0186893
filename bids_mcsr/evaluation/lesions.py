"""Truth-known lesions inserted into an isotropic head (nothing is downloaded).

Each lesion is an irregular blob with smooth edges whose intensity is set per contrast as a
multiple of that contrast's white-matter intensity; a contrast it is not listed for is left
untouched (the lesion is invisible there). A contrast-enhanced T1w (``ce-gadolinium_T1w``) is
derived from the T1w: identical outside the lesions (no vessel or dura enhancement is
modelled), with each lesion's own ce-T1w intensity and, for ring-enhancing lesions, a bright
rim around a dark core.

Shape: the level function ``|x - c| - r (1 + a n(p))`` in mm, with ``r`` half the diameter,
``n`` a smooth (Gaussian-filtered, unit-variance) random field read at ``p``, the point of the
nominal sphere in the direction of ``x``, and ``a`` the irregularity;
the membership ``(1 - tanh(level / edge)) / 2`` gives edges about ``edge`` mm wide. The
scoring region of a lesion is its membership above one half; its shell is the head tissue
2-5 mm outside it, away from every other lesion.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

CE_T1W = "ce-gadolinium_T1w"
EDGE_MM = 1.0  # width of the smooth lesion edge
IRREGULARITY = 0.2  # relative amplitude of the radius modulation
SHELL_MM = (2.0, 5.0)  # inner and outer distance of the surrounding-tissue shell
SPACING_MM = 6.0  # least gap between two lesions' outlines


@dataclass(frozen=True)
class Lesion:
    """One lesion: its size and its intensity per contrast (a multiple of the white matter's,
    or absent where the lesion is invisible).

    Parameters
    ----------
    name : str
        Label used in the benchmark tables.
    diameter_mm : float
        Nominal diameter (the shape varies around it by :data:`IRREGULARITY`).
    intensity : dict
        Contrast key -> lesion intensity as a multiple of that contrast's white-matter
        intensity; a contrast not listed keeps its tissue (the lesion is invisible there).
    ring : dict
        Contrast key -> intensity of an enhancing rim (multiple of white matter) drawn over
        the lesion's outer ``ring_mm``; the inside keeps ``intensity``.
    ring_mm : float
        Rim thickness.
    """

    name: str
    diameter_mm: float
    intensity: dict[str, float]
    ring: dict[str, float] = field(default_factory=dict)
    ring_mm: float = 2.0

    def visible_in(self, contrast: str) -> bool:
        """Whether the lesion changes ``contrast`` at all."""
        return contrast in self.intensity or contrast in self.ring

    @property
    def is_control(self) -> bool:
        """A region scored like a lesion but changed in no contrast: the error of a
        lesion-free region of the same size, to compare the invisible lesions with."""
        return not self.intensity and not self.ring


# Intensities relative to white matter, from typical clinical appearance: T2w/FLAIR
# hyperintense, T1w hypointense ("black holes"), ring enhancement around a necrotic core.
LESIONS = (
    Lesion("enhancing tumour", 14.0, {"T1w": 0.6, CE_T1W: 0.5, "T2w": 2.2, "FLAIR": 1.8},
           ring={CE_T1W: 1.3}),
    Lesion("T1 black hole", 8.0, {"T1w": 0.6, CE_T1W: 0.6, "T2w": 2.2, "FLAIR": 1.8}),
    Lesion("T2/FLAIR only", 10.0, {"T2w": 2.0, "FLAIR": 1.7}),
    Lesion("FLAIR only", 7.0, {"FLAIR": 1.8}),
    Lesion("enhancing nodule", 5.0, {CE_T1W: 1.3}),
    Lesion("no lesion (control)", 8.0, {}),
)


@dataclass
class LesionCase:
    """A head with lesions: the truth per contrast and where each lesion is scored."""

    truth: dict[str, np.ndarray]
    affine: np.ndarray
    head: np.ndarray
    lesions: tuple[Lesion, ...]
    centres: list[np.ndarray]
    regions: list[np.ndarray]
    rims: list[np.ndarray]
    shells: list[np.ndarray]


def white_matter(vols: dict[str, np.ndarray], head: np.ndarray) -> np.ndarray:
    """White matter as the brightest quarter of the T1w inside ``head``."""
    t1 = vols["T1w"]
    return head & (t1 >= np.percentile(t1[head], 75))


def place_lesions(wm: np.ndarray, lesions: tuple[Lesion, ...], voxel_mm: float) -> list[np.ndarray]:
    """Lesion centres (voxels), largest lesion first: each where the most white matter lies
    within its radius, inside the volume by its radius plus the shell, and at least
    :data:`SPACING_MM` from the outlines placed before."""
    order = sorted(range(len(lesions)), key=lambda k: -lesions[k].diameter_mm)
    grid = np.indices(wm.shape).reshape(3, -1).T
    centres: list[np.ndarray | None] = [None] * len(lesions)
    for k in order:
        radius = lesions[k].diameter_mm / 2 / voxel_mm
        score = ndimage.uniform_filter(wm.astype(np.float32), size=int(2 * radius) | 1).ravel()
        margin = radius + SHELL_MM[1] / voxel_mm
        ok = np.all((grid >= margin) & (grid <= np.asarray(wm.shape) - 1 - margin), axis=1)
        for j, c in enumerate(centres):
            if c is not None:
                gap = (radius + lesions[j].diameter_mm / 2 / voxel_mm + SPACING_MM / voxel_mm)
                ok &= np.linalg.norm(grid - c, axis=1) >= gap
        if not ok.any():
            raise ValueError(f"no room for lesion {lesions[k].name!r} in a {wm.shape} volume")
        centres[k] = grid[np.flatnonzero(ok)[np.argmax(score[ok])]].astype(float)
    return centres


def membership(level_mm: np.ndarray) -> np.ndarray:
    """Soft inside-ness of a level function in mm (negative inside)."""
    return 0.5 * (1 - np.tanh(level_mm / EDGE_MM))


def lesion_level(shape: tuple[int, ...], centre: np.ndarray, lesion: Lesion, voxel_mm: float,
                 rng: np.random.Generator) -> np.ndarray:
    """The lesion's level function (mm, negative inside) on a volume of ``shape``: the
    distance from ``centre`` minus the radius in that direction, where the radius is modulated
    by a smooth random field read on the nominal sphere (a star-shaped blob)."""
    radius = lesion.diameter_mm / 2
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape), radius / 2 / voxel_mm)
    field_ /= field_.std()
    offset = (np.indices(shape).T - centre).T
    dist = np.linalg.norm(offset, axis=0)
    on_sphere = centre[:, None, None, None] + offset / np.maximum(dist, 1e-6) * radius / voxel_mm
    modulation = ndimage.map_coordinates(field_, on_sphere.reshape(3, -1), order=1, mode="nearest")
    return dist * voxel_mm - radius * (1 + IRREGULARITY * modulation.reshape(shape))


def build_lesion_case(vols: dict[str, np.ndarray], affine: np.ndarray, head: np.ndarray,
                      lesions: tuple[Lesion, ...] = LESIONS, seed: int = 0) -> LesionCase:
    """Insert ``lesions`` into the isotropic truth ``vols`` (T1w, T2w, FLAIR) and add the
    contrast-enhanced T1w.

    Parameters
    ----------
    vols : dict
        Contrast key -> truth volume, sharing ``affine``; must hold ``T1w``.
    affine : ndarray
        4x4 voxel-to-world affine of isotropic voxels.
    head : ndarray
        Head mask (bool) of the volumes.
    lesions : tuple of Lesion
        What to insert.
    seed : int
        Seed of the lesion shapes (the placement is deterministic).

    Returns
    -------
    LesionCase
        The truth with lesions, ``CE_T1W`` included, and the lesions' scoring regions and
        surrounding-tissue shells.
    """
    voxel_mm = float(np.linalg.norm(affine[:3, 0]))
    base = {**vols, CE_T1W: vols["T1w"]}
    wm = white_matter(base, head)
    wm_level = {c: float(np.median(v[wm])) for c, v in base.items()}
    centres = place_lesions(wm, lesions, voxel_mm)
    rng = np.random.default_rng([seed, 13])
    truth = {c: v.astype(np.float64) for c, v in base.items()}
    regions, rims = [], []
    for lesion, centre in zip(lesions, centres):
        level = lesion_level(head.shape, centre, lesion, voxel_mm, rng)
        inside = membership(level)
        rim = inside - membership(level + lesion.ring_mm)
        for c, factor in lesion.intensity.items():
            if c in truth:
                truth[c] = (1 - inside) * truth[c] + inside * factor * wm_level[c]
        for c, factor in lesion.ring.items():
            if c in truth:
                truth[c] = (1 - rim) * truth[c] + rim * factor * wm_level[c]
        regions.append(inside > 0.5)
        rims.append(rim > 0.5)
    clear = ndimage.distance_transform_edt(~np.logical_or.reduce(regions)) * voxel_mm > SHELL_MM[0]
    shells = []
    for region in regions:
        dist = ndimage.distance_transform_edt(~region) * voxel_mm
        shells.append(head & clear & (dist <= SHELL_MM[1]))
    return LesionCase({c: v.astype(np.float32) for c, v in truth.items()},
                      np.asarray(affine, float), head, tuple(lesions), centres, regions, rims,
                      shells)


def lesion_contrast(volume: np.ndarray, region: np.ndarray, shell: np.ndarray) -> float:
    """Mean inside the lesion minus mean in its surrounding-tissue shell."""
    return float(volume[region].mean() - volume[shell].mean())


def lesion_scores(volume: np.ndarray, case: LesionCase, contrast: str) -> list[dict]:
    """Per lesion: whether it is visible in ``contrast`` (and whether it is a control), the
    squared error summed over its
    region and the voxel count (pooled PSNR), its lesion-to-tissue contrast (rim minus shell
    where it has a rim in ``contrast``) in ``volume`` and in the truth, both as a percentage of
    the truth's intensity range in the head.

    Parameters
    ----------
    volume : ndarray
        An estimate of ``contrast`` on the truth's grid.
    case : LesionCase
        The truth and the lesions.
    contrast : str
        Contrast key of ``volume``.
    """
    truth = case.truth[contrast]
    peak = float(np.ptp(truth[case.head]))
    out = []
    for lesion, region, rim, shell in zip(case.lesions, case.regions, case.rims, case.shells):
        err = volume[region].astype(np.float64) - truth[region]
        part = rim if contrast in lesion.ring else region
        out.append({"lesion": lesion.name, "visible": lesion.visible_in(contrast),
                    "control": lesion.is_control,
                    "sse": float(np.sum(err ** 2)), "n": int(region.sum()),
                    "contrast_pct": 100 * lesion_contrast(volume, part, shell) / peak,
                    "truth_contrast_pct": 100 * lesion_contrast(truth, part, shell) / peak})
    return out


def pooled_psnr(scores: list[dict], peak: float) -> float | None:
    """PSNR (dB) over the union of the lesions in ``scores`` with the head's ``peak``
    range; None when there is none."""
    n = sum(s["n"] for s in scores)
    if not n:
        return None
    mse = sum(s["sse"] for s in scores) / n
    return float(10 * np.log10(peak ** 2 / max(mse, 1e-20)))
