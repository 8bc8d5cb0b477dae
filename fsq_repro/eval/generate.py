"""Class-conditional samples: MaskGIT decoding with CFG, then the Stage I decoder.

`--mode=sample` writes, under `workdir`/samples/cfg_<alpha>/, one PNG grid per class and
samples.npz in ADM's format (arr_0 uint8 NHWC images, arr_1 labels).
"""

import contextlib
import os

import jax
import numpy as np
from PIL import Image

from fsq_repro import api, parallel, timing
from fsq_repro.eval import adm_npz
from fsq_repro.images import image_grid, to_uint8


def balanced_labels(num_images: int, num_classes: int) -> np.ndarray:
  return np.arange(num_images) % num_classes


def iter_samples(generator: api.Generator, labels, batch_size: int, cfg_alpha: float,
                 seed: int):
  """Samples of `labels`, `batch_size` at a time: (float32 images [batch_size, H, W, 3], a
  global array on several processes, and how many leading rows are real). The last batch is
  padded to the fixed shape (one compilation); batch b's key is fold_in(seed's, b's start),
  so the samples do not depend on the process count."""
  base = jax.random.fold_in(jax.random.key(seed), 4)
  for start in range(0, len(labels), batch_size):
    batch = labels[start:start + batch_size]
    padded = np.resize(batch, batch_size)
    yield generator.sample(padded, cfg_alpha, jax.random.fold_in(base, start)), len(batch)


def sample_many(generator: api.Generator, *, num_images: int, batch_size: int,
                cfg_alpha: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images [num_images, H, W, 3] and labels, class-balanced, deterministic in seed."""
  labels = balanced_labels(num_images, generator.layout.num_classes)
  images = [to_uint8(parallel.host_array(images)[:real]) for images, real in
            iter_samples(generator, labels, batch_size, cfg_alpha, seed)]
  return np.concatenate(images), labels


def write_samples(config, workdir: str) -> str:
  """The `--mode=sample` job, streaming the samples into samples.npz. Returns the output
  directory."""
  s, size = config.sample, config.dataset.image_size
  generator = api.Generator.from_workdir(workdir, config)
  timing.mark("setup")  # both networks restored
  directory = os.path.join(workdir, "samples", f"cfg_{s.cfg:g}")
  num_classes = generator.layout.num_classes
  labels = balanced_labels(s.num_images, num_classes)
  grids = {label: [] for label in range(num_classes)}  # the first few samples of each class
  writing = contextlib.nullcontext((None, {}))
  if jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
    writing = adm_npz.writing(os.path.join(directory, "samples.npz"),
                              (s.num_images, size, size, 3), overwrite=True)
  start = 0
  with writing as (images_out, arrays):
    for images, real in iter_samples(generator, labels, s.batch_size, s.cfg, config.seed):
      images = to_uint8(parallel.host_array(images)[:real])
      if images_out is not None:
        images_out.add(images)
      for image, label in zip(images, labels[start:start + real]):
        if len(grids[label]) < s.grid_images_per_class:
          grids[label].append(image)
      start += real
    arrays["arr_1"] = labels
  timing.mark("sampling", count=s.num_images)
  if jax.process_index() == 0:
    for label, chosen in grids.items():
      if chosen:
        grid = image_grid(np.stack(chosen).astype(np.float32) / 255.0, columns=len(chosen))
        Image.fromarray(grid).save(os.path.join(directory, f"class_{label:03d}.png"))
    print(f"sample: wrote {s.num_images} samples (cfg {s.cfg:g}) and {num_classes} class "
          f"grids to {directory}", flush=True)
  return directory
