"""What a training run reports: TensorBoard + text via clu, a plain metrics.jsonl, progress.

Only process 0 writes; other processes log to their console only.
"""

import json
import math
import os
import time

import jax
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions


class NonFiniteLossError(RuntimeError):
  """A loss or gradient norm became NaN or infinite."""


class Reporter:

  def __init__(self, directory: str, *, num_train_steps: int, start_step: int):
    self.is_writer = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(directory, just_logging=not self.is_writer,
                                                       asynchronous=False)
    self.jsonl_path = os.path.join(directory, "metrics.jsonl")
    self.progress = periodic_actions.ReportProgress(num_train_steps=num_train_steps,
                                                    writer=self.writer, every_steps=None,
                                                    every_secs=30.0)
    self.num_train_steps = num_train_steps
    self._start_time = time.time()
    self._start_step = start_step

  def text(self, message: str) -> None:
    logging.info(message)
    if self.is_writer:
      print(message, flush=True)

  def tick(self, step: int) -> None:
    """Call once per step: feeds clu's steps/s and ETA report."""
    self.progress(step, time.time())

  def scalars(self, step: int, metrics: dict) -> None:
    metrics = {k: float(v) for k, v in metrics.items()}
    elapsed = time.time() - self._start_time
    done = step - self._start_step
    steps_per_sec = done / elapsed if elapsed > 0 else float("nan")
    eta = (self.num_train_steps - step) / steps_per_sec if steps_per_sec > 0 else float("nan")
    self.writer.write_scalars(step, metrics)
    if self.is_writer:
      with open(self.jsonl_path, "a") as f:
        f.write(json.dumps({"step": step, **metrics}) + "\n")
      shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
      print(f"step {step}/{self.num_train_steps} ({steps_per_sec:.2f} steps/s, "
            f"ETA {_duration(eta)}) {shown}", flush=True)

  def images(self, step: int, images: dict) -> None:
    self.writer.write_images(step, {k: np.asarray(v) for k, v in images.items()})

  def close(self) -> None:
    self.writer.flush()
    self.writer.close()


def check_finite(step: int, metrics: dict, last_checkpoint: int | None) -> None:
  bad = {k: float(v) for k, v in metrics.items() if not math.isfinite(float(v))}
  if bad:
    where = (f"last good checkpoint: step {last_checkpoint}" if last_checkpoint is not None
             else "no checkpoint was written")
    terms = ", ".join(f"{k}={float(v):.4g}" for k, v in sorted(metrics.items()))
    raise NonFiniteLossError(f"non-finite values at step {step} ({', '.join(bad)}); {where}; "
                             f"loss terms: {terms}")


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
