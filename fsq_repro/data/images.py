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


def resize_nearest(label: np.ndarray, size) -> np.ndarray:
  """[H, W, ...] -> [size, size, ...] (or [h, w, ...] for size (h, w)) by nearest neighbour at
  pixel centres (`tf.image.resize(method="nearest")`, jax.image.resize's "nearest"): for label
  maps, whose values must not blend."""
  height, width = (size, size) if np.ndim(size) == 0 else size
  rows = np.minimum(((np.arange(height) + 0.5) * label.shape[0] / height).astype(np.int64),
                    label.shape[0] - 1)
  cols = np.minimum(((np.arange(width) + 0.5) * label.shape[1] / width).astype(np.int64),
                    label.shape[1] - 1)
  return label[rows][:, cols]


# A crop box: (top, left, height, width, flip), drawn once per example and applied alike to
# the image and to its dense labels (UViM's depth maps).


def square_box(shape, rng: np.random.Generator) -> tuple:
  """Train: a random short-side square, flipped with probability 1/2."""
  height, width = shape[:2]
  side = min(height, width)
  top = int(rng.integers(0, height - side + 1))
  left = int(rng.integers(0, width - side + 1))
  return top, left, side, side, bool(rng.random() < 0.5)


def centre_box(shape) -> tuple:
  """Eval: the centred short-side square."""
  height, width = shape[:2]
  side = min(height, width)
  return (height - side) // 2, (width - side) // 2, side, side, False


def inception_box(shape, rng: np.random.Generator, *, area=(0.05, 1.0), ratio=(0.75, 1.33),
                  attempts: int = 100) -> tuple:
  """Train (UViM, big_vision's `inception_crop` + `flip_lr`): a uniformly random fraction
  `area` of the image at a uniformly random aspect ratio w / h in `ratio`, at a random place
  (the whole image when no draw fits in `attempts`, as TF's sample_distorted_bounding_box),
  flipped with probability 1/2."""
  height, width = shape[:2]
  box = (0, 0, height, width)
  for _ in range(attempts):
    target = rng.uniform(*area) * height * width
    aspect = rng.uniform(*ratio)
    h, w = int(round(np.sqrt(target / aspect))), int(round(np.sqrt(target * aspect)))
    if 0 < h <= height and 0 < w <= width:
      box = (int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
      break
  return (*box, bool(rng.random() < 0.5))


def apply_box(image: np.ndarray, box: tuple, size: int) -> np.ndarray:
  """uint8 image -> the box, resized to `size` x `size` (antialiased bicubic), maybe flipped,
  float32 in [0, 1]."""
  top, left, height, width, flip = box
  resized = resize(image[top:top + height, left:left + width], size)
  if flip:
    resized = resized[:, ::-1]
  return np.clip(resized / 255.0, 0.0, 1.0).astype(np.float32)


def apply_box_nearest(label: np.ndarray, box: tuple, size: int) -> np.ndarray:
  """A dense label map -> the box, nearest-resized to `size` x `size`, maybe flipped."""
  top, left, height, width, flip = box
  resized = resize_nearest(label[top:top + height, left:left + width], size)
  return resized[:, ::-1] if flip else resized


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """Eval: the centred short-side square, resized to `size`, in [0, 1]."""
  return apply_box(image, centre_box(image.shape), size)


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """Train: a random short-side square, resized to `size`, flipped with probability 1/2."""
  return apply_box(image, square_box(image.shape, rng), size)


def inception_crop(image: np.ndarray, size: int, rng: np.random.Generator, **kwargs):
  """Train (UViM): `inception_box`, resized to `size` (our bicubic; big_vision: bilinear)."""
  return apply_box(image, inception_box(image.shape, rng, **kwargs), size)
