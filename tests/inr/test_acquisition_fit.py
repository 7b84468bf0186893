"""Per-stack acquisition parameters: bounds, the pose's world transform, and gradients."""

import numpy as np
import pytest
import torch

from bids_mcsr.acquisition.holdout import single_slice
from bids_mcsr.acquisition.slice_profile import SLAB_FWHM_OF_THICKNESS, SLAB_MAX_OF_SPACING, slab_fwhm
from bids_mcsr.image.geometry import CoordinateFrame
from bids_mcsr.image.io import Stack
from bids_mcsr.inr.acquisition_fit import StackAcquisition, profile_bounds, widest_fwhm
from bids_mcsr.inr.presets import DEFAULT_MODEL, model_spec
from bids_mcsr.inr.training import ACQUISITION_NETWORK_LR_SHARE, TrainConfig, _optimiser

PROFILE = model_spec(DEFAULT_MODEL).slice_profile  # the app's slab model
RECT = SLAB_FWHM_OF_THICKNESS[PROFILE]  # its FWHM, x the slice thickness


def stacks():
    ax = np.diag([1.0, 1.0, 4.0, 1.0])
    ax[:3, 3] = [-40, -50, -30]
    cor = np.array([[1.0, 0, 0, -40], [0, 0, 4.0, -50], [0, 1.0, 0, -30], [0, 0, 0, 1]])
    return [Stack(np.ones((80, 90, 16), np.float32), ax, "T1w", "ax.nii.gz", 3.0),
            Stack(np.ones((80, 70, 20), np.float32), cor, "T2w", "cor.nii.gz", None)]


def test_widths_start_at_the_header_within_physical_bounds():
    s = stacks()
    lo, hi = profile_bounds(s[0], PROFILE)
    assert lo == 0.5 and hi == pytest.approx(widest_fwhm(s[0], PROFILE))
    # the variance of a Gaussian whose FWHM is the spacing, whatever the profile
    assert widest_fwhm(s[0], "gaussian") == pytest.approx(SLAB_MAX_OF_SPACING * 4.0)
    assert widest_fwhm(s[0], "boxcar") == pytest.approx(SLAB_MAX_OF_SPACING * 4.0 / 0.68, rel=0.01)
    acq = StackAcquisition(s, CoordinateFrame.from_stacks(s), [True, True], PROFILE, True, True, 0)
    assert np.allclose(acq.fwhm_mm().detach().numpy(),
                       [3.0 * RECT, 4.0 * RECT], atol=1e-3)
    fixed = StackAcquisition(s, CoordinateFrame.from_stacks(s), [True, False], PROFILE, True, True, 0)
    assert fixed.fwhm_mm().detach().numpy()[1] == 0.0  # point-sampled
    fitted = acq.fitted()
    assert all(np.allclose(f.correction, np.eye(4)) and f.shift_mm == 0 for f in fitted)


def test_the_reported_world_correction_is_the_pose_applied_in_training():
    s = stacks()
    frame = CoordinateFrame.from_stacks(s)
    acq = StackAcquisition(s, frame, [True, True], PROFILE, False, True, reference=0)
    with torch.no_grad():
        acq.rotation[:] = torch.tensor([[0.1, 0.2, 0.3], [0.02, -0.03, 0.04]])
        acq.translation[:] = torch.tensor([[0.5, 0.5, 0.5], [1.0, 2.0, -1.5]])  # mm
    world = np.array([[10.0, -20.0, 5.0], [-30.0, 12.0, 40.0]])
    x = torch.from_numpy(frame.normalise(world)).reshape(2, 1, 3)
    moved = acq.move(x, torch.tensor([1, 1])).detach().numpy().reshape(2, 3)
    moved_mm = moved * frame.half_extent_mm + frame.centre
    fitted = acq.fitted()
    expected = world @ fitted[1].correction[:3, :3].T + fitted[1].correction[:3, 3]
    assert np.allclose(moved_mm, expected, atol=1e-3)
    # the reference stack stays where it is, whatever its parameters say
    assert np.allclose(fitted[0].correction, np.eye(4))
    assert np.isclose(fitted[1].rotation_deg, np.degrees(np.linalg.norm([0.02, -0.03, 0.04])), atol=1e-3)
    assert fitted[1].shift_mm > 1.0


