"""Per-stack acquisition parameters fitted jointly with the network.

Each thick-slice stack has an unknown through-plane slice profile and a small residual
misalignment left by registration. Both are parameters of the forward model:

* the profile's full width at half maximum (FWHM, mm), initialised from the header
  (:func:`~bids_mcsr.acquisition.slice_profile.slab_fwhm`), learned in log scale and put back
  into its physical range (:func:`profile_bounds`) after every step
  (:meth:`StackAcquisition.keep_widths_in_bounds`), so it can neither collapse nor run away
  (on the robustness benchmark a width allowed above the spacing ran to its bound on some
  stacks and cost up to 8 dB) and can leave a bound again;
* a rigid correction (rotation vector, radians, and translation, mm) applied to every sample
  point of the stack about the stack's centre; the reference stack stays fixed, which removes
  the global pose ambiguity. The translation is kept in millimetres, not in the network's
  normalised units, so that a learning rate moves a stack by the same distance whatever the
  size of the head.

The shared trunk and the stacks' complementary orientations are what make these
identifiable: a wrong width or pose leaves a residual that no network can explain at once
in every stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from bids_mcsr.acquisition.slice_profile import (
    header_too_thick,
    slab_fwhm,
    slab_fwhm_of_thickness,
    widest_slab_mm,
)
from bids_mcsr.image.geometry import CoordinateFrame, stack_corners
from bids_mcsr.image.io import Stack

FWHM_MIN_OF_INPLANE = 0.5
# the widest FWHM a stack's slab learns, x the header's modelled slab (profile_bounds)
LEARNED_MAX_OF_HEADER = 2.0


@dataclass(frozen=True)
class FittedAcquisition:
    """What the fit learned about one stack (numpy; reported and used after training).

    Attributes
    ----------
    fwhm_mm : float or None
        Slice-profile FWHM; None for point-sampled (isotropic or profile-free) stacks.
    widest_mm : float or None
        The widest FWHM back-projection and scoring take from it (:func:`widest_learned_fwhm`).
    correction : numpy.ndarray
        4x4 world (mm) rigid transform that moves the stack's voxel centres to where the fit
        places them: the corrected affine is ``correction @ stack.affine``.
    shift_mm : float
        How far the correction moves the stack's centre (mm).
    """

    fwhm_mm: float | None
    widest_mm: float | None
    correction: np.ndarray
    shift_mm: float

    def apply(self, stack: Stack) -> Stack:
        """``stack`` as back-projection and scoring see it: the corrected affine, and the slab
        FWHM the fit modelled, but never wider than the header's (:func:`widest_learned_fwhm`)."""
        moved = stack.with_affine(self.correction @ stack.affine)
        if self.fwhm_mm is not None:
            moved.slab_fwhm_mm = min(self.fwhm_mm, self.widest_mm)
        return moved

    @property
    def rotation_deg(self) -> float:
        cos = (np.trace(self.correction[:3, :3]) - 1) / 2
        return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def profile_bounds(stack: Stack, profile: str) -> tuple[float, float]:
    """Physical range (mm) of a stack's slice-profile FWHM under ``profile``.

    From :data:`FWHM_MIN_OF_INPLANE` times the finest in-plane voxel up to the slice spacing
    (:func:`~bids_mcsr.acquisition.slice_profile.widest_slab_mm`) or :data:`LEARNED_MAX_OF_HEADER`
    times the header's modelled slab (:func:`~bids_mcsr.acquisition.slice_profile.slab_fwhm`),
    whichever is narrower: the second binds only where a header declares slices much thinner
    than their spacing. There the held-out slices, a slice spacing from the nearest trained
    slice of their stack, pick a wide slab that smooths the network's guess between slices
    rather than the acquisition's: 1 mm thin slices every 4 mm declared right learned 4.0 mm
    (T1w) on the real subject's whole head, and a network trained with that slab no longer
    reproduced its own slices (0.68 mm modelled, 1 mm truth; docs/evaluation.md).

    >>> from bids_mcsr.image.io import Stack
    >>> affine = np.diag([1, 1, 4, 1])
    >>> def widest(t, profile):
    ...     return round(float(profile_bounds(Stack(np.zeros((4, 4, 4)), affine, "T1w", slice_thickness=t),
    ...                                       profile)[1]), 2)
    >>> [[widest(t, profile) for t in (1, 2, 4)] for profile in ("boxcar", "gaussian")]
    [[2.0, 4.0, 5.88], [1.36, 2.72, 4.0]]
    """
    sizes = stack.voxel_sizes
    inplane = float(np.delete(sizes, stack.through_plane_axis).min())
    return FWHM_MIN_OF_INPLANE * inplane, min(widest_fwhm(stack, profile),
                                              LEARNED_MAX_OF_HEADER * slab_fwhm(stack, profile))


