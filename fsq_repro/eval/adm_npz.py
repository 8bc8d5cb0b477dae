"""Reads and writes the ADM suite's `.npz` batches.

Reference batch: arr_0 (uint8 NHWC RGB images) and optionally the float64
Inception statistics mu, sigma (pool_3) and mu_s, sigma_s (spatial, sFID);
ADM uses the stored statistics when "mu" is present. Sample batch:
arr_0 (uint8 NHWC) and arr_1 (integer class labels).
"""

import os

import numpy as np

from fsq_repro import files

STATS_KEYS = ("mu", "sigma", "mu_s", "sigma_s")


def save_reference_batch(path: str, images, *, stats=None,
                         overwrite: bool = False) -> None:
  """Writes a reference batch: images and, optionally, all four statistics.

  Args:
    path: destination, must end in ".npz".
    images: uint8 [N, H, W, 3].
    stats: None or a dict with exactly mu, sigma, mu_s, sigma_s.
    overwrite: replace an existing file at `path`.
  """
  arrays = {"arr_0": _checked_images(images, "images")}
  if stats is not None:
    arrays.update(_checked_stats(stats))
  _write_npz(path, arrays, overwrite)


def save_samples(path: str, images, labels, *, overwrite: bool = False) -> None:
  """Writes samples as ADM reads them: arr_0 uint8 [N, H, W, 3], arr_1 [N]."""
  images = _checked_images(images, "images")
  labels = np.asarray(labels)
  if labels.shape != (images.shape[0],) or labels.dtype.kind not in "iu":
    raise ValueError(f"labels must be integers of shape ({images.shape[0]},), "
                     f"got {labels.dtype} {labels.shape}")
  _write_npz(path, {"arr_0": images, "arr_1": labels.astype(np.int64)},
             overwrite)


def load_images(path: str) -> np.ndarray:
  """Returns arr_0 of an ADM batch, checked to be uint8 [N, H, W, 3]."""
  with np.load(path) as data:
    if "arr_0" not in data:
      raise ValueError(f"{path} has no arr_0 (keys: {sorted(data.keys())})")
    return _checked_images(data["arr_0"], f"{path}:arr_0")


def load_reference_stats(path: str) -> dict | None:
  """Returns the stored float64 mu, sigma, mu_s, sigma_s, or None if absent."""
  with np.load(path) as data:
    present = [k for k in STATS_KEYS if k in data]
    if not present:
      return None
    return _checked_stats({k: data[k] for k in present}, source=path)


def _checked_images(images, name: str) -> np.ndarray:
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
    raise ValueError(f"{name} must be uint8 [N, H, W, 3] in [0, 255], got "
                     f"{images.dtype} {images.shape}; convert with "
                     "np.clip(np.round(x * 255), 0, 255).astype(np.uint8)")
  return images


def _checked_stats(stats, source: str = "stats") -> dict:
  if set(stats) != set(STATS_KEYS):
    raise ValueError(f"{source} must hold exactly {STATS_KEYS} (ADM reads "
                     "mu_s/sigma_s whenever mu is present), got "
                     f"{sorted(stats)}")
  checked = {k: np.asarray(stats[k], np.float64) for k in STATS_KEYS}
  for mu_key, sigma_key in (("mu", "sigma"), ("mu_s", "sigma_s")):
    mu, sigma = checked[mu_key], checked[sigma_key]
    if mu.ndim != 1 or sigma.shape != (mu.shape[0],) * 2:
      raise ValueError(f"{source}: {mu_key} must be [d] and {sigma_key} "
                       f"[d, d], got {mu.shape} and {sigma.shape}")
  return checked


def _write_npz(path: str, arrays: dict, overwrite: bool) -> None:
  if not path.endswith(".npz"):
    raise ValueError(f"path must end in .npz, got {path!r}")
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
  with files.atomic_write(path, "wb") as f:  # a file object: np.savez appends no ".npz"
    np.savez(f, **arrays)
