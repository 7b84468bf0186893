"""Training samples of a 3D scan beside thick stacks: batches split between them, one network
evaluation per point-sampled voxel, the same loss as evaluating it through a zero-width slab."""

import numpy as np
import torch

from bids_mcsr.image.geometry import CoordinateFrame
from bids_mcsr.image.io import Stack
from bids_mcsr.inr.acquisition_fit import StackAcquisition
from bids_mcsr.inr.losses import squared_errors
from bids_mcsr.inr.sampling import build_samples, stack_masks_and_scalers


def mixed_stacks() -> list[Stack]:
    """A 1 mm 3D T1w and a 4 mm axial T2w over the same 40 x 48 x 40 mm box."""
    rng = np.random.default_rng(0)
    iso = np.eye(4)
    iso[:3, 3] = -20
    thick = np.diag([1.0, 1.0, 4.0, 1.0])
    thick[:3, 3] = [-20, -20, -18.5]
    return [Stack(rng.random((40, 48, 40)).astype(np.float32) + 1, iso, "T1w", "T1w_3d.nii.gz", 1.0),
            Stack(rng.random((40, 48, 10)).astype(np.float32) + 1, thick, "T2w", "T2w_ax.nii.gz", 4.0)]


def samples_of(stacks):
    frame = CoordinateFrame.from_stacks(stacks)
    masks, scalers = stack_masks_and_scalers(stacks)
    samples = build_samples(stacks, ["T1w", "T2w"], frame, scalers, masks, "gaussian")
    return samples, StackAcquisition(stacks, frame, samples.profiled, "gaussian", False, False, reference=0)


def test_every_batch_splits_the_same_way_between_slab_and_point_samples():
    samples, _ = samples_of(mixed_stacks())
    assert samples.profiled == [False, True] and samples.n_profile > 1
    batch = 1000
    layout = samples.batch_layout(0.2, batch)
    n_point = samples._n_drawn(samples.stack.numpy() == 0, 0.2)
    n_slab = samples._n_drawn(samples.stack.numpy() == 1, 0.2)
    assert sum(layout) == batch and abs(layout[1] / batch - n_point / (n_point + n_slab)) < 1e-3
    order = samples.epoch_indices(np.random.default_rng(0), 0.2, batch)
    whole = samples.whole_batches(0.2, batch)
    assert whole >= samples.n_epoch(0.2) // batch - 1
    assert sorted(order) == sorted(set(order)) and order.size == samples.n_epoch(0.2)
    for k in range(whole):
        stacks = samples.stack[torch.from_numpy(order[k * batch:(k + 1) * batch])]
        assert int((stacks == 1).sum()) == layout[0] and int((stacks == 0).sum()) == layout[1]
    idx = torch.from_numpy(order[:batch])
    assert samples.evaluations(idx) == layout[0] * samples.n_profile + layout[1]
    assert samples.n_evaluations() == 40 * 48 * 40 + 40 * 48 * 10 * samples.n_profile
    assert samples.epoch_evaluations(0.2) == samples.evaluations(torch.from_numpy(order))


def test_a_point_sampled_voxel_is_evaluated_once_with_the_same_error():
    samples, acquisition = samples_of(mixed_stacks())
    calls = []

    def model(x):  # any smooth function of position, one column per contrast
        calls.append(x.shape[0])
        return torch.stack([x.sum(1), (x ** 2).sum(1)], dim=1)

    idx = torch.arange(0, len(samples), 7)
    torch.manual_seed(0)
    sq, c = squared_errors(model, samples, idx, acquisition, 2)
    point = samples.point_sampled(idx)
    assert calls == [int((~point).sum()) * samples.n_profile + int(point.sum())]
    # the same voxels through the zero-width slab at every profile point
    torch.manual_seed(0)
    pts = samples.profile_points(idx, acquisition)
    out = model(pts.reshape(-1, 3)).reshape(idx.shape[0], samples.n_profile, 2).mean(1)
    pred = out.gather(1, samples.contrast[idx].view(-1, 1)).squeeze(1)
    expected = (pred - samples.values[idx]) ** 2
    reorder = torch.cat([torch.nonzero(~point).squeeze(1), torch.nonzero(point).squeeze(1)])
    assert torch.equal(c, samples.contrast[idx][reorder])
    assert torch.allclose(sq, expected[reorder], rtol=1e-5, atol=1e-7)


def test_thick_stacks_alone_keep_one_shuffled_order():
    stacks = mixed_stacks()
    samples, _ = samples_of([stacks[1], stacks[1]])
    assert samples.batch_layout(0.2, 500) == (500,)
    a = samples.epoch_indices(np.random.default_rng(3), 0.2)
    b = samples.epoch_indices(np.random.default_rng(3), 0.2, 500)
    assert np.array_equal(a, b)