def widest_fwhm(stack: Stack, profile: str) -> float:
    """The widest FWHM (mm) a stack's slab learns under ``profile``: the one with the variance
    of a Gaussian whose FWHM is the widest slab
    (:func:`~bids_mcsr.acquisition.slice_profile.widest_slab_mm`, the slice spacing), the bound
    of the Gaussian model that was the default until the boxcar: the spacing for the Gaussian,
    1.47 x the spacing for the boxcar. A boxcar held at the spacing could not reach
    overlapping slabs (6 mm slabs every 4 mm: -1.2 / -1.7 dB against the Gaussian on the
    template crop; docs/evaluation.md)."""
    return widest_slab_mm(stack) * slab_fwhm_of_thickness(profile) / slab_fwhm_of_thickness("gaussian")


def initial_fwhm(stack: Stack, profile: str) -> float:
    """The slab FWHM (mm) a stack's fit starts from under ``profile``: the header's
    (:func:`~bids_mcsr.acquisition.slice_profile.slab_fwhm`) within :func:`profile_bounds`."""
    return float(np.clip(slab_fwhm(stack, profile), *profile_bounds(stack, profile)))


def widest_learned_fwhm(stack: Stack, profile: str) -> float:
    """The widest learned slab FWHM (mm) back-projection and scoring take from a fit.

    The one the fit started from, the header's (:func:`initial_fwhm`): a learned width is the
    held-out slices' preference and runs wide (to the slice spacing on thin slices with gaps),
    and a slab modelled too wide makes back-projection sharpen what was never blurred. Where
    the header declares a slab thicker than the slice spacing allows
    (:func:`~bids_mcsr.acquisition.slice_profile.header_too_thick`: overlapping slabs), the
    start is the cap, not the header, and the learned width is taken up to its own bound
    (the spacing): on the whole-head overlap row (6 mm rectangular slabs every 4 mm, a
    variance-equivalent FWHM of 4.1 mm) the widths learned 4.0 mm and the cap at 2.72 mm left
    the output below the network with 3 plain rounds of back-projection (docs/evaluation.md).
    """
    return profile_bounds(stack, profile)[1] if header_too_thick(stack) else initial_fwhm(stack, profile)