def test_gradients_reach_width_and_pose_only_when_they_learn():
    from bids_mcsr.inr.encoding import HashGridEncoding
    from bids_mcsr.inr.sampling import build_samples, stack_masks_and_scalers

    s = stacks()
    rng = np.random.default_rng(0)
    s = [st.with_data(rng.random(st.data.shape).astype(np.float32)) for st in s]
    frame = CoordinateFrame.from_stacks(s)
    masks, scalers = stack_masks_and_scalers(s)
    samples = build_samples(s, ["T1w", "T2w"], frame, scalers, masks, PROFILE)
    acq = StackAcquisition(s, frame, samples.profiled, PROFILE, True, True, reference=0)
    enc = HashGridEncoding(2 * frame.half_extent_mm, n_levels=3, log2_table_size=12)
    with torch.no_grad():
        for t in enc.tables:
            t.normal_()
    idx = torch.arange(0, len(samples), 97)
    for learn in ("width", "pose", None):
        acq.zero_grad(set_to_none=True)
        points = samples.profile_points(idx, acq, learn=learn)
        if learn is None:
            assert not points.requires_grad
            continue
        enc(points.reshape(-1, 3)).sum().backward()
        width, pose = acq.log_width.grad, [acq.rotation.grad, acq.translation.grad]
        if learn == "width":
            assert torch.count_nonzero(width) > 0 and all(g is None for g in pose)
        else:
            assert width is None and all(torch.count_nonzero(g) > 0 for g in pose)
            assert torch.all(acq.rotation.grad[0] == 0)  # the reference does not move


def test_a_header_thicker_than_the_spacing_is_modelled_at_the_spacing():
    ax, cor = stacks()
    rect = RECT
    assert SLAB_FWHM_OF_THICKNESS["boxcar"] == 1.0  # the slab itself
    assert SLAB_FWHM_OF_THICKNESS["gaussian"] == pytest.approx(0.68, abs=0.005)  # a rectangle's variance
    assert slab_fwhm(ax, "gaussian") == pytest.approx(3.0 * SLAB_FWHM_OF_THICKNESS["gaussian"])
    assert slab_fwhm(ax, PROFILE) == pytest.approx(3.0 * rect)  # header below the spacing: a gap, kept
    assert slab_fwhm(cor, PROFILE) == pytest.approx(4.0 * rect)  # no header: the spacing
    wide = ax.with_affine(ax.affine)
    wide.slice_thickness = 8.0  # header x2
    assert slab_fwhm(wide, PROFILE) == pytest.approx(SLAB_MAX_OF_SPACING * 4.0 * rect)
    acq = StackAcquisition([wide, cor], CoordinateFrame.from_stacks([wide, cor]), [True, True],
                           PROFILE, False, False, 0)
    assert np.allclose(acq.fwhm_mm().numpy(), [4.0 * rect, 4.0 * rect], atol=1e-4)
    assert acq.fitted()[0].fwhm_mm == pytest.approx(4.0 * rect, abs=1e-4)


def test_back_projection_and_scoring_see_the_slab_the_fit_modelled():
    """The stacks as fitted carry the fitted FWHM itself, not a thickness that the forward
    model would turn into a slab 0.68 times narrower again (as it did before: a 4 mm slab
    modelled at 2.72 mm in training was back-projected at 1.85 mm); a learned width wider
    than the header's slab is capped there."""
    ax, cor = stacks()
    fixed = StackAcquisition([ax, cor], CoordinateFrame.from_stacks([ax, cor]), [True, True],
                             PROFILE, False, False, 0)
    learned = StackAcquisition([ax, cor], CoordinateFrame.from_stacks([ax, cor]), [True, True],
                               PROFILE, True, False, 0)
    with torch.no_grad():
        learned.log_width[:] = torch.log(torch.tensor([3.5, 1.5]))
    expected = {id(fixed): [3.0 * RECT, 4.0 * RECT],
                id(learned): [3.0 * RECT, 1.5]}  # 3.5 mm capped at the header's
    for acq in (fixed, learned):
        for stack, fitted, fwhm in zip((ax, cor), acq.fitted(), expected[id(acq)]):
            placed = fitted.apply(stack)
            assert slab_fwhm(placed, PROFILE) == pytest.approx(fwhm, abs=1e-5)
            assert slab_fwhm(single_slice(placed, 3), PROFILE) == pytest.approx(fwhm, abs=1e-5)
            assert placed.slice_thickness == stack.slice_thickness  # the header stays the header
    assert [f.fwhm_mm for f in learned.fitted()] == pytest.approx([3.5, 1.5], abs=1e-5)  # reported


