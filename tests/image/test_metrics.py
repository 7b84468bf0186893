"""Resampling stacks onto the output grid: the report's three planes and the whole grid agree."""

import numpy as np
import pytest

from bids_mcsr.image.geometry import Grid
from bids_mcsr.image.metrics import resample_planes, resample_to_grid
from tests.image.test_geometry import oblique_stack


@pytest.mark.parametrize("order", [0, 1, 3])
def test_the_three_planes_are_the_whole_grid_resampling_cut_at_the_point(order):
    stack = oblique_stack()
    grid = Grid((18, 22, 16), np.array([[1.1, 0, 0, -6], [0, 0.9, 0, -8], [0, 0, 1.2, 0], [0, 0, 0, 1]]))
    point = (7, 12, 5)
    whole = resample_to_grid(stack, grid, order)
    planes = resample_planes(stack, grid, point, order)
    for axis, plane in enumerate(planes):
        expected = np.take(whole, point[axis], axis=axis)
        assert plane.shape == expected.shape
        assert np.allclose(plane, expected, atol=1e-5)
    assert np.ptp(planes[2]) > 0.1  # the planes cross the stack, not only its edge
