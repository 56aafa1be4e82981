"""Temporal windows against hand-worked values of BasicSR's generate_frame_indices."""

import numpy as np
import pytest

from edvr_jax.temporal import frame_indices, window_table


@pytest.mark.parametrize("padding,start,end", [
    ("reflection_circle", [4, 3, 0, 1, 2], [97, 98, 99, 96, 95]),
    ("replicate", [0, 0, 0, 1, 2], [97, 98, 99, 99, 99]),
    ("reflection", [2, 1, 0, 1, 2], [97, 98, 99, 98, 97]),
    ("circle", [3, 4, 0, 1, 2], [97, 98, 99, 95, 96]),
])
def test_boundary_windows(padding, start, end):
    assert frame_indices(0, 100, 5, padding) == start
    assert frame_indices(99, 100, 5, padding) == end
    assert frame_indices(50, 100, 5, padding) == [48, 49, 50, 51, 52]


def test_seven_frames_second_frame():
    # crt 1, 7 frames: i = -2, -1 -> reflection_circle 1 + 3 + 2 = 6, 5
    assert frame_indices(1, 30, 7, "reflection_circle") == [6, 5, 0, 1, 2, 3, 4]
    assert frame_indices(1, 30, 7, "replicate") == [0, 0, 0, 1, 2, 3, 4]


def test_window_table():
    table = window_table(6, 3, "replicate")
    np.testing.assert_array_equal(table, [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 5]])


def test_errors():
    with pytest.raises(ValueError, match="odd"):
        frame_indices(0, 10, 4, "replicate")
    with pytest.raises(ValueError, match="unknown padding 'zeros'"):
        frame_indices(0, 10, 5, "zeros")
    with pytest.raises(ValueError, match="outside a clip of 10"):
        frame_indices(10, 10, 5, "replicate")
    with pytest.raises(ValueError, match="too short for a 5-frame window"):
        frame_indices(0, 3, 5, "reflection_circle")
