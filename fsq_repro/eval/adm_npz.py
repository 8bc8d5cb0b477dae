"""Reads and writes the ADM suite's `.npz` batches.

Reference batch: arr_0 (uint8 NHWC RGB images) and optionally the float64
Inception statistics mu, sigma (pool_3) and mu_s, sigma_s (spatial, sFID);
ADM uses the stored statistics when "mu" is present. Sample batch:
arr_0 (uint8 NHWC) and arr_1 (integer class labels).

Evaluation writes and reads them as streams (`BatchWriter`, `iter_images`): arr_0 goes into
the zip a block of rows at a time, so no whole batch of 50k images is ever in memory.
"""

import contextlib
import os
import zipfile

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
  _write_npz(path, {"arr_0": images, "arr_1": _checked_labels(labels, len(images))},
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


class BatchWriter:
  """The open arr_0 of a batch being written by `writing`: `add` appends rows in order."""

  def __init__(self, member, shape):
    self._member, self.shape, self.rows = member, tuple(shape), 0

  def add(self, images) -> None:
    images = _checked_images(images, "images")
    if images.shape[1:] != self.shape[1:] or self.rows + len(images) > self.shape[0]:
      raise ValueError(f"images {images.shape} do not continue arr_0 {self.shape} after "
                       f"{self.rows} rows")
    self._member.write(np.ascontiguousarray(images).tobytes())
    self.rows += len(images)


@contextlib.contextmanager
def writing(path: str, shape, *, overwrite: bool = False):
  """Writes an ADM batch whose arr_0 (uint8 `shape` [N, H, W, 3]) is streamed.

  Yields (BatchWriter, arrays): add exactly N rows to the writer, and put the batch's other
  arrays (arr_1 labels; mu, sigma, mu_s, sigma_s) into the dict `arrays`; they are written
  after arr_0 when the block ends. The file appears at `path` only when complete.
  """
  if not path.endswith(".npz"):
    raise ValueError(f"path must end in .npz, got {path!r}")
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
  arrays = {}
  with files.atomic_write(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED,
                                                             allowZip64=True) as archive:
    with archive.open("arr_0.npy", "w", force_zip64=True) as member:
      np.lib.format.write_array_header_1_0(
          member, {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
      writer = BatchWriter(member, shape)
      yield writer, arrays
      if writer.rows != writer.shape[0]:
        raise ValueError(f"{path}: {writer.rows} rows were added to arr_0 {writer.shape}")
    if "arr_1" in arrays:
      arrays["arr_1"] = _checked_labels(arrays["arr_1"], writer.shape[0])
    if set(arrays) - {"arr_1"}:
      arrays.update(_checked_stats({k: v for k, v in arrays.items() if k != "arr_1"}, path))
    for name, array in arrays.items():
      with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)


@contextlib.contextmanager
def _open_images(path: str):
  """(open arr_0 member positioned after its header, its shape), checked."""
  with zipfile.ZipFile(path) as archive:
    if "arr_0.npy" not in archive.namelist():
      raise ValueError(f"{path} has no arr_0 (members: {sorted(archive.namelist())})")
    with archive.open("arr_0.npy") as member:
      version = np.lib.format.read_magic(member)
      read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                     else np.lib.format.read_array_header_2_0)
      shape, fortran_order, dtype = read_header(member)
      if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3 or fortran_order:
        raise ValueError(f"{path}:arr_0 must be uint8 [N, H, W, 3] in C order, got {dtype} "
                         f"{shape}")
      yield member, shape


def image_shape(path: str) -> tuple[int, ...]:
  """The shape of arr_0 of an ADM batch, read from its header alone."""
  with _open_images(path) as (_, shape):
    return shape


def iter_images(path: str, batch_size: int):
  """arr_0 of an ADM batch, `batch_size` rows at a time, read without loading it whole."""
  with _open_images(path) as (member, shape):
    row_bytes = int(np.prod(shape[1:]))
    for start in range(0, shape[0], batch_size):
      rows = min(batch_size, shape[0] - start)
      yield np.frombuffer(member.read(rows * row_bytes), np.uint8).reshape(rows, *shape[1:])


def stats_keys(path: str) -> list[str]:
  """Which of mu, sigma, mu_s, sigma_s the batch at `path` holds (reads only its index)."""
  with zipfile.ZipFile(path) as archive:
    names = {name.removesuffix(".npy") for name in archive.namelist()}
  return [k for k in STATS_KEYS if k in names]


def _checked_labels(labels, num_images: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.shape != (num_images,) or labels.dtype.kind not in "iu":
    raise ValueError(f"labels must be integers of shape ({num_images},), "
                     f"got {labels.dtype} {labels.shape}")
  return labels.astype(np.int64)


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
