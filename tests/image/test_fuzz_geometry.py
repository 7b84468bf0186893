"""Fuzzing NIfTI headers, affines and shapes: loading and geometry raise our documented
errors (``InputError``, a ``ValueError``) or succeed, never anything else."""

import nibabel as nib
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bids_mcsr.image.geometry import CoordinateFrame, check_overlap, make_output_grid
from bids_mcsr.image.io import load_stack
from bids_mcsr.inr.memory import Estimate, plan_memory
from bids_mcsr.inr.presets import model_spec

SPECIAL = st.sampled_from([0.0, -0.0, 1e-9, 1e12, np.nan, np.inf, -np.inf])
ENTRY = st.one_of(st.floats(-50, 50, allow_nan=False), st.floats(-50, 50, allow_nan=False),
                  SPECIAL)
SIZE = st.integers(2, 5)
SHAPE = st.one_of(st.tuples(SIZE, SIZE, SIZE), st.tuples(SIZE, SIZE, SIZE),
                  st.lists(st.integers(1, 5), min_size=1, max_size=5).map(tuple))
CODE = st.integers(0, 4)


@st.composite
def raw_affines(draw):
    """Any 12 entries, special values included."""
    sform = np.eye(4)
    sform[:3] = np.array(draw(st.lists(ENTRY, min_size=12, max_size=12))).reshape(3, 4)
    return sform


@st.composite
def plausible_affines(draw):
    """Rotation x zooms + shift, sometimes with one entry spoiled."""
    angles = draw(st.lists(st.floats(-np.pi, np.pi), min_size=3, max_size=3))
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [k for k in range(3) if k != axis]
        turn = np.eye(3)
        turn[[i, i, j, j], [i, j, i, j]] = c, -s, s, c
        rotation = rotation @ turn
    sform = np.eye(4)
    sform[:3, :3] = rotation * np.array(draw(st.lists(st.floats(1e-4, 20), min_size=3,
                                                      max_size=3)))
    sform[:3, 3] = draw(st.lists(st.floats(-1e4, 1e4), min_size=3, max_size=3))
    if draw(st.integers(0, 3)) == 0:
        sform[draw(st.integers(0, 2)), draw(st.integers(0, 3))] = draw(ENTRY)
    return sform


@st.composite
def images(draw):
    shape = draw(SHAPE)
    values = draw(st.sampled_from(["random", "random", "random", "constant", "nan"]))
    data = np.random.default_rng(0).random(shape).astype(np.float32)
    if values == "constant":
        data[...] = 3.0
    elif values == "nan" and data.size:
        data.flat[0] = np.nan
    sform = draw(st.one_of(plausible_affines(), plausible_affines(), raw_affines()))
    img = nib.Nifti1Image(data, None)
    hdr = img.header
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = sform[0], sform[1], sform[2]
    hdr["sform_code"], hdr["qform_code"] = draw(st.sampled_from([1, 1, 2, 0, 4])), draw(CODE)
    hdr["quatern_b"], hdr["quatern_c"], hdr["quatern_d"] = draw(st.lists(
        st.one_of(st.floats(-0.5, 0.5), ENTRY), min_size=3, max_size=3))
    hdr["qoffset_x"] = draw(ENTRY)
    hdr["pixdim"][1:4] = draw(st.lists(st.one_of(st.floats(0.2, 8), ENTRY), min_size=3,
                                       max_size=3))
    return img


def _documented(call, *args):
    try:
        return call(*args)
    except ValueError:  # InputError is a ValueError
        return None


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(img=images(), spacing=st.one_of(st.none(), st.floats(-1, 20), SPECIAL),
       offset=st.lists(ENTRY, min_size=3, max_size=3))
def test_loading_and_geometry_never_crash(tmp_path_factory, img, spacing, offset):
    path = tmp_path_factory.mktemp("fuzz") / "sub-01_T1w.nii.gz"
    nib.save(img, str(path))
    stack = _documented(load_stack, path, "T1w")
    if stack is None:
        return
    moved = stack.with_affine(stack.affine @ _translation(offset))
    _documented(make_output_grid, [stack, moved], spacing)
    _documented(check_overlap, [stack, moved])
    frame = _documented(CoordinateFrame.from_stacks, [stack, moved])
    if frame is not None:
        assert np.isfinite(frame.half_extent_mm) and frame.half_extent_mm > 0


def _translation(offset: list[float]) -> np.ndarray:
    shift = np.eye(4)
    shift[:3, 3] = offset
    return shift



@st.composite
def valid_images(draw):
    """Images that load: 3D, finite varied data, a plausible affine in both sform and qform."""
    shape = draw(st.tuples(SIZE, SIZE, SIZE))
    data = np.random.default_rng(draw(st.integers(0, 9))).random(shape).astype(np.float32)
    sform = np.eye(4)
    angles = draw(st.lists(st.floats(-np.pi, np.pi), min_size=3, max_size=3))
    rotation = nib.eulerangles.euler2mat(*angles)
    sform[:3, :3] = rotation * np.array(draw(st.lists(st.floats(0.05, 20), min_size=3,
                                                      max_size=3)))
    sform[:3, 3] = draw(st.lists(st.floats(-1e4, 1e4), min_size=3, max_size=3))
    img = nib.Nifti1Image(data, sform)
    img.set_sform(sform, code=1)
    img.set_qform(sform, code=draw(st.sampled_from([0, 1])))
    return img


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(img=valid_images(), other=valid_images(),
       spacing=st.one_of(st.none(), st.floats(-1, 20), SPECIAL),
       offset=st.lists(st.one_of(st.floats(-100, 100), ENTRY), min_size=3, max_size=3))
def test_every_loadable_image_reaches_the_geometry_code(tmp_path_factory, img, other, spacing,
                                                         offset):
    """Unlike the test above, every example gets past loading (asserted): the grid,
    overlap, frame and memory-plan code sees every pair of plausible stacks."""
    folder = tmp_path_factory.mktemp("fuzz")
    stacks = []
    for name, image in (("sub-01_acq-a_T1w.nii.gz", img), ("sub-01_acq-b_T2w.nii.gz", other)):
        nib.save(image, str(folder / name))
        stacks.append(load_stack(folder / name, name.split("_")[-1][:3]))
    stacks.append(stacks[0].with_affine(stacks[0].affine @ _translation(offset)))
    grid = _documented(make_output_grid, stacks, spacing)
    if grid is not None:
        assert grid.n_voxels > 0 and np.all(np.isfinite(grid.affine))
        need = Estimate(sum(s.data.size for s in stacks), grid.n_voxels, 2)
        assert plan_memory(need, model_spec("fast"), 5, mem_gb=4).peak_bytes > 0
    _documented(check_overlap, stacks)
    frame = _documented(CoordinateFrame.from_stacks, stacks)
    if frame is not None:
        assert np.isfinite(frame.half_extent_mm) and frame.half_extent_mm > 0
        assert np.all(np.abs(frame.normalise(stacks[0].affine[:3, 3][None])) <= 1.0 + 1e-6)
