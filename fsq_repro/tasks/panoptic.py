"""Panoptic segmentation's labels, loss and prediction (big_vision
`trainers/proj/uvim/panoptic_task.py`), on COCO panoptic's two label maps.

A label is two one-hot maps: semantics (134 channels: void and COCO's 133 categories) and
canonically numbered instances (100 slots; data/coco_panoptic.py makes both). Stage I's loss
is the sum of the two per-pixel cross-entropies, each averaged over all pixels (void is a
class of its own). A prediction takes the argmax instance of every pixel and gives each
instance the argmax of the semantic logits summed over its mask. The context and the task
model's input are the RGB image in [-1, 1].

Scores: per image, the semantic pixel accuracy on non-void pixels at the model's size; over
the evaluation split, PQ/SQ/RQ with panopticapi's rules against each image's full-size COCO
ground truth (`dataset_metric`: eval/panoptic.py's PanopticEvaluation, predictions resized
back to each image's size and written in COCO's panoptic PNG + JSON format).
"""

import jax
import jax.numpy as jnp

from fsq_repro import tasks
from fsq_repro.data import coco_panoptic

KEYS = ("semantics", "instances")
LABELS = (("semantics", coco_panoptic.NUM_SEMANTICS), ("instances", coco_panoptic.NUM_INSTANCES))


def prepare(batch: dict) -> dict:
  image = batch["image"] * 2.0 - 1.0
  labels = {key: jax.nn.one_hot(batch[key].astype(jnp.int32), channels)
            for key, channels in LABELS}  # ids past the last slot: all-zero (as big_vision)
  return {"labels": labels, "context": image, "image": image}


def loss(decoded: dict, labels: dict):
  """Per-pixel cross-entropies of semantics and instances, each averaged over pixels."""
  metrics = {}
  for key in KEYS:
    log_p = jax.nn.log_softmax(decoded[key].astype(jnp.float32), axis=-1)
    metrics[f"{key}_cross_entropy"] = jnp.mean(-jnp.sum(labels[key] * log_p, axis=-1))
  return sum(metrics.values()), metrics


def predict(decoded: dict) -> dict:
  """Logits -> {"semantics", "instances"} int32 [B, H, W]: each pixel's argmax instance, each
  instance labelled by the argmax of the semantic logits summed over its mask."""
  instances = jnp.argmax(decoded["instances"], axis=-1)
  masks = jax.nn.one_hot(instances, decoded["instances"].shape[-1], dtype=jnp.float32)
  summed = jnp.einsum("bhwk,bhwn->bnk", decoded["semantics"].astype(jnp.float32), masks)
  label = jnp.argmax(summed, axis=-1)  # [B, instances]
  semantics = jnp.take_along_axis(label, instances.reshape(len(label), -1), axis=1)
  return {"semantics": semantics.reshape(instances.shape).astype(jnp.int32),
          "instances": instances.astype(jnp.int32)}


def picture(prediction: dict):
  """A colour per (category, instance): hue from the category, brightness from the instance;
  void is black."""
  semantics = prediction["semantics"].astype(jnp.float32)
  hue = jnp.mod(semantics * 0.618034, 1.0)[..., None]
  value = 0.55 + 0.45 * jnp.mod(prediction["instances"].astype(jnp.float32) * 0.381966, 1.0)
  rgb = jnp.clip(jnp.abs(jnp.mod(hue * 6.0 + jnp.array([0.0, 4.0, 2.0]), 6.0) - 3.0) - 1.0,
                 0.0, 1.0)  # HSV at full saturation
  return rgb * (value * (semantics > 0))[..., None]


def scores(prediction: dict, example: dict) -> dict:
  """{"pixel_accuracy": [B]}: predicted semantics equal to the labels' on non-void pixels."""
  truth = jnp.argmax(example["labels"]["semantics"], axis=-1)
  labelled = truth > 0
  right = jnp.sum((prediction["semantics"] == truth) & labelled, axis=(1, 2))
  return {"pixel_accuracy": right / jnp.maximum(jnp.sum(labelled, axis=(1, 2)), 1)}


def dataset_metric(config, directory):
  """PQ over the evaluated images of config.dataset.eval_split (eval/panoptic.py)."""
  from fsq_repro.eval import panoptic  # pylint: disable=g-import-not-at-top
  return panoptic.PanopticEvaluation.for_split(config, directory)


TASK = tasks.Task(name="panoptic", labels=LABELS, prepare=prepare, loss=loss, predict=predict,
                  picture=picture, scores=scores, fid=False, eval_crop="full", maps=KEYS,
                  dataset_metric=dataset_metric)
