"""Class-conditional samples: MaskGIT decoding with CFG, then the Stage I decoder.

`--mode=sample` writes, under `workdir`/samples/cfg_<alpha>/, one PNG grid per class and
samples.npz in ADM's format (arr_0 uint8 NHWC images, arr_1 labels).
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from fsq_repro import sampling
from fsq_repro.eval import adm_npz
from fsq_repro.models import transformer as transformer_lib
from fsq_repro.train import distributed, reporting, stage1, stage2


class Sampler:
  """Frozen Stage I + Stage II models; `images(labels, rng, alpha)` -> float32 [B, H, W, 3]."""

  def __init__(self, config, workdir: str):
    self.config = config
    self.mesh = distributed.make_mesh()
    self.autoencoder, self.ae_variables = stage1.load_tokenizer(
        config, stage2.stage1_workdir(config, workdir))
    self.model, self.params, self.layout = stage2.load_transformer(config, workdir)
    self.side = int(np.sqrt(stage2.tokens_per_image(config)))
    self._sample = jax.jit(self._sample_images)

  def logits_fn(self, params, input_ids):
    return self.model.apply({"params": params}, input_ids, train=False)

  def _sample_images(self, params, ae_variables, labels, rng, cfg_alpha):
    s = self.config.sample
    tokens = sampling.sample_tokens(
        functools.partial(self.logits_fn, params), rng, labels,
        num_tokens=self.side * self.side, layout=self.layout, num_steps=s.num_steps,
        cfg_alpha=cfg_alpha, choice_temperature=s.choice_temperature)
    tokens = tokens.reshape(-1, self.side, self.side)
    return self.autoencoder.apply(ae_variables, tokens, method="decode_indices")

  def images(self, labels: np.ndarray, rng, cfg_alpha: float) -> np.ndarray:
    """Samples for `labels` (a multiple of the device count); alpha is traced, not baked in."""
    labels = distributed.global_batch({"label": labels.astype(np.int32)}, self.mesh)["label"]
    images = self._sample(self.params, self.ae_variables, labels, rng,
                          jnp.asarray(cfg_alpha, jnp.float32))
    return np.asarray(jax.device_get(images))


def balanced_labels(num_images: int, num_classes: int) -> np.ndarray:
  return np.arange(num_images) % num_classes


def to_uint8(images: np.ndarray) -> np.ndarray:
  return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def sample_many(sampler: Sampler, *, num_images: int, batch_size: int, cfg_alpha: float,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images [num_images, H, W, 3] and labels, class-balanced, deterministic in seed."""
  labels = balanced_labels(num_images, sampler.layout.num_classes)
  base = jax.random.fold_in(jax.random.key(seed), 4)
  out = []
  for start in range(0, num_images, batch_size):
    batch = labels[start:start + batch_size]
    padded = np.resize(batch, batch_size)  # fixed shape: one compilation
    images = sampler.images(padded, jax.random.fold_in(base, start), cfg_alpha)
    out.append(to_uint8(images[:len(batch)]))
  return np.concatenate(out), labels


def write_samples(config, workdir: str) -> str:
  """The `--mode=sample` job. Returns the output directory."""
  s = config.sample
  sampler = Sampler(config, workdir)
  directory = os.path.join(workdir, "samples", f"cfg_{s.cfg:g}")
  os.makedirs(directory, exist_ok=True)
  images, labels = sample_many(sampler, num_images=s.num_images, batch_size=s.batch_size,
                               cfg_alpha=s.cfg, seed=config.seed)
  if jax.process_index() == 0:
    for label in range(sampler.layout.num_classes):
      chosen = images[labels == label][:s.grid_images_per_class]
      if len(chosen):
        grid = reporting.image_grid(chosen.astype(np.float32) / 255.0, columns=len(chosen))
        Image.fromarray(grid).save(os.path.join(directory, f"class_{label:03d}.png"))
    path = os.path.join(directory, "samples.npz")
    adm_npz.save_samples(path, images, labels, overwrite=True)
    print(f"sample: wrote {len(images)} samples (cfg {s.cfg:g}) and "
          f"{sampler.layout.num_classes} class grids to {directory}", flush=True)
  return directory
