"""Orbax checkpoints of a train state: async saves, keep the last K, resume, preemption.

Orbax writes each step into a temporary directory and renames it when complete, so a
half-written checkpoint is never picked up. A restore that fails (a corrupted latest
step) falls back to the previous step with a warning naming the bad one, and moves the bad
one aside so that the run writes that step again. A checkpoint of another config, or a
directory with no readable step, raises instead of silently starting over.
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
    # One explicit item handler: a step missing its item then fails alone, instead of
    # switching the manager into multi-item mode for every later step.
    self.manager = ocp.CheckpointManager(
        os.path.abspath(directory),  # orbax refuses relative paths
        item_handlers=ocp.StandardCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                             create=True))

  def restore_or_init(self, init_fn, abstract_state):
    """The newest readable checkpoint (in `abstract_state`'s shardings); init_fn() if none exist.

    Unreadable newer steps are skipped with a warning; a training run (init_fn given) moves
    them aside to `<step>.unreadable` to write those steps again, a reader (init_fn None)
    moves nothing. Raises ValueError when a step does not fit `abstract_state` (another config
    wrote it) and RuntimeError when no step is readable: neither may silently start over.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      if init_fn is None:
        raise FileNotFoundError(f"no checkpoint in {self.manager.directory}")
      return init_fn()
    unreadable = []
    for step in steps:
      try:
        saved = self.manager.item_metadata(step).tree
      except Exception as e:  # pylint: disable=broad-except
        unreadable.append(self._warn_unreadable(step, e))
        continue
      self._check_fits(step, saved, abstract_state)
      try:
        state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
      except Exception as e:  # pylint: disable=broad-except
        unreadable.append(self._warn_unreadable(step, e))
        continue
      if init_fn is not None:
        self._set_aside(unreadable)
      logging.info("resumed from checkpoint step %d in %s", step, self.manager.directory)
      return state
    raise RuntimeError(f"no checkpoint in {self.manager.directory} is readable (steps "
                       f"{', '.join(map(str, unreadable))}); move them away to start over")

  def _warn_unreadable(self, step: int, error: Exception) -> int:
    message = " ".join(str(error).split())[:300]
    logging.warning("checkpoint step %d in %s is unreadable (%s: %s); trying an older one",
                    step, self.manager.directory, type(error).__name__, message)
    return step

  def _check_fits(self, step: int, saved, abstract_state) -> None:
    """A shape or structure mismatch means another config, not corruption: never skip it."""
    saved = ocp.tree.to_flat_dict(saved)
    wanted = ocp.tree.to_flat_dict(abstract_state)
    for path in sorted(set(saved) | set(wanted)):
      theirs = getattr(saved.get(path), "shape", "absent")
      ours = getattr(wanted.get(path), "shape", "absent")
      if "absent" in (theirs, ours) or tuple(theirs) != tuple(ours):
        raise ValueError(
            f"checkpoint step {step} in {self.manager.directory} does not fit this config "
            f"({'/'.join(path)}: {theirs} saved, {ours} now); it was written with another "
            "config: use a new --workdir or the config that wrote it")

  def _set_aside(self, steps: list[int]) -> None:
    """Renames unreadable steps (kept for inspection) so that their step numbers are free."""
    if not steps:
      return
    if jax.process_index() == 0:
      for step in steps:
        path = os.path.join(self.manager.directory, str(step))
        target, n = path + ".unreadable", 1
        while os.path.exists(target):
          target, n = f"{path}.unreadable{n}", n + 1
        if os.path.isdir(path):
          os.replace(path, target)
          logging.warning("moved unreadable checkpoint %s to %s", path, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("checkpoints set aside")
    self.manager.reload()

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
