"""The trainer skeleton every stage shares: setup -> restore or init -> jitted step -> loop.

A stage describes itself with a `Setup` (how to make its train state, its step, its
batches) and calls `train(setup, config, workdir)`, which does the rest the same way for
every stage: shardings of the state (replicated, or FSDP by the mesh config), resume from
the newest checkpoint, the run's config.json, reporting, batches built ahead of use, async
checkpoints, the SIGTERM save, and a stop on a non-finite metric.

Metrics stay on the device except at log and checkpoint steps, so the loop makes no host
round trip per step. A non-finite metric stops the run before anything is saved.
"""

import dataclasses
from typing import Any, Callable, Iterator

import jax

from fsq_repro import checkpoints, parallel, timing
from fsq_repro import workdir as workdir_lib
from fsq_repro.train import reporting


@dataclasses.dataclass(frozen=True)
class Setup:
  """What differs between stages. The train state is a pytree with an int `step` field."""
  name: str  # "stage1" or "stage2": its config section and its subdirectory of the workdir
  init: Callable[[jax.Array], Any]  # rng -> a new train state
  # (state, batch, rng, frozen) -> (state, float32 metrics); `frozen` is never updated.
  train_step: Callable
  batches: Callable[[int], Iterator[dict]]  # start step -> this process's numpy batches
  init_rng: jax.Array
  step_rng: jax.Array  # step s gets fold_in(step_rng, s)
  summary: Callable[[Any], str]  # state -> the run's first lines (sizes, devices, losses on)
  frozen: Any = ()  # e.g. the perceptual network's parameters
  on_step: Callable | None = None  # (step, state, batch, reporter) after each step
  start_from: Callable | None = None  # state -> state: a new run's starting point (fine-tuning)
  run_info: dict = dataclasses.field(default_factory=dict)  # saved in config.json


def make_train_step(train_step: Callable, shardings, mesh) -> Callable:
  """`train_step` jitted: the state keeps `shardings` and is donated, metrics are replicated."""
  return jax.jit(train_step, out_shardings=(shardings, parallel.replicated(mesh)),
                 donate_argnums=0)


def train(setup: Setup, config, workdir: str):
  """Trains `setup`'s stage into <workdir>/<name>, resuming from its newest checkpoint."""
  s = config[setup.name]
  directory = workdir_lib.stage_dir(workdir, setup.name)
  mesh = parallel.make_mesh()
  abstract, shardings = parallel.abstract_state(setup.init, setup.init_rng, mesh, config.mesh)
  checkpointer = checkpoints.Checkpointer(workdir_lib.checkpoint_dir(workdir, setup.name),
                                          every_steps=s.checkpoint_every_steps,
                                          keep=s.keep_checkpoints)
  def new_state():
    state = jax.jit(setup.init, out_shardings=shardings)(setup.init_rng)
    return setup.start_from(state) if setup.start_from else state

  state = checkpointer.restore_or_init(new_state, abstract)
  start_step = int(state.step)
  timing.mark("setup")  # the model, its initialisation (compiled) or restored checkpoint
  reporter = reporting.Reporter(directory, num_train_steps=s.num_train_steps,
                                start_step=start_step)
  if checkpointer.restored_step is not None:
    reporter.text(f"{setup.name}: resumed from step {start_step}: "
                  f"{checkpointer.directory}/{checkpointer.restored_step}")
  if jax.process_index() == 0:
    workdir_lib.write_run_config(directory, config, **setup.run_info)
  reporter.text(f"{setup.summary(state)}; {jax.device_count()} devices, "
                f"{jax.process_count()} processes; steps {start_step} -> {s.num_train_steps}")
  step = make_train_step(setup.train_step, shardings, mesh)
  on_step = setup.on_step and (lambda *args: setup.on_step(*args, reporter))
  return run(state, step_fn=lambda st, b, r: step(st, b, r, setup.frozen),
             batches=parallel.prefetch_to_device(setup.batches(start_step), mesh),
             rng=setup.step_rng, start_step=start_step, num_steps=s.num_train_steps,
             log_every=s.log_every_steps, checkpointer=checkpointer, reporter=reporter,
             name=setup.name, on_step=on_step)


def run(state, *, step_fn: Callable, batches: Iterator, rng, start_step: int, num_steps: int,
        log_every: int, checkpointer: checkpoints.Checkpointer,
        reporter: reporting.Reporter, name: str,
        on_step: Callable[[int, object, dict], None] | None = None):
  """Runs steps start_step..num_steps-1 of `state, metrics = step_fn(state, batch, rng)`.

  `on_step(step, state, batch)` runs after each step (image summaries and the like).
  Exits with PREEMPTED_EXIT_CODE after saving when SIGTERM arrives.
  """
  preemption = checkpoints.PreemptionFlag()
  try:
    for step in range(start_step, num_steps):
      batch = next(batches)
      state, metrics = step_fn(state, batch, jax.random.fold_in(rng, step))
      if step == start_step:  # compilation, reading the first batch, running the first step
        jax.block_until_ready(state)
        timing.mark("first_step", count=1)
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
        raise SystemExit(checkpoints.PREEMPTED_EXIT_CODE)
    timing.mark("steps", count=max(0, num_steps - start_step - 1))
    checkpointer.close()  # still under the SIGTERM handler: a late SIGTERM lets this finish
    reporter.close()
    timing.mark("final_checkpoint")
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
