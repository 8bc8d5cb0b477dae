"""UViM's tasks: what a label is, how it is scored in training, predicted and evaluated.

A task turns the input pipeline's batch into the label autoencoder's labels, its context
image and the task model's input image; it gives Stage I's loss on decoded labels, the
prediction made from decoded labels, a picture of a prediction, and per-example scores of a
prediction against the labels. The trainers and the evaluation read a task only through
`Task`, so depth and panoptic are new entries of TASKS, not branches.

  task = tasks.get("colorization")
  example = task.prepare(batch)        # {"labels": {key: [B, H, W, C]}, "context", "image"}
  loss, metrics = task.loss(decoded, example["labels"])
  prediction = task.predict(decoded)
  scores = task.scores(prediction, example["labels"])   # {name: [B]}
"""

import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  labels: tuple[tuple[str, int], ...]  # (label key, channels): the autoencoder's heads
  prepare: Callable[[dict], dict]  # batch {"image" in [0, 1], ...} -> labels, context, image
  loss: Callable[[dict, dict], tuple]  # (decoded, labels) -> (scalar loss, {name: scalar})
  predict: Callable[[dict], dict]  # decoded labels -> a prediction in the labels' encoding
  picture: Callable[[dict], object]  # prediction or labels -> RGB [B, H, W, 3] in [0, 1]
  scores: Callable[[dict, dict], dict]  # (prediction, labels) -> {name: per-example [B]}
  fid: bool  # whether pictures of predictions are scored by FID against real images
  baseline: str  # the prediction made without a model, e.g. "gray input"
  baseline_prediction: Callable[[dict], dict]  # prepared example -> that prediction


def _registry() -> dict[str, Task]:
  from fsq_repro.tasks import colorization  # pylint: disable=g-import-not-at-top
  return {task.name: task for task in (colorization.TASK,)}


def names() -> tuple[str, ...]:
  return tuple(_registry())


def get(name: str) -> Task:
  tasks = _registry()
  if name not in tasks:
    raise ValueError(f"task.name={name!r} is unknown; use one of {sorted(tasks)}")
  return tasks[name]
