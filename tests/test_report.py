"""The README figure grid: panel placement and sizes, by hand."""

import numpy as np
import pytest

from piecewise_crf.visualize import example_grid


def test_example_grid_places_scaled_panels_under_titles():
    red = np.zeros((20, 30, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((20, 30, 3), np.uint8)
    blue[..., 2] = 255
    grid = np.asarray(example_grid([[red, blue], [blue, red]], ["a", "b"], scale=0.5))
    # two 15x10 panels per row with a 4 px gap; an 18 px title band; rows 4 px apart
    assert grid.shape == (18 + 2 * (10 + 4), 2 * 15 + 4, 3)
    assert tuple(grid[18, 0]) == (255, 0, 0) and tuple(grid[18, 19]) == (0, 0, 255)
    assert tuple(grid[18 + 14, 0]) == (0, 0, 255) and tuple(grid[18 + 14, 19]) == (255, 0, 0)
    assert tuple(grid[18, 16]) == (255, 255, 255)  # the gap


def test_example_grid_needs_one_panel_per_title():
    with pytest.raises(ValueError, match="one panel per title"):
        example_grid([[np.zeros((4, 4, 3), np.uint8)]], ["a", "b"])
