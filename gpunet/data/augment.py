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


def rotate(x: np.ndarray, degrees) -> np.ndarray:
    """Rotate each image of the batch x (N, C, H, W) counter-clockwise by degrees[i] about its centre, with
    bilinear interpolation; pixels from outside the image are 0 (the normalised data's mean)."""
    n, c, h, w = x.shape
    theta = np.deg2rad(np.asarray(degrees, dtype=np.float64)).reshape(n, 1, 1)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    v_dst, u_dst = cy - np.arange(h)[:, None], np.arange(w)[None, :] - cx   # up and right of the centre
    cos, sin = np.cos(theta), np.sin(theta)
    sy = cy - (-u_dst * sin + v_dst * cos)                                  # inverse rotation: where each
    sx = cx + (u_dst * cos + v_dst * sin)                                   # output pixel comes from
    y0, x0 = np.floor(sy).astype(np.int64), np.floor(sx).astype(np.int64)
    fy, fx = (sy - y0)[:, None], (sx - x0)[:, None]
    batch = np.arange(n)[:, None, None]

    def tap(yy, xx):  # (N, C, H, W) samples at integer coordinates, 0 outside
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        got = x[batch, :, np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]  # (N, H, W, C)
        return np.moveaxis(got, -1, 1) * inside[:, None]

    out = ((1 - fy) * ((1 - fx) * tap(y0, x0) + fx * tap(y0, x0 + 1))
           + fy * ((1 - fx) * tap(y0 + 1, x0) + fx * tap(y0 + 1, x0 + 1)))
    return out.astype(x.dtype, copy=False)


class RandomRotation:
    """Rotate each image by an angle drawn uniformly from [-degrees, degrees]: handwriting and photographs
    are rarely perfectly upright, and a few degrees of tilt does not change the class."""

    def __init__(self, degrees: float = 10.0):
        if not (np.isfinite(degrees) and 0 <= degrees <= 180):
            raise ValueError(f"RandomRotation: degrees must lie in [0, 180], got {degrees}")
        self.degrees = float(degrees)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if x.ndim != 4:
            raise ValueError(f"RandomRotation: expected a batch of shape (N, C, H, W), got {x.shape}")
        return rotate(x, rng.uniform(-self.degrees, self.degrees, size=x.shape[0]))

    def __repr__(self) -> str:
        return f"RandomRotation(degrees={self.degrees:g})"


class Compose:
    """Apply augmentations in order, each with the loader's generator."""

    def __init__(self, *steps):
        self.steps = steps

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for step in self.steps:
            x = step(x, rng)
        return x

    def __repr__(self) -> str:
        return f"Compose({', '.join(map(repr, self.steps))})"
