"""Per-image preprocessing in numpy: decode, square crop, antialiased bicubic resize, flip.

These run in the input pipeline's Grain threads or worker processes, which need neither
TensorFlow nor JAX. The resize computes what `tf.image.resize(method="bicubic",
antialias=True)` computes (TF's scale_and_translate with the Keys cubic kernel, a = -0.5,
stretched by the downscaling factor), as two matrix products; tests check it against TF.
"""

import functools
import io

import numpy as np
import PIL.Image


def decode(encoded: bytes) -> np.ndarray:
  """JPEG/PNG bytes -> uint8 RGB [H, W, 3] (gray replicated, alpha dropped)."""
  with PIL.Image.open(io.BytesIO(encoded)) as image:
    return np.asarray(image.convert("RGB"))


def _keys_cubic(x: np.ndarray) -> np.ndarray:
  x = np.abs(x)
  near = ((1.5 * x - 2.5) * x) * x + 1.0
  far = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
  return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=256)
def resize_weights(input_size: int, output_size: int) -> np.ndarray:
  """float32 [input_size, output_size]: column o holds output pixel o's input weights."""
  scale = output_size / input_size
  kernel_scale = max(1.0 / scale, 1.0)  # stretch the kernel only when downscaling
  centers = (np.arange(output_size) + 0.5) / scale - 0.5
  distance = centers[None, :] - np.arange(input_size)[:, None]
  weights = _keys_cubic(distance / kernel_scale).astype(np.float32)
  total = weights.sum(axis=0, keepdims=True)
  weights = np.where(np.abs(total) > 1000 * np.finfo(np.float32).eps,
                     weights / np.where(total != 0, total, 1), 0)
  return weights.astype(np.float32)


def resize(square: np.ndarray, size: int) -> np.ndarray:
  """uint8/float [S, S, C] -> float32 [size, size, C], antialiased bicubic, not clipped."""
  weights = resize_weights(square.shape[0], size)
  channels_first = np.moveaxis(square.astype(np.float32), -1, 0)  # [C, S, S]
  resized = weights.T @ channels_first @ weights  # rows, then columns
  return np.moveaxis(resized, 0, -1)


def crop_and_resize(image: np.ndarray, size: int, top: int, left: int, flip: bool) -> np.ndarray:
  """The short-side square at (top, left), resized to `size`, maybe flipped, in [0, 1]."""
  side = min(image.shape[:2])
  resized = resize(image[top:top + side, left:left + side], size)
  if flip:
    resized = resized[:, ::-1]
  return np.clip(resized / 255.0, 0.0, 1.0).astype(np.float32)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """Eval: the centred short-side square, resized to `size`, in [0, 1]."""
  height, width = image.shape[:2]
  side = min(height, width)
  return crop_and_resize(image, size, (height - side) // 2, (width - side) // 2, False)


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """Train: a random short-side square, resized to `size`, flipped with probability 1/2."""
  height, width = image.shape[:2]
  side = min(height, width)
  top = int(rng.integers(0, height - side + 1))
  left = int(rng.integers(0, width - side + 1))
  return crop_and_resize(image, size, top, left, bool(rng.random() < 0.5))
