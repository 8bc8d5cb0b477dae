"""Reconstruction quality of an autoencoder: PSNR."""

import numpy as np


def psnr(images, reconstructions, max_value: float = 1.0):
  """Peak signal-to-noise ratio in dB, per image and averaged over images.

  Args:
    images: [B, ...] originals in [0, max_value] (default [0, 1]).
    reconstructions: same shape; clip to [0, max_value] first to score what a
      viewer would see.
    max_value: the peak pixel value.

  Returns:
    (per-image PSNR float64 [B], mean over the batch). A perfect reconstruction
    has PSNR inf.
  """
  images = np.asarray(images, np.float64)
  reconstructions = np.asarray(reconstructions, np.float64)
  if images.shape != reconstructions.shape or images.ndim < 2:
    raise ValueError(f"images and reconstructions must share a [B, ...] shape, "
                     f"got {images.shape} and {reconstructions.shape}")
  if max_value <= 0:
    raise ValueError(f"max_value must be > 0, got {max_value}")
  squared_error = (images - reconstructions)**2
  mse = squared_error.reshape(images.shape[0], -1).mean(axis=1)
  with np.errstate(divide="ignore"):
    per_image = 10 * np.log10(max_value**2 / mse)
  return per_image, float(per_image.mean())
