"""ColTran's evaluation crop (big_vision `evaluators/proj/uvim/coltran_fid.py`, `_preprocess`).

An encoded image is decoded as TFDS decodes it (`tf.image.decode_image`, libjpeg's default
IDCT: PIL's decoder differs from it by a few levels in most pixels), cropped to the centre
square of its short side (`tf.image.resize_with_crop_or_pad`), resized with TF's area kernel
(replayed in numpy, bit for bit) and rounded half to even to uint8. eval/coltran.py holds
the rest of the FID-5k protocol.
"""

import numpy as np
import tensorflow as tf


def decode_and_crop(encoded: bytes, size: int) -> np.ndarray:
  """Encoded image bytes -> uint8 [size, size, 3], ColTran's preprocessing."""
  image = tf.image.decode_image(encoded, channels=3, expand_animations=False).numpy()
  return coltran_image(image, size)


def center_square(image):
  """The centre crop of `tf.image.resize_with_crop_or_pad` to the short side."""
  height, width = image.shape[:2]
  side = min(height, width)
  # TF offsets by the floor of half the excess: an odd extra pixel is dropped
  # at the bottom / right.
  top, left = (height - side) // 2, (width - side) // 2
  return image[top:top + side, left:left + side]


def _area_taps(in_size, out_size):
  """TF's area-kernel taps along one axis: input indices and weights [out, K].

  Output pixel o covers the input box [o * scale, (o + 1) * scale), scale =
  in / out; each input pixel it touches is weighted by its coverage. Computed
  in float32 with TF's branches (resize_area_op.cc), so the weights are TF's
  bit for bit. Unused taps (a box shorter than K) get weight 0.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  lo = np.arange(out_size, dtype=np.float32) * scale
  hi = np.arange(1, out_size + 1, dtype=np.float32) * scale
  first = np.floor(lo).astype(np.int64)
  stop = np.ceil(hi).astype(np.int64)
  index = first[:, None] + np.arange((stop - first).max())
  pixel, lo, hi = index.astype(np.float32), lo[:, None], hi[:, None]
  weight = np.where(pixel < lo,
                    np.where(pixel + 1 > hi, scale, pixel + 1 - lo),
                    np.where(pixel + 1 > hi, hi - pixel, np.float32(1)))
  weight = np.where(index < stop[:, None], weight, np.float32(0))
  return np.minimum(index, in_size - 1), weight.astype(np.float32), scale


def area_resize(image, size) -> np.ndarray:
  """`tf.image.resize(image, size, method="area")` of [..., H, W, C], float32.

  Each output pixel is the mean of the input over its box, input pixels
  weighted by their fractional coverage (also when upscaling; TF's
  `antialias` has no effect on area). This replays TF's float32 kernel, its
  weights and its order of summation (columns within a row, then rows), so
  the result is TF's bit for bit. `size` is an int or (height, width).
  """
  out_h, out_w = (size, size) if np.isscalar(size) else size
  image = np.asarray(image, np.float32)
  rows, row_weights, row_scale = _area_taps(image.shape[-3], out_h)
  cols, col_weights, col_scale = _area_taps(image.shape[-2], out_w)
  across = _weighted_sum(image, cols, col_weights, axis=-2)
  total = _weighted_sum(across, rows, row_weights, axis=-3)
  return total * (np.float32(1) / (row_scale * col_scale))


def _weighted_sum(x, index, weight, axis):
  """Sum over k of x[index[:, k]] * weight[:, k] along axis, k in order."""
  shape = (-1,) + (1,) * (-axis - 1)
  total = np.float32(0)
  for k in range(index.shape[1]):
    tap = np.take(x, index[:, k], axis=axis)
    total = total + tap * weight[:, k].reshape(shape)
  return total


def coltran_image(image, resolution) -> np.ndarray:
  """ColTran's `_preprocess` of a decoded uint8 [H, W, 3] image.

  Centre square, area resize to [resolution, resolution, 3], round half to
  even (as tf.round), uint8. Encoded bytes are refused: TFDS decodes with
  tf.image.decode_image (libjpeg's INTEGER_FAST IDCT) and PIL, which uses
  INTEGER_ACCURATE, differs from it by a few levels in most pixels; decode
  with TF upstream.
  """
  if isinstance(image, (bytes, bytearray)):
    raise TypeError("coltran_image takes a decoded uint8 image; decode it "
                    "with tf.image.decode_image as TFDS does")
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected an RGB image [H, W, 3], got {image.shape}")
  resized = area_resize(center_square(image), resolution)
  return np.clip(np.round(resized), 0, 255).astype(np.uint8)
