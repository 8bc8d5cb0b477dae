"""Per-image preprocessing in numpy: decode, square crop, antialiased bicubic resize, flip.

These run in the input pipeline's Grain threads or worker processes, which need neither
TensorFlow nor JAX. The resize computes what `tf.image.resize(method="bicubic",
antialias=True)` computes (TF's scale_and_translate with the Keys cubic kernel, a = -0.5,
stretched by the downscaling factor); tests check it against TF.
"""

import io

import numpy as np
import PIL.Image


def decode(encoded: bytes) -> np.ndarray:
  """JPEG/PNG bytes -> uint8 RGB [H, W, 3] (gray replicated, alpha dropped)."""
  with PIL.Image.open(io.BytesIO(encoded)) as image:
    return np.asarray(image.convert("RGB"))


def resize(square: np.ndarray, size: int) -> np.ndarray:
  """uint8/float [S, S, C] -> float32 [size, size, C], antialiased bicubic, not clipped.

  PIL's bicubic on float32 ("F") channels: the Keys kernel (a = -0.5) stretched by the
  downscaling factor, weights normalised over the pixels inside the image, in double
  precision, as TF's scale_and_translate. Plain C, one thread, no BLAS: Grain's threads and
  workers run side by side without oversubscribing the cores.
  """
  channels = [PIL.Image.fromarray(np.ascontiguousarray(square[..., c], np.float32), "F")
              .resize((size, size), PIL.Image.Resampling.BICUBIC)
              for c in range(square.shape[-1])]
  return np.stack([np.asarray(c) for c in channels], axis=-1)


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
