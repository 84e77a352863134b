"""Batch augmentation on the host, vectorised and driven by the loader's seeded generator.

Augmenting on the host with NumPy makes the augmented batches identical on every device, so a run
on the GPU and one on the CPU see the same images.
"""
from __future__ import annotations

import numpy as np


class RandomCropFlip:
    """Zero-pad by `padding`, crop back to the original size at a random offset, and mirror left-right
    with probability 0.5 (when `flip`): the standard CIFAR augmentation, one gather for the whole batch."""

    def __init__(self, padding: int = 4, flip: bool = True):
        if int(padding) < 0:
            raise ValueError(f"RandomCropFlip: padding must be >= 0, got {padding}")
        self.padding, self.flip = int(padding), bool(flip)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if x.ndim != 4:
            raise ValueError(f"RandomCropFlip: expected a batch of shape (N, C, H, W), got {x.shape}")
        n, c, h, w = x.shape
        p = self.padding
        padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x
        oy = rng.integers(0, 2 * p + 1, size=n)
        ox = rng.integers(0, 2 * p + 1, size=n)
        cols = np.arange(w)
        if self.flip:
            flipped = rng.random(n) < 0.5
            cols = np.where(flipped[:, None], cols[::-1], cols)  # (n, w)
        rows = oy[:, None] + np.arange(h)  # (n, h)
        cols = ox[:, None] + cols          # (n, w)
        return padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None],
                      rows[:, None, :, None], cols[:, None, None, :]]

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"
