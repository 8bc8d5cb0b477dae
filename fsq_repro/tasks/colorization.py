"""Colorization (big_vision `trainers/proj/uvim/colorization_task.py`).

The label is the RGB image in [-1, 1] ("color"), the context and the task model's input its
grayscale (`tf.image.rgb_to_grayscale`'s weights) repeated to three channels. Stage I's loss
is the mean squared error of the decoded colour; a prediction is the decoded colour clipped
to [-1, 1]. Scores: PSNR in dB of the [0, 1] picture; FID of the pictures (eval/). Without a
model, the prediction is the gray input itself.
"""

import jax.numpy as jnp

from fsq_repro import tasks

GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale


def grayscale(rgb):
  """[..., 3] -> [..., 3]: the luma, repeated to three channels."""
  gray = jnp.tensordot(rgb, jnp.asarray(GRAY_WEIGHTS, rgb.dtype), axes=[[-1], [0]])
  return jnp.repeat(gray[..., None], 3, axis=-1)


def prepare(batch: dict) -> dict:
  color = batch["image"] * 2.0 - 1.0
  gray = grayscale(color)
  return {"labels": {"color": color}, "context": gray, "image": gray}


def loss(decoded: dict, labels: dict):
  mse = jnp.mean((decoded["color"].astype(jnp.float32) - labels["color"]) ** 2)
  return mse, {"mse": mse}


def predict(decoded: dict) -> dict:
  return {"color": jnp.clip(decoded["color"].astype(jnp.float32), -1.0, 1.0)}


def picture(prediction: dict):
  return (prediction["color"] + 1.0) / 2.0


def scores(prediction: dict, example: dict) -> dict:
  """PSNR in dB of each picture against the ground truth's, both in [0, 1]."""
  error = (picture(prediction) - picture(example["labels"])) ** 2
  mse = jnp.mean(error.reshape(error.shape[0], -1), axis=-1)
  return {"psnr": 10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10))}


def gray_input(example: dict) -> dict:
  return {"color": example["context"]}


TASK = tasks.Task(name="colorization", labels=(("color", 3),), prepare=prepare, loss=loss,
                  predict=predict, picture=picture, scores=scores, fid=True,
                  baseline="gray input", baseline_prediction=gray_input)