def _skew(v: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(v[:, 0])
    return torch.stack([torch.stack([zero, -v[:, 2], v[:, 1]], -1),
                        torch.stack([v[:, 2], zero, -v[:, 0]], -1),
                        torch.stack([-v[:, 1], v[:, 0], zero], -1)], 1)


class StackAcquisition(nn.Module):
    """Learnable slice-profile widths and rigid poses of a subject's stacks.

    Parameters
    ----------
    stacks
        The stacks, in training order.
    frame
        The network's normalised frame (one scale for all axes, so rotations are the same
        in world and normalised coordinates).
    profiled
        Per stack, whether it has a slab (thick-slice stack under a slice profile).
    profile
        The slice profile (``gaussian`` or ``boxcar``) the widths are FWHMs of.
    learn_profile, refine_pose
        Which parameters are free; fixed ones keep their initial value.
    reference
        Index of the stack whose pose is fixed.
    """

    def __init__(self, stacks: Sequence[Stack], frame: CoordinateFrame, profiled: Sequence[bool],
                 profile: str, learn_profile: bool, refine_pose: bool, reference: int) -> None:
        super().__init__()
        bounds = np.array([profile_bounds(s, profile) for s in stacks], np.float32)
        init = np.array([initial_fwhm(s, profile) for s in stacks], np.float32)
        self.widest = [widest_learned_fwhm(s, profile) for s in stacks]
        self.register_buffer("lo", torch.from_numpy(bounds[:, 0]))
        self.register_buffer("hi", torch.from_numpy(bounds[:, 1]))
        self.register_buffer("profiled", torch.tensor(list(profiled), dtype=torch.float32))
        self.log_width = nn.Parameter(torch.from_numpy(np.log(init)), requires_grad=learn_profile)
        n = len(stacks)
        self.rotation = nn.Parameter(torch.zeros(n, 3), requires_grad=refine_pose)
        self.translation = nn.Parameter(torch.zeros(n, 3), requires_grad=refine_pose)
        movable = torch.ones(n, 1)
        movable[reference] = 0.0
        self.register_buffer("movable", movable)
        centres = np.stack([frame.normalise(stack_corners(s).mean(axis=0)) for s in stacks])
        self.register_buffer("centre", torch.from_numpy(centres.astype(np.float32)))
        self.half_extent_mm = float(frame.half_extent_mm)
        self.frame_centre = np.asarray(frame.centre, float)

    @property
    def learns(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def fwhm_mm(self) -> torch.Tensor:
        """Per-stack FWHM (mm); 0 for point-sampled stacks."""
        return torch.exp(self.log_width) * self.profiled

    @torch.no_grad()
    def keep_widths_in_bounds(self) -> None:
        """Put the widths back into their physical range after a step: a projection, not a
        clip inside :meth:`fwhm_mm`, whose zero gradient beyond a bound held a width there for
        the rest of the fit (seen: a 1 mm slab declared 4 mm went past the 4 mm bound in the
        first width steps and stayed)."""
        self.log_width.copy_(torch.minimum(torch.maximum(self.log_width, self.lo.log()), self.hi.log()))

    def rotations(self) -> torch.Tensor:
        return torch.linalg.matrix_exp(_skew(self.rotation * self.movable))

    def move(self, points: torch.Tensor, stack: torch.Tensor, detach: bool = False) -> torch.Tensor:
        """Apply each point's stack pose: ``points`` ``(B, K, 3)``, ``stack`` ``(B,)``
        (``detach``: without gradients to the pose)."""
        if not self.rotation.requires_grad:
            return points
        rot = self.rotations()[stack]  # (B, 3, 3)
        c = self.centre[stack].unsqueeze(1)
        shift = (self.translation * self.movable)[stack].unsqueeze(1) / self.half_extent_mm
        if detach:
            rot, shift = rot.detach(), shift.detach()
        return torch.einsum("bij,bkj->bki", rot, points - c) + c + shift

    def fitted(self) -> list[FittedAcquisition]:
        """The learned values of every stack, as world-space numbers."""
        with torch.no_grad():
            fwhm = self.fwhm_mm().cpu().numpy()
            rots = self.rotations().cpu().numpy().astype(float)
            shifts = (self.translation * self.movable).cpu().numpy().astype(float)
            centres = self.centre.cpu().numpy().astype(float)
        out = []
        for k in range(len(fwhm)):
            # normalised x -> R (x - c) + c + t / h  is, in mm,  y -> R (y - C) + C + t
            c_mm = centres[k] * self.half_extent_mm + self.frame_centre
            t_mm = shifts[k]
            world = np.eye(4)
            world[:3, :3] = rots[k]
            world[:3, 3] = c_mm - rots[k] @ c_mm + t_mm
            profiled = self.profiled[k] > 0
            out.append(FittedAcquisition(float(fwhm[k]) if profiled else None,
                                         self.widest[k] if profiled else None,
                                         world, float(np.linalg.norm(t_mm))))
        return out
