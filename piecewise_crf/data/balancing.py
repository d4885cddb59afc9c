"""Class balancing for the training loss: class frequencies from the labels, and weights from them."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class LabelledDataset(Protocol):
    num_classes: int
    ignore_index: int

    def __len__(self) -> int: ...
    def load_label(self, index: int) -> tuple[np.ndarray, str]: ...


def class_frequencies(dataset: LabelledDataset) -> np.ndarray:
    """Median-frequency-balancing frequencies (K,): pixels of class c over the pixels of the
    images in which c appears (Eigen and Fergus, 2015). Labels are read untransformed, void
    excluded; a class absent from every image gets frequency 0."""
    k = dataset.num_classes
    pixels = np.zeros(k, dtype=np.int64)
    present_in = np.zeros(k, dtype=np.int64)
    for index in range(len(dataset)):
        label, _ = dataset.load_label(index)
        counts = np.bincount(label[label != dataset.ignore_index].ravel(), minlength=k)[:k]
        pixels += counts
        present_in += (counts > 0) * int(counts.sum())
    return pixels / np.maximum(present_in, 1)


def median_frequency_weights(frequencies: np.ndarray, power: float = 1.0) -> np.ndarray:
    """Weight w_c = (median(f) / f_c) ** power over the classes present; absent classes get 0.

    power 1 is SegNet's median frequency balancing, 0 gives every present class weight 1, and
    values between soften it."""
    frequencies = np.asarray(frequencies, dtype=np.float64)
    if frequencies.ndim != 1 or (frequencies < 0).any():
        raise ValueError(f"frequencies must be a non-negative vector, got {frequencies!r}")
    present = frequencies > 0
    if not present.any():
        raise ValueError("no class occurs in the labels; cannot balance classes")
    weights = np.zeros_like(frequencies)
    weights[present] = (np.median(frequencies[present]) / frequencies[present]) ** power
    return weights
