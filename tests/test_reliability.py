"""Reliability: kill -9 and SIGTERM resume bitwise, corrupted checkpoints, NaN stops, bad input.

The end-to-end tests run the CLI in subprocesses (scripts/chaos.py's harness) on the tiny
config and share one JAX compilation cache, so only the uninterrupted reference runs compile
from scratch; they are marked slow. The training loop, the checkpointer and the CLI's checks
are tested in this process.
"""

import glob
import logging
import os
import re
import shutil
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fsq_repro import checkpoints
from fsq_repro import workdir as workdir_lib
from fsq_repro.data import tokens as tokens_lib
from fsq_repro.train import loop, reporting
from scripts import chaos

CONFIG = "--config=configs/demo.py:quantizer=fsq,codebook_bits=6"
# What TensorFlow's and XLA's C++ logging prints, in any order relative to ours.
CPP_LOG_LINE = re.compile(r"^(WARNING: All log messages before absl|[IWEF]\d{4} )")
# The sizes of tests/tiny_configs.py, plus a tiny Stage II, as command-line overrides.
TINY = {
    "dataset.image_size": 16, "dataset.train_split": "train[:25%]", "quantizer.codebook_dim": 8,
    "model.filters": 8, "model.channel_multipliers": "(1,2)", "model.num_groups": 4,
    "model.disc_max_filters": 8, "stage1.generator_weight": 0.1,  # the GAN's state resumes too
    "stage1.batch_size": 8, "stage1.num_train_steps": 8, "stage1.log_every_steps": 1,
    "stage1.image_every_steps": 4, "stage1.checkpoint_every_steps": 2,
    "stage2.batch_size": 8, "stage2.num_train_steps": 6, "stage2.hidden_size": 16,
    "stage2.num_layers": 1, "stage2.num_heads": 2, "stage2.mlp_dim": 32,
    "stage2.warmup_steps": 2, "stage2.log_every_steps": 1, "stage2.checkpoint_every_steps": 2,
}
STEPS = {"stage1": TINY["stage1.num_train_steps"], "stage2": TINY["stage2.num_train_steps"]}

# The uninterrupted reference: the CLI's main() for Stage I, then for Stage II, in one process
# (one start-up instead of two).
STAGE1_THEN_STAGE2 = """
from absl import app, flags
from fsq_repro import main

def stage1_then_stage2(argv):
  main.main(argv)
  flags.FLAGS.mode = "stage2"
  main.main(argv)

app.run(stage1_then_stage2)
"""


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.pop("XLA_FLAGS", None)
  return env


def start(env, mode, workdir, *extra, program=("-m", "fsq_repro.main")) -> chaos.Run:
  """Starts the CLI on the tiny config; its output goes to a log file in `workdir`."""
  return chaos.Run(mode, workdir, env, extra, config=CONFIG, overrides=TINY, program=program)


def finish(run: chaos.Run, timeout=300) -> str:
  rc = run.wait(timeout=timeout)
  assert rc == 0, run.output()[-3000:]
  return run.output()


def wait_for(condition, run: chaos.Run, timeout=300):
  """Polls `condition` until it holds; fails if the process ends first."""
  if not run.wait_until(condition, timeout):
    run.process.kill()
    pytest.fail(f"run ended (rc {run.process.poll()}) before the awaited moment:\n"
                + run.output()[-3000:])


def kill9(run: chaos.Run):
  run.process.kill()
  assert run.wait() == -signal.SIGKILL


def assert_same_final_checkpoint(reference, workdir, mode):
  assert chaos.differences(reference, workdir, mode) is None
  assert chaos.checkpoint_steps(workdir, mode)[-1] == STEPS[mode]


