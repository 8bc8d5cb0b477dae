"""Class-conditional samples: MaskGIT decoding with CFG, then the Stage I decoder.

`--mode=sample` writes, under `workdir`/samples/cfg_<alpha>/, one PNG grid per class and
samples.npz in ADM's format (arr_0 uint8 NHWC images, arr_1 labels).
"""

import os

import jax
import numpy as np
from PIL import Image

from fsq_repro import api, parallel
from fsq_repro.eval import adm_npz
from fsq_repro.images import image_grid, to_uint8


def balanced_labels(num_images: int, num_classes: int) -> np.ndarray:
  return np.arange(num_images) % num_classes


def sample_many(generator: api.Generator, *, num_images: int, batch_size: int,
                cfg_alpha: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images [num_images, H, W, 3] and labels, class-balanced, deterministic in seed."""
  labels = balanced_labels(num_images, generator.layout.num_classes)
  base = jax.random.fold_in(jax.random.key(seed), 4)
  out = []
  for start in range(0, num_images, batch_size):
    batch = labels[start:start + batch_size]
    padded = np.resize(batch, batch_size)  # fixed shape: one compilation
    images = generator.sample(padded, cfg_alpha, jax.random.fold_in(base, start))
    out.append(to_uint8(parallel.host_array(images)[:len(batch)]))
  return np.concatenate(out), labels


def write_samples(config, workdir: str) -> str:
  """The `--mode=sample` job. Returns the output directory."""
  s = config.sample
  generator = api.Generator.from_workdir(workdir, config)
  directory = os.path.join(workdir, "samples", f"cfg_{s.cfg:g}")
  os.makedirs(directory, exist_ok=True)
  images, labels = sample_many(generator, num_images=s.num_images, batch_size=s.batch_size,
                               cfg_alpha=s.cfg, seed=config.seed)
  if jax.process_index() == 0:
    for label in range(generator.layout.num_classes):
      chosen = images[labels == label][:s.grid_images_per_class]
      if len(chosen):
        grid = image_grid(chosen.astype(np.float32) / 255.0, columns=len(chosen))
        Image.fromarray(grid).save(os.path.join(directory, f"class_{label:03d}.png"))
    path = os.path.join(directory, "samples.npz")
    adm_npz.save_samples(path, images, labels, overwrite=True)
    print(f"sample: wrote {len(images)} samples (cfg {s.cfg:g}) and "
          f"{generator.layout.num_classes} class grids to {directory}", flush=True)
  return directory
