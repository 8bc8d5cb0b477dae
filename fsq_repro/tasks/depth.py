"""Depth's label encoding, loss and prediction (big_vision `trainers/proj/uvim/depth_task.py`).

Depth d in metres becomes one of `NUM_BINS` bins, floor((d - min) / (max - min) * bins)
clipped to 0..bins-1, one-hot over the channel axis (the label autoencoder's 256 input and
output channels). Stage I's loss is the per-pixel cross-entropy of the decoded logits,
pixels whose ground-truth bin is 0 (no depth signal: d = 0) contributing zero, averaged over
all pixels. A prediction is the argmax bin's centre, (bin + 0.5) / bins * (max - min) + min.
The context and the task model's input are the RGB image in [-1, 1]. Scores: eval/depth.py's
per-image metrics against the evaluation crop's unresized ground truth ("depth_full", from
the pipeline's crop="nyu"), else against the labels' bin centres. No model-free baseline.
"""

import jax
import jax.numpy as jnp

from fsq_repro import tasks
from fsq_repro.eval import depth as depth_metrics

NUM_BINS = 256
MIN_DEPTH, MAX_DEPTH = depth_metrics.MIN_DEPTH, depth_metrics.MAX_DEPTH  # NYU's valid range


def to_bins(depth, num_bins: int = NUM_BINS, min_depth: float = MIN_DEPTH,
            max_depth: float = MAX_DEPTH):
  """Depth [...] in metres -> int32 bins [...] in 0..num_bins-1."""
  bins = jnp.floor((depth - min_depth) / (max_depth - min_depth) * num_bins).astype(jnp.int32)
  return jnp.clip(bins, 0, num_bins - 1)


def from_bins(bins, num_bins: int = NUM_BINS, min_depth: float = MIN_DEPTH,
              max_depth: float = MAX_DEPTH):
  """Bins -> the depth at each bin's centre (floor's expected undoing)."""
  return (bins.astype(jnp.float32) + 0.5) / num_bins * (max_depth - min_depth) + min_depth


def encode(depth, num_bins: int = NUM_BINS):
  """Depth [B, H, W] -> the one-hot label [B, H, W, num_bins]."""
  return jax.nn.one_hot(to_bins(depth, num_bins), num_bins)


def loss(decoded: dict, labels: dict):
  """Masked per-pixel cross-entropy of decoded logits {"depth": [B, H, W, bins]}."""
  logits = decoded["depth"].astype(jnp.float32)
  target = labels["depth"]
  per_pixel = -jnp.sum(target * jax.nn.log_softmax(logits, axis=-1), axis=-1)
  has_depth = jnp.argmax(target, axis=-1) != 0
  value = jnp.mean(per_pixel * has_depth)
  return value, {"depth_cross_entropy": value}


def predict(decoded: dict) -> dict:
  """Decoded logits -> {"depth": metres [B, H, W]} at the argmax bins' centres."""
  logits = decoded["depth"]
  return {"depth": from_bins(jnp.argmax(logits, axis=-1), logits.shape[-1])}


def prepare(batch: dict) -> dict:
  image = batch["image"] * 2.0 - 1.0
  example = {"labels": {"depth": encode(batch["depth"])}, "context": image, "image": image}
  if "depth_full" in batch:
    example["truth"] = batch["depth_full"]
  return example


def picture(prediction: dict):
  """Depth as gray, near dark and far (MAX_DEPTH) white."""
  gray = jnp.clip(prediction["depth"] / MAX_DEPTH, 0.0, 1.0)
  return jnp.repeat(gray[..., None], 3, axis=-1)


def scores(prediction: dict, example: dict) -> dict:
  truth = example.get("truth")
  if truth is None:
    truth = predict(example["labels"])["depth"]
  return depth_metrics.image_metrics(truth, prediction["depth"])


TASK = tasks.Task(name="depth", labels=(("depth", NUM_BINS),), prepare=prepare, loss=loss,
                  predict=predict, picture=picture, scores=scores, fid=False, eval_crop="nyu",
                  maps=("depth",))