@pytest.fixture(scope="module")
def reference(cli_env, tmp_path_factory):
  """A workdir holding uninterrupted Stage I and Stage II runs."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  finish(start(cli_env, "stage1", workdir, program=("-c", STAGE1_THEN_STAGE2)))
  return workdir


# ---------------------------------------------------------------------------------------------
# End to end: kill -9 and SIGTERM, then the same command again.


@pytest.mark.slow
def test_stage1_survives_kill9_then_sigterm_with_identical_parameters(
    cli_env, reference, tmp_path):
  workdir = str(tmp_path)
  run = start(cli_env, "stage1", workdir)
  wait_for(lambda: chaos.checkpoint_steps(workdir, "stage1"), run)
  kill9(run)
  resumed_from = chaos.checkpoint_steps(workdir, "stage1")[-1]
  assert resumed_from < STEPS["stage1"]

  lines = chaos.metrics_lines(workdir, "stage1")
  run = start(cli_env, "stage1", workdir)
  wait_for(lambda: chaos.metrics_lines(workdir, "stage1") > lines, run)  # training again
  run.process.send_signal(signal.SIGTERM)
  sent = time.time()
  assert run.wait(timeout=120) == checkpoints.PREEMPTED_EXIT_CODE, run.output()[-3000:]
  assert time.time() - sent < 60
  text = run.output()
  # Our first line (the C++ runtimes may log before it, at start-up) names the step.
  ours = [line for line in text.splitlines() if not CPP_LOG_LINE.match(line)]
  assert f"stage1: resumed from step {resumed_from}: " in ours[0]
  assert f"steps {resumed_from} -> {STEPS['stage1']}" in text
  saved = int(text.split("preempted (SIGTERM); saved step ")[1].split(";")[0])
  assert resumed_from < saved < STEPS["stage1"]
  assert chaos.checkpoint_steps(workdir, "stage1")[-1] == saved

  text = finish(start(cli_env, "stage1", workdir))
  assert f"steps {saved} -> {STEPS['stage1']}" in text
  assert_same_final_checkpoint(reference, workdir, "stage1")


@pytest.mark.slow
def test_stage2_survives_kill9_in_extraction_and_in_training(
    cli_env, reference, tmp_path):
  workdir = str(tmp_path)
  token_dir = workdir_lib.token_dir(workdir)
  uses_reference_stage1 = f"--config.stage1_workdir={reference}"

  run = start(cli_env, "stage2", workdir, uses_reference_stage1)
  wait_for(lambda: os.path.exists(tokens_lib.shard_path(token_dir, 0, 0)), run)
  kill9(run)
  assert not tokens_lib.is_complete(token_dir)

  run = start(cli_env, "stage2", workdir, uses_reference_stage1)
  wait_for(lambda: chaos.checkpoint_steps(workdir, "stage2"), run)
  kill9(run)
  assert tokens_lib.is_complete(token_dir)
  assert "extracted token shard 1/" not in run.output()  # kept from the killed run
  assert chaos.checkpoint_steps(workdir, "stage2")[-1] < STEPS["stage2"]

  text = finish(start(cli_env, "stage2", workdir, uses_reference_stage1))
  assert "extracted token shard" not in text
  assert_same_final_checkpoint(reference, workdir, "stage2")


# ---------------------------------------------------------------------------------------------
# The shared training loop and checkpointer on a toy state: preemption, NaN, corruption.


def toy_step(state, batch, rng):
  del rng
  error = state["w"] - batch
  metrics = {"loss": jnp.mean(error**2), "grad_norm": jnp.linalg.norm(error)}
  return {"w": state["w"] - 0.25 * error, "step": state["step"] + 1}, metrics


def toy_batches(start_step, nan_at=None):
  step = start_step
  while True:
    value = np.nan if step + 1 == nan_at else float(step)
    yield jnp.full((4,), value, jnp.float32)
    step += 1


TOY_ABSTRACT = {"w": jax.ShapeDtypeStruct((4,), jnp.float32),
                "step": jax.ShapeDtypeStruct((), jnp.int32)}


def toy_init():
  return {"w": jnp.zeros((4,), jnp.float32), "step": jnp.zeros((), jnp.int32)}


def run_toy(directory, *, num_steps=8, every=100, nan_at=None, sigterm_at=None,
            sigterm_in_final_close=False):
  """Trains the toy state in `directory` from its newest checkpoint; returns the final state."""
  checkpointer = checkpoints.Checkpointer(os.path.join(directory, "checkpoints"),
                                            every_steps=every, keep=10)
  if sigterm_in_final_close:
    close = checkpointer.close
    checkpointer.close = lambda: (os.kill(os.getpid(), signal.SIGTERM), close())
  state = checkpointer.restore_or_init(toy_init, TOY_ABSTRACT)
  start_step = int(state["step"])
  reporter = reporting.Reporter(directory, num_train_steps=num_steps, start_step=start_step)

  def on_step(step, state, batch):
    del state, batch
    if step == sigterm_at:
      os.kill(os.getpid(), signal.SIGTERM)

  return loop.run(state, step_fn=toy_step, batches=toy_batches(start_step, nan_at),
                  rng=jax.random.key(0), start_step=start_step, num_steps=num_steps,
                  log_every=100, checkpointer=checkpointer, reporter=reporter, name="toy",
                  on_step=on_step)


def test_sigterm_saves_the_current_step_and_exits_75_then_resumes_exactly(tmp_path, capsys):
  straight = run_toy(str(tmp_path / "straight"))
  directory = str(tmp_path / "preempted")
  previous_handler = signal.getsignal(signal.SIGTERM)
  with pytest.raises(SystemExit) as exit_info:
    run_toy(directory, sigterm_at=3)
  assert exit_info.value.code == checkpoints.PREEMPTED_EXIT_CODE == 75
  assert signal.getsignal(signal.SIGTERM) == previous_handler
  assert "preempted (SIGTERM); saved step 3" in capsys.readouterr().out
  assert checkpoints.finished_steps(os.path.join(directory, "checkpoints")) == [3]
  resumed = run_toy(directory)
  np.testing.assert_array_equal(resumed["w"], straight["w"])
  assert int(resumed["step"]) == 8


def test_sigterm_during_the_final_save_lets_it_finish(tmp_path):
  caught_outside_the_loop = []
  previous = signal.signal(signal.SIGTERM, lambda *a: caught_outside_the_loop.append(a))
  try:
    final = run_toy(str(tmp_path), sigterm_in_final_close=True)
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert not caught_outside_the_loop  # the loop's handler was still in place
  assert int(final["step"]) == 8
  assert checkpoints.finished_steps(str(tmp_path / "checkpoints")) == [8]


def test_nan_stops_with_step_terms_and_last_good_checkpoint(tmp_path):
  with pytest.raises(reporting.NonFiniteLossError) as error:
    run_toy(str(tmp_path), every=2, nan_at=5)  # checked at steps 2, 4, 6: caught at 6
  message = str(error.value)
  assert "non-finite values at step 6" in message
  assert "last good checkpoint: step 4" in message
  assert "loss=nan" in message and "grad_norm=nan" in message
  assert checkpoints.finished_steps(str(tmp_path / "checkpoints")) == [2, 4]
  restored = checkpoints.restore_latest(str(tmp_path / "checkpoints"), TOY_ABSTRACT)
  assert int(restored["step"]) == 4 and np.isfinite(restored["w"]).all()


def test_sigterm_after_a_nan_writes_no_checkpoint(tmp_path):
  with pytest.raises(reporting.NonFiniteLossError, match="step 5.*last good checkpoint: step 4"):
    run_toy(str(tmp_path), every=2, nan_at=5, sigterm_at=5)  # step 5 is no checking step
  assert checkpoints.finished_steps(str(tmp_path / "checkpoints")) == [2, 4]


def save_toy_checkpoints(directory, steps):
  checkpointer = checkpoints.Checkpointer(directory, every_steps=1, keep=10)
  for step in steps:
    checkpointer.save(step, {"w": jnp.full((4,), float(step)), "step": jnp.array(step)})
  checkpointer.close()


def truncate_data_files(step_dir):
  for path in glob.glob(os.path.join(step_dir, "**", "d", "*"), recursive=True):
    with open(path, "r+b") as f:
      f.truncate(5)


def garble_metadata(step_dir):
  with open(os.path.join(step_dir, "default", "_METADATA"), "w") as f:
    f.write("{garbled")


def delete_item(step_dir):
  shutil.rmtree(os.path.join(step_dir, "default"))


@pytest.mark.parametrize("corrupt", [truncate_data_files, garble_metadata, delete_item])
def test_corrupted_latest_checkpoint_is_skipped_with_a_warning(tmp_path, caplog, corrupt):
  directory = str(tmp_path)
  save_toy_checkpoints(directory, [2, 4])
  corrupt(os.path.join(directory, "4"))
  checkpointer = checkpoints.Checkpointer(directory, every_steps=1, keep=10)
  with caplog.at_level(logging.WARNING):
    state = checkpointer.restore_or_init(lambda: pytest.fail("reinitialised"), TOY_ABSTRACT)
  assert int(state["step"]) == 2
  np.testing.assert_array_equal(state["w"], np.full(4, 2.0))
  assert any(f"checkpoint step 4 in {directory} is unreadable" in r.getMessage()
             for r in caplog.records)
  # The bad step is kept for inspection but out of the way, so this run writes step 4 again.
  assert checkpoints.finished_steps(directory) == [2]
  assert os.path.isdir(os.path.join(directory, "4.unreadable"))
  checkpointer.save(4, {"w": jnp.full((4,), 9.0), "step": jnp.array(4)})
  checkpointer.close()
  assert checkpoints.finished_steps(directory) == [2, 4]


def test_a_reader_skips_a_corrupted_checkpoint_but_moves_nothing(tmp_path):
  directory = str(tmp_path)
  save_toy_checkpoints(directory, [2, 4])
  truncate_data_files(os.path.join(directory, "4"))
  assert int(checkpoints.restore_latest(directory, TOY_ABSTRACT)["step"]) == 2
  assert checkpoints.finished_steps(directory) == [2, 4]


def test_half_written_checkpoint_is_never_picked_up(tmp_path):
  directory = str(tmp_path)
  save_toy_checkpoints(directory, [2, 4])
  half = os.path.join(directory, "6.orbax-checkpoint-tmp-1700000000000000")
  shutil.copytree(os.path.join(directory, "4"), half)
  truncate_data_files(half)
  assert checkpoints.finished_steps(directory) == [2, 4]
  assert int(checkpoints.restore_latest(directory, TOY_ABSTRACT)["step"]) == 4


def test_no_readable_checkpoint_fails_loudly_and_moves_nothing(tmp_path):
  directory = str(tmp_path)
  save_toy_checkpoints(directory, [2, 4])
  for step in (2, 4):
    truncate_data_files(os.path.join(directory, str(step)))
  checkpointer = checkpoints.Checkpointer(directory, every_steps=1, keep=10)
  with pytest.raises(RuntimeError, match=r"no checkpoint in .* is readable \(steps 4, 2\)"):
    checkpointer.restore_or_init(lambda: pytest.fail("reinitialised"), TOY_ABSTRACT)
  assert checkpoints.finished_steps(directory) == [2, 4]


@pytest.mark.parametrize("abstract", [
    {"w": jax.ShapeDtypeStruct((5,), jnp.float32), "step": jax.ShapeDtypeStruct((), jnp.int32)},
    {"v": jax.ShapeDtypeStruct((4,), jnp.float32), "step": jax.ShapeDtypeStruct((), jnp.int32)},
])
def test_checkpoint_of_another_config_is_an_error_not_a_restart(tmp_path, abstract):
  directory = str(tmp_path)
  save_toy_checkpoints(directory, [2, 4])
  checkpointer = checkpoints.Checkpointer(directory, every_steps=1, keep=10)
  with pytest.raises(ValueError, match="checkpoint step 4 .* does not fit this config") as error:
    checkpointer.restore_or_init(lambda: pytest.fail("reinitialised"), abstract)
  assert "\n" not in str(error.value)
  assert checkpoints.finished_steps(directory) == [2, 4]
