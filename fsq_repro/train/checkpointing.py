"""Orbax checkpoints of a train state: async saves, keep the last K, resume, preemption.

Orbax writes each step into a temporary directory and renames it when complete, so a
half-written checkpoint is never picked up. A restore that fails (a corrupted latest
step) falls back to the previous step with a warning naming the bad one.
"""

import os
import signal

import jax
import orbax.checkpoint as ocp
from absl import logging

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again"; sweep drivers rerun on it


def finished_steps(directory: str) -> list[int]:
  """Steps of the complete checkpoints in `directory` (orbax names them by step)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


class Checkpointer:

  def __init__(self, directory: str, *, every_steps: int, keep: int):
    self.every_steps = every_steps
    self.manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                             create=True))

  def restore_or_init(self, init_fn, abstract_state):
    """The newest readable checkpoint (restored into `abstract_state`'s shardings), else init_fn()."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        logging.info("resumed from checkpoint step %d in %s", step, self.manager.directory)
        return state
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("checkpoint step %d in %s is unreadable (%s: %s); trying an older one",
                        step, self.manager.directory, type(e).__name__, e)
    return init_fn()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, *, force: bool = False) -> bool:
    if not force and (step % self.every_steps):
      return False
    if self.manager.latest_step() == step:
      return False
    return self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class PreemptionFlag:
  """Set by SIGTERM; the train loop checks it each step, saves, and exits."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def should_stop(self) -> bool:
    if jax.process_count() == 1:
      return self.requested
    # Every process must agree, or some would wait for a collective forever.
    from jax.experimental import multihost_utils
    return bool(multihost_utils.process_allgather(self.requested).any())

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)
