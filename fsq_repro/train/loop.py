"""The training loop both stages share: step, report, checkpoint, stop on preemption.

Metrics stay on the device except at log and checkpoint steps, so the loop makes no host
round trip per step. A non-finite metric stops the run before anything is saved.
"""

from typing import Callable, Iterator

import jax

from fsq_repro.train import checkpointing, reporting


def run(state, *, step_fn: Callable, batches: Iterator, rng, start_step: int, num_steps: int,
        log_every: int, checkpointer: checkpointing.Checkpointer,
        reporter: reporting.Reporter, name: str,
        on_step: Callable[[int, object, dict], None] | None = None):
  """Runs steps start_step..num_steps-1 of `state, metrics = step_fn(state, batch, rng)`.

  `on_step(step, state, batch)` runs after each step (image summaries and the like).
  Exits with PREEMPTED_EXIT_CODE after saving when SIGTERM arrives.
  """
  preemption = checkpointing.PreemptionFlag()
  try:
    for step in range(start_step, num_steps):
      batch = next(batches)
      state, metrics = step_fn(state, batch, jax.random.fold_in(rng, step))
      done = step + 1
      reporter.tick(done)
      is_last = done == num_steps
      is_log = done % log_every == 0 or is_last
      if is_log or done % checkpointer.every_steps == 0:
        metrics = jax.device_get(metrics)
        _check_finite(done, metrics, checkpointer, reporter)
        if is_log:
          reporter.scalars(done, metrics)
      if on_step is not None:
        on_step(done, state, batch)
      checkpointer.save(done, state, force=is_last)
      if not is_last and preemption.should_stop():
        _check_finite(done, jax.device_get(metrics), checkpointer, reporter)  # saves no NaN
        checkpointer.save(done, state, force=True)
        checkpointer.close()
        reporter.text(f"{name}: preempted (SIGTERM); saved step {done}; rerun to resume")
        reporter.close()
        raise SystemExit(checkpointing.PREEMPTED_EXIT_CODE)
    checkpointer.close()  # still under the SIGTERM handler: a late SIGTERM lets this finish
    reporter.close()
  finally:
    preemption.restore()
  return state


def _check_finite(step: int, metrics: dict, checkpointer, reporter) -> None:
  """Raises NonFiniteLossError once the last good checkpoint, maybe still writing, is done."""
  try:
    reporting.check_finite(step, metrics, checkpointer.latest_step())
  except reporting.NonFiniteLossError:
    checkpointer.close()
    reporter.close()
    raise