def test_a_header_thicker_than_the_spacing_lets_back_projection_take_the_learned_width():
    """Overlapping slabs (SliceThickness 6 mm every 4 mm): the fit starts from the cap (the
    spacing's slab), below the truth, so a learned width is what back-projection gets, up to
    the width's own bound (``widest_fwhm``); a header within the spacing still caps it."""
    ax, cor = stacks()
    overlapping = Stack(ax.data, ax.affine, "T1w", "ax.nii.gz", 6.0)
    acq = StackAcquisition([overlapping, cor], CoordinateFrame.from_stacks([overlapping, cor]),
                           [True, True], PROFILE, True, False, 0)
    assert acq.fitted()[0].fwhm_mm == pytest.approx(4.0 * RECT, abs=1e-4)
    with torch.no_grad():
        acq.log_width[:] = torch.log(torch.tensor([5.0, 4.5]))
    placed = [f.apply(s) for f, s in zip(acq.fitted(), (overlapping, cor))]
    # past the spacing where the profile's bound allows it (the boxcar's: 5.9 mm)
    widest = widest_fwhm(overlapping, PROFILE)
    assert slab_fwhm(placed[0], PROFILE) == pytest.approx(min(5.0, widest), abs=1e-5)
    assert slab_fwhm(placed[1], PROFILE) == pytest.approx(4.0 * RECT, abs=1e-5)


def test_a_width_stepped_past_its_bound_is_put_back_and_can_leave_it():
    """A step past a bound lands on the bound, where the width still has a gradient (a clip
    inside the forward model gave none, and the width stayed at its bound for good)."""
    s = stacks()
    acq = StackAcquisition(s, CoordinateFrame.from_stacks(s), [True, True], PROFILE, True, False, 0)
    lo, hi = zip(*(profile_bounds(st, PROFILE) for st in s))
    with torch.no_grad():
        acq.log_width[:] = torch.log(torch.tensor([3.0 * hi[0], 0.1 * lo[1]]))
    acq.keep_widths_in_bounds()
    assert np.allclose(acq.fwhm_mm().detach().numpy(), [hi[0], lo[1]], rtol=1e-5)
    acq.fwhm_mm().sum().backward()
    assert torch.all(acq.log_width.grad > 0)
    opt = torch.optim.SGD([acq.log_width], lr=0.1)
    acq.log_width.grad = torch.tensor([1.0, -1.0])  # the loss falls inwards
    opt.step()
    acq.keep_widths_in_bounds()
    width = acq.fwhm_mm().detach().numpy()
    assert width[0] < hi[0] * 0.95 and width[1] > lo[1] * 1.05


def test_thin_slices_declared_right_cannot_learn_a_slab_wider_than_twice_the_header():
    """1 mm slices every 4 mm: the held-out slices pulled such a width to the spacing (4 mm) on
    the real subject's whole head; it is put back to twice the header's modelled slab (2 mm),
    while a header without gaps keeps the spacing's bound (``widest_fwhm``)."""
    ax, cor = stacks()
    thin = Stack(ax.data, ax.affine, "T1w", "ax.nii.gz", 1.0)
    acq = StackAcquisition([thin, cor], CoordinateFrame.from_stacks([thin, cor]), [True, True],
                           PROFILE, True, False, 0)
    assert profile_bounds(thin, PROFILE)[1] == pytest.approx(2 * RECT, abs=1e-6)
    assert profile_bounds(cor, PROFILE)[1] == pytest.approx(widest_fwhm(cor, PROFILE))
    with torch.no_grad():
        acq.log_width[:] = torch.log(torch.tensor([4.0, 4.0]))
    acq.keep_widths_in_bounds()
    assert np.allclose(acq.fwhm_mm().detach().numpy(), [2 * RECT, 4.0], rtol=1e-5)


def test_the_network_learns_at_a_share_of_its_rate_while_the_acquisition_learns():
    s = stacks()
    frame = CoordinateFrame.from_stacks(s)
    net = torch.nn.Linear(3, 2)
    config = TrainConfig()
    share = ACQUISITION_NETWORK_LR_SHARE
    assert config.lr == model_spec(DEFAULT_MODEL).lr and share < 1
    for widths, poses, network_lr in ((False, False, config.lr), (False, True, share * config.lr),
                                      (True, False, share * config.lr)):
        acq = StackAcquisition(s, frame, [True, True], PROFILE, widths, poses, reference=0)
        used = config.for_acquisition(acq.learns)
        opt = _optimiser(net, acq, used)
        assert opt.param_groups[0]["lr"] == pytest.approx(network_lr)
        pose_lrs = [config.pose_lr, config.shift_lr_mm] if poses else []
        assert [g["lr"] for g in opt.param_groups[1:]] == pose_lrs
        # the schedule's floor follows the network's rate (the previous release's fit exactly)
        assert used.scheduler(opt, 10).eta_min == pytest.approx(network_lr * config.lr_floor)
