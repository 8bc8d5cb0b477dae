"""UViM's tasks: what a label is, how it is scored in training, predicted and evaluated.

A task turns the input pipeline's batch into the label autoencoder's labels, its context
image and the task model's input image; it gives Stage I's loss on decoded labels, the
prediction made from decoded labels, a picture of a prediction, and per-example scores of a
prediction against the labels. The trainers and the evaluation read a task only through
`Task`, so depth and panoptic are entries of the registry, not branches.

  task = tasks.get("colorization")
  example = task.prepare(batch)        # {"labels": {key: [B, H, W, C]}, "context", "image"}
  loss, metrics = task.loss(decoded, example["labels"])
  prediction = task.predict(decoded)
  scores = task.scores(prediction, example)   # {name: [B]}
"""

import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  labels: tuple[tuple[str, int], ...]  # (label key, channels): the autoencoder's heads
  prepare: Callable[[dict], dict]  # batch {"image" in [0, 1], ...} -> labels, context, image
  loss: Callable[[dict, dict], tuple]  # (decoded, labels) -> (scalar loss, {name: scalar})
  predict: Callable[[dict], dict]  # decoded labels -> a prediction
  picture: Callable[[dict], object]  # prediction -> RGB [B, H, W, 3] in [0, 1]
  scores: Callable[[dict, dict], dict]  # (prediction, prepared example) -> {name: [B]}
  fid: bool  # whether pictures of predictions are scored by FID against real images
  eval_crop: str = "center"  # the input pipeline's crop of evaluation images
  baseline: str | None = None  # the prediction made without a model, e.g. "gray input"
  baseline_prediction: Callable[[dict], dict] | None = None  # prepared example -> it
  maps: tuple[str, ...] = ()  # the dense label maps [B, H, W] its batches carry ("depth")
  # (config, eval directory) -> a metric over the whole evaluation split (panoptic's PQ):
  # .add({method: host prediction}, positions [B] in the split, -1 for padding), .results()
  # -> {method: {name: value}}.
  dataset_metric: Callable | None = None


def zeros_batch(task: Task, size: int) -> dict:
  """A one-example batch of zeros as the input pipeline gives it to `task` (for shapes)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return {"image": jnp.zeros((1, size, size, 3), jnp.float32),
          **{key: jnp.zeros((1, size, size), jnp.float32) for key in task.maps}}


def _registry() -> dict[str, Task]:
  from fsq_repro.tasks import colorization, depth, panoptic  # pylint: disable=g-import-not-at-top
  return {task.name: task for task in (colorization.TASK, depth.TASK, panoptic.TASK)}


def names() -> tuple[str, ...]:
  return tuple(_registry())


def get(name: str) -> Task:
  tasks = _registry()
  if name not in tasks:
    raise ValueError(f"task.name={name!r} is unknown; use one of {sorted(tasks)}")
  return tasks[name]
