"""Median-frequency class balancing, against hand-computed values."""

import numpy as np
import pytest

from piecewise_crf.data.balancing import class_frequencies, median_frequency_weights


class Labels:
    """Three 2x3 label maps with known class counts (255 = void)."""

    num_classes = 3
    ignore_index = 255
    maps = [
        np.array([[0, 0, 0], [0, 1, 255]]),  # 0: 4 px, 1: 1 px; 5 labelled
        np.array([[0, 0, 1], [1, 1, 1]]),  # 0: 2, 1: 4; 6 labelled
        np.array([[255, 255, 255], [255, 255, 255]]),  # nothing labelled
    ]

    def __len__(self) -> int:
        return len(self.maps)

    def load_label(self, index: int) -> tuple[np.ndarray, str]:
        return self.maps[index].astype(np.uint8), f"map {index}"


def test_frequencies_count_only_images_holding_the_class():
    # class 0: 6 px over the 11 px of images 0 and 1; class 1: 5 / 11; class 2 never occurs.
    np.testing.assert_allclose(class_frequencies(Labels()), [6 / 11, 5 / 11, 0.0])


def test_median_frequency_weights_by_hand():
    f = np.array([0.4, 0.1, 0.2, 0.0])
    np.testing.assert_allclose(median_frequency_weights(f), [0.5, 2.0, 1.0, 0.0])
    np.testing.assert_allclose(median_frequency_weights(f, 0.5), [0.5**0.5, 2**0.5, 1.0, 0.0])
    np.testing.assert_allclose(median_frequency_weights(f, 0.0), [1.0, 1.0, 1.0, 0.0])


def test_bad_frequencies_are_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        median_frequency_weights(np.array([0.5, -0.1]))
    with pytest.raises(ValueError, match="no class occurs"):
        median_frequency_weights(np.zeros(3))
