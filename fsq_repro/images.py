"""Image arrays as the project stores and shows them: float [0, 1] -> uint8, and grids."""

import math

import numpy as np


def to_uint8(images) -> np.ndarray:
  """Float images in [0, 1] (clipped) -> uint8 0..255, rounded to nearest (as ADM saves them)."""
  return np.round(np.clip(np.asarray(images), 0.0, 1.0) * 255.0).astype(np.uint8)


def image_grid(images, columns: int = 8) -> np.ndarray:
  """(N, H, W, C) in [0, 1] -> one (rows*H, columns*W, C) uint8 grid, row by row."""
  images = np.clip(np.asarray(images, np.float32), 0, 1)
  n, h, w, c = images.shape
  rows = math.ceil(n / columns)
  grid = np.zeros((rows * h, columns * w, c), np.float32)
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    grid[r * h:(r + 1) * h, col * w:(col + 1) * w] = image
  return (grid * 255 + 0.5).astype(np.uint8)
