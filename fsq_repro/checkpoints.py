"""Orbax checkpoints: async saves, keep the last K, resume, inference restores, preemption.

Orbax writes each step into a temporary directory and renames it when complete, so a
half-written checkpoint is never picked up. A restore that fails (a corrupted latest step)
falls back to the previous step with a warning naming the bad one; a training run also moves
the bad one aside so that it writes that step again. A checkpoint of another config, or a
directory with no readable step, raises instead of silently starting over.

Two ways in: `Checkpointer.restore_or_init` resumes a training run (the whole state);
`restore_latest(directory, abstract)` loads for inference, reading only the subtrees that
`abstract` names (e.g. a tokenizer's EMA parameters out of a whole Stage I train state).
"""

import os
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again"; sweep drivers rerun on it


def finished_steps(directory: str) -> list[int]:
  """Steps of the complete checkpoints in `directory` (orbax names them by step)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _manager(directory: str, *, keep: int | None = None, create: bool = False):
  # One explicit item handler: a step missing its item then fails alone, instead of
  # switching the manager into multi-item mode for every later step. The PyTree handler
  # (the format StandardCheckpointHandler writes too) can restore part of a tree.
  return ocp.CheckpointManager(
      os.path.abspath(directory),  # orbax refuses relative paths
      item_handlers=ocp.PyTreeCheckpointHandler(),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                           create=create))


def _check_fits(directory: str, step: int, saved, abstract, *, partial: bool) -> None:
  """A shape or structure mismatch means another config, not corruption: never skip it."""
  saved = ocp.tree.to_flat_dict(saved)
  wanted = ocp.tree.to_flat_dict(abstract)
  paths = sorted(set(wanted) if partial else set(saved) | set(wanted))
  for path in paths:
    theirs = getattr(saved.get(path), "shape", "absent")
    ours = getattr(wanted.get(path), "shape", "absent")
    if "absent" in (theirs, ours) or tuple(theirs) != tuple(ours):
      raise ValueError(
          f"checkpoint step {step} in {directory} does not fit this config "
          f"({'/'.join(path)}: {theirs} saved, {ours} now); it was written with another "
          "config: use a new --workdir or the config that wrote it")


def _restore_newest(manager, abstract, *, partial: bool, step: int | None = None):
  """(step, state, newer unreadable steps) of the newest step (or `step`) that restores as
  `abstract`.

  `abstract` None restores every array as it was saved. Raises FileNotFoundError when there
  is no step (or not `step`), RuntimeError when none is readable, ValueError when one does not
  fit.
  """
  directory = manager.directory
  steps = sorted(manager.all_steps(), reverse=True)
  if step is not None:
    if step not in steps:
      raise FileNotFoundError(f"no checkpoint of step {step} in {directory} (steps: "
                              f"{sorted(steps)})")
    steps = [step]
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {directory}")
  unreadable = []
  for step in steps:
    try:
      saved = manager.item_metadata(step).tree
    except Exception as e:  # pylint: disable=broad-except
      unreadable.append(_warn_unreadable(directory, step, e))
      continue
    if abstract is not None:
      _check_fits(directory, step, saved, abstract, partial=partial)
    if abstract is None:  # numpy arrays, as saved
      restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), saved)
    else:
      restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
    try:
      state = manager.restore(step, args=ocp.args.PyTreeRestore(
          abstract, restore_args=restore_args, partial_restore=partial))
    except Exception as e:  # pylint: disable=broad-except
      unreadable.append(_warn_unreadable(directory, step, e))
      continue
    return step, state, unreadable
  raise RuntimeError(f"no checkpoint in {directory} is readable (steps "
                     f"{', '.join(map(str, unreadable))}); move them away to start over")


def _warn_unreadable(directory, step: int, error: Exception) -> int:
  message = " ".join(str(error).split())[:300]
  logging.warning("checkpoint step %d in %s is unreadable (%s: %s); trying an older one",
                  step, directory, type(error).__name__, message)
  return step


def restore_latest(directory: str, abstract_state=None, step: int | None = None):
  """The newest readable checkpoint of `directory` (or that of `step`), for inference; moves
  nothing.

  Only the leaves that `abstract_state` (ShapeDtypeStructs, with shardings) names are read,
  with its shapes, dtypes and shardings; None reads every array as saved, as numpy.
  """
  manager = _manager(directory)
  try:
    step, state, _ = _restore_newest(manager, abstract_state, partial=abstract_state is not None,
                                     step=step)
  finally:
    manager.close()
  logging.info("restored checkpoint step %d of %s", step, directory)
  return state


class Checkpointer:
  """The checkpoints of one training run: resume, periodic async saves, the final save."""

  def __init__(self, directory: str, *, every_steps: int, keep: int):
    self.every_steps = every_steps
    self.manager = _manager(directory, keep=keep, create=True)
    self.restored_step = None  # the step resumed from, if any

  @property
  def directory(self) -> str:
    return str(self.manager.directory)

  def restore_or_init(self, init_fn, abstract_state):
    """The newest readable checkpoint (in `abstract_state`'s shardings); init_fn() if none exist.

    Unreadable newer steps are skipped with a warning and moved aside to `<step>.unreadable`,
    so that the run writes those steps again. Raises ValueError when a step does not fit
    `abstract_state` (another config wrote it) and RuntimeError when no step is readable:
    neither may silently start over.
    """
    if not self.manager.all_steps():
      return init_fn()
    step, state, unreadable = _restore_newest(self.manager, abstract_state, partial=False)
    self._set_aside(unreadable)
    self.restored_step = step
    return state

  def _set_aside(self, steps: list[int]) -> None:
    """Renames unreadable steps (kept for inspection) so that their step numbers are free."""
    if not steps:
      return
    if jax.process_index() == 0:
      for step in steps:
        path = os.path.join(self.directory, str(step))
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
    return self.manager.save(step, args=ocp.args.PyTreeSave(state), force=True)

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
