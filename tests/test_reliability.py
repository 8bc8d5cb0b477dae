"""Reliability: kill -9 and SIGTERM resume bitwise, corrupted checkpoints, NaN stops, bad input.

The end-to-end tests run the CLI in subprocesses on the tiny config and share one JAX
compilation cache, so only the uninterrupted reference runs compile from scratch.
"""

import glob
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags
from absl.testing import flagsaver

from configs import demo
from fsq_repro import config_lib
from fsq_repro import main as cli
from fsq_repro.data import tokens as tokens_lib
from fsq_repro.train import checkpointing, loop, reporting, stage1, stage2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "--config=configs/demo.py:quantizer=fsq,codebook_bits=6"
# The sizes of tests/tiny_configs.py, plus a tiny Stage II, as command-line overrides.
TINY = {
    "dataset.image_size": 16, "dataset.train_split": "train[:25%]", "quantizer.codebook_dim": 8,
    "model.filters": 8, "model.channel_multipliers": "(1,2)", "model.num_groups": 4,
    "model.disc_max_filters": 8,
    "stage1.batch_size": 8, "stage1.num_train_steps": 8, "stage1.log_every_steps": 1,
    "stage1.image_every_steps": 4, "stage1.checkpoint_every_steps": 2,
    "stage2.batch_size": 8, "stage2.num_train_steps": 6, "stage2.hidden_size": 16,
    "stage2.num_layers": 1, "stage2.num_heads": 2, "stage2.mlp_dim": 32,
    "stage2.warmup_steps": 2, "stage2.log_every_steps": 1, "stage2.checkpoint_every_steps": 2,
}
STEPS = {"stage1": TINY["stage1.num_train_steps"], "stage2": TINY["stage2.num_train_steps"]}


# ---------------------------------------------------------------------------------------------
# Subprocess helpers.


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.pop("XLA_FLAGS", None)
  return env


def start(env, mode, workdir, *extra, program=("-m", "fsq_repro.main")):
  """Starts the CLI on the tiny config; its output goes to workdir/<mode>-<n>.log."""
  os.makedirs(workdir, exist_ok=True)
  log = os.path.join(workdir, f"{mode}-{len(glob.glob(os.path.join(workdir, '*.log')))}.log")
  args = [sys.executable, *program, f"--mode={mode}", CONFIG, f"--workdir={workdir}"]
  args += [f"--config.{k}={v}" for k, v in TINY.items()] + list(extra)
  with open(log, "w") as out:
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
  process.log = log
  return process


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


def output(process) -> str:
  with open(process.log) as f:
    return f.read()


def finish(process, timeout=300) -> str:
  rc = process.wait(timeout=timeout)
  assert rc == 0, output(process)[-3000:]
  return output(process)


def wait_for(condition, process, timeout=300):
  """Polls `condition` until it holds; fails if the process ends first."""
  deadline = time.time() + timeout
  while not condition():
    if process.poll() is not None:
      pytest.fail(f"run ended (rc {process.returncode}) before the awaited moment:\n"
                  + output(process)[-3000:])
    if time.time() > deadline:
      process.kill()
      pytest.fail("timed out waiting for the run")
    time.sleep(0.02)


def kill9(process):
  process.kill()
  assert process.wait() == -signal.SIGKILL


def checkpoint_dir(workdir, mode):
  return os.path.join(workdir, mode, "checkpoints")


def saved_arrays(workdir, mode, step):
  with ocp.StandardCheckpointer() as checkpointer:
    tree = checkpointer.restore(os.path.join(checkpoint_dir(workdir, mode), str(step), "default"))
  return {k: np.asarray(v) for k, v in ocp.tree.to_flat_dict(tree).items()}


def assert_same_final_checkpoint(reference, workdir, mode):
  expected = saved_arrays(reference, mode, STEPS[mode])
  got = saved_arrays(workdir, mode, STEPS[mode])
  assert sorted(got) == sorted(expected)
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key], err_msg="/".join(key))
  assert int(got[("step",)]) == STEPS[mode]


def metrics_lines(workdir, mode) -> int:
  path = os.path.join(workdir, mode, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return len(f.readlines())


@pytest.fixture(scope="module")
def reference(cli_env, tmp_path_factory):
  """A workdir holding uninterrupted Stage I and Stage II runs."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  finish(start(cli_env, "stage1", workdir, program=("-c", STAGE1_THEN_STAGE2)))
  return workdir


# ---------------------------------------------------------------------------------------------
# End to end: kill -9 and SIGTERM, then the same command again.


def test_stage1_survives_kill9_then_sigterm_with_identical_parameters(
    cli_env, reference, tmp_path):
  workdir, checkpoints = str(tmp_path), checkpoint_dir(str(tmp_path), "stage1")
  run = start(cli_env, "stage1", workdir)
  wait_for(lambda: checkpointing.finished_steps(checkpoints), run)
  kill9(run)
  resumed_from = checkpointing.finished_steps(checkpoints)[-1]
  assert resumed_from < STEPS["stage1"]

  lines = metrics_lines(workdir, "stage1")
  run = start(cli_env, "stage1", workdir)
  wait_for(lambda: metrics_lines(workdir, "stage1") > lines, run)  # training again
  run.send_signal(signal.SIGTERM)
  sent = time.time()
  assert run.wait(timeout=120) == checkpointing.PREEMPTED_EXIT_CODE, output(run)[-3000:]
  assert time.time() - sent < 60
  text = output(run)
  assert f"steps {resumed_from} -> {STEPS['stage1']}" in text
  saved = int(text.split("preempted (SIGTERM); saved step ")[1].split(";")[0])
  assert resumed_from < saved < STEPS["stage1"]
  assert checkpointing.finished_steps(checkpoints)[-1] == saved

  text = finish(start(cli_env, "stage1", workdir))
  assert f"steps {saved} -> {STEPS['stage1']}" in text
  assert_same_final_checkpoint(reference, workdir, "stage1")


def test_stage2_survives_kill9_in_extraction_and_in_training(
    cli_env, reference, tmp_path):
  workdir = str(tmp_path)
  token_dir = os.path.join(workdir, "stage2", "tokens")
  checkpoints = checkpoint_dir(workdir, "stage2")
  uses_reference_stage1 = f"--config.stage1_workdir={reference}"

  run = start(cli_env, "stage2", workdir, uses_reference_stage1)
  wait_for(lambda: os.path.exists(tokens_lib.shard_path(token_dir, 0, 0)), run)
  kill9(run)
  assert not tokens_lib.is_complete(token_dir)

  run = start(cli_env, "stage2", workdir, uses_reference_stage1)
  wait_for(lambda: checkpointing.finished_steps(checkpoints), run)
  kill9(run)
  assert tokens_lib.is_complete(token_dir)
  assert "extracted token shard 1/" not in output(run)  # kept from the killed run
  assert checkpointing.finished_steps(checkpoints)[-1] < STEPS["stage2"]

  text = finish(start(cli_env, "stage2", workdir, uses_reference_stage1))
  assert "extracted token shard" not in text
  expected = tokens_lib.load_all(os.path.join(reference, "stage2", "tokens"))
  for got, want in zip(tokens_lib.load_all(token_dir), expected):
    np.testing.assert_array_equal(got, want)
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
  checkpointer = checkpointing.Checkpointer(os.path.join(directory, "checkpoints"),
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
  assert exit_info.value.code == checkpointing.PREEMPTED_EXIT_CODE == 75
  assert signal.getsignal(signal.SIGTERM) == previous_handler
  assert "preempted (SIGTERM); saved step 3" in capsys.readouterr().out
  assert checkpointing.finished_steps(os.path.join(directory, "checkpoints")) == [3]
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
  assert checkpointing.finished_steps(str(tmp_path / "checkpoints")) == [8]


def test_nan_stops_with_step_terms_and_last_good_checkpoint(tmp_path):
  with pytest.raises(reporting.NonFiniteLossError) as error:
    run_toy(str(tmp_path), every=2, nan_at=5)  # checked at steps 2, 4, 6: caught at 6
  message = str(error.value)
  assert "non-finite values at step 6" in message
  assert "last good checkpoint: step 4" in message
  assert "loss=nan" in message and "grad_norm=nan" in message
  assert checkpointing.finished_steps(str(tmp_path / "checkpoints")) == [2, 4]
  restored = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), every_steps=2,
                                        keep=10).restore_or_init(None, TOY_ABSTRACT)
  assert int(restored["step"]) == 4 and np.isfinite(restored["w"]).all()


def test_sigterm_after_a_nan_writes_no_checkpoint(tmp_path):
  with pytest.raises(reporting.NonFiniteLossError, match="step 5.*last good checkpoint: step 4"):
    run_toy(str(tmp_path), every=2, nan_at=5, sigterm_at=5)  # step 5 is no checking step
  assert checkpointing.finished_steps(str(tmp_path / "checkpoints")) == [2, 4]


def save_toy_checkpoints(directory, steps):
  checkpointer = checkpointing.Checkpointer(directory, every_steps=1, keep=10)
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
  checkpointer = checkpointing.Checkpointer(directory, every_steps=1, keep=10)
  with caplog.at_level(logging.WARNING):
    state = checkpointer.restore_or_init(lambda: pytest.fail("reinitialised"), TOY_ABSTRACT)
  assert int(state["step"]) == 2
  np.testing.assert_array_equal(state["w"], np.full(4, 2.0))
  assert any(f"checkpoint step 4 in {directory} is unreadable" in r.getMessage()
             for r in caplog.records)
  # The bad step is kept for inspection but out of the way, so this run writes step 4 again.
  assert checkpointing.finished_steps(directory) == [2]
  assert os.path.isdir(os.path.join(directory, "4.unreadable"))
  checkpointer.save(4, {"w": jnp.full((4,), 9.0), "step": jnp.array(4)})
  checkpointer.close()
  assert checkpointing.finished_steps(directory) == [2, 4]


def test_a_reader_skips_a_corrupted_checkpoint_but_moves_nothing(tmp_path):
  directory = str(tmp_path)
  save_toy_checkpoints(directory, [2, 4])
  truncate_data_files(os.path.join(directory, "4"))
  checkpointer = checkpointing.Checkpointer(directory, every_steps=1, keep=10)
  assert int(checkpointer.restore_or_init(None, TOY_ABSTRACT)["step"]) == 2
  assert checkpointing.finished_steps(directory) == [2, 4]


def test_half_written_checkpoint_is_never_picked_up(tmp_path):
  directory = str(tmp_path)
  save_toy_checkpoints(directory, [2, 4])
  half = os.path.join(directory, "6.orbax-checkpoint-tmp-1700000000000000")
  shutil.copytree(os.path.join(directory, "4"), half)
  truncate_data_files(half)
  assert checkpointing.finished_steps(directory) == [2, 4]
  checkpointer = checkpointing.Checkpointer(directory, every_steps=1, keep=10)
  assert int(checkpointer.restore_or_init(None, TOY_ABSTRACT)["step"]) == 4


def test_no_readable_checkpoint_fails_loudly_and_moves_nothing(tmp_path):
  directory = str(tmp_path)
  save_toy_checkpoints(directory, [2, 4])
  for step in (2, 4):
    truncate_data_files(os.path.join(directory, str(step)))
  checkpointer = checkpointing.Checkpointer(directory, every_steps=1, keep=10)
  with pytest.raises(RuntimeError, match=r"no checkpoint in .* is readable \(steps 4, 2\)"):
    checkpointer.restore_or_init(lambda: pytest.fail("reinitialised"), TOY_ABSTRACT)
  assert checkpointing.finished_steps(directory) == [2, 4]


@pytest.mark.parametrize("abstract", [
    {"w": jax.ShapeDtypeStruct((5,), jnp.float32), "step": jax.ShapeDtypeStruct((), jnp.int32)},
    {"v": jax.ShapeDtypeStruct((4,), jnp.float32), "step": jax.ShapeDtypeStruct((), jnp.int32)},
])
def test_checkpoint_of_another_config_is_an_error_not_a_restart(tmp_path, abstract):
  directory = str(tmp_path)
  save_toy_checkpoints(directory, [2, 4])
  checkpointer = checkpointing.Checkpointer(directory, every_steps=1, keep=10)
  with pytest.raises(ValueError, match="checkpoint step 4 .* does not fit this config") as error:
    checkpointer.restore_or_init(lambda: pytest.fail("reinitialised"), abstract)
  assert "\n" not in str(error.value)
  assert checkpointing.finished_steps(directory) == [2, 4]


# ---------------------------------------------------------------------------------------------
# Bad input: the CLI's main() in this process; one "error: ..." line, and training never starts.


@pytest.fixture
def parsed_flags():
  """The CLI's flags marked as parsed (values are set per test), as they were afterwards."""
  parsed = flags.FLAGS.is_parsed()
  if not parsed:
    flags.FLAGS.mark_as_parsed()
  yield flags.FLAGS
  if not parsed:
    flags.FLAGS.unparse_flags()


@pytest.fixture
def run_main(parsed_flags, monkeypatch, capsys):
  """Runs cli.main on a config object: (exit code, stderr). Training must not start."""
  del parsed_flags
  for trainer in (stage1, stage2):
    monkeypatch.setattr(trainer, "train_and_evaluate",
                        lambda *a: pytest.fail("reached training despite bad input"))

  def run(config, mode, workdir, allow_config_change=False):
    with flagsaver.flagsaver(config=config, mode=mode, workdir=str(workdir),
                             allow_config_change=allow_config_change):
      try:
        cli.main([])
        code = 0
      except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err

  return run


def single_error_line(stderr: str) -> str:
  errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, stderr
  return errors[0]


def fake_stage1_run(workdir, arg):
  """A finished-looking Stage I run of `arg` (its config and an empty checkpoint step)."""
  directory = stage1.stage_dir(str(workdir))
  os.makedirs(os.path.join(directory, "checkpoints", "8"))
  config_lib.write_run_config(directory, demo.get_config(arg))


def with_levels(levels):
  config = demo.get_config("quantizer=fsq")
  config.quantizer.levels = levels
  return config


def with_dataset(name, data_dir=None):
  config = demo.get_config()
  config.dataset.name = name
  config.dataset.data_dir = data_dir
  return config


@pytest.mark.parametrize("make_config,message", [
    (lambda tmp: with_levels((8, 1, 5)), "every level must be an integer >= 2"),
    (lambda tmp: with_levels((2,) * 31 + (3,)), "the product must"),
    (lambda tmp: with_dataset("no_such_dataset"), "dataset_name='no_such_dataset' is not"),
    (lambda tmp: with_dataset("imagenet2012", str(tmp / "tfds")),
     "download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org"),
    (lambda tmp: with_dataset(f"image_folder:{tmp / 'nowhere'}"), "is not a directory"),
], ids=["level_below_2", "codebook_too_large", "unknown_dataset", "manual_download",
        "missing_image_folder"])
def test_bad_stage1_config_fails_in_one_line(run_main, tmp_path, make_config, message):
  code, stderr = run_main(make_config(tmp_path), "stage1", tmp_path / "run")
  assert code == 2
  assert message in single_error_line(stderr)
  assert not os.path.exists(tmp_path / "run" / "stage1")


def test_batch_not_divisible_by_devices_fails_in_one_line(run_main, tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "device_count", lambda: 2)
  config = demo.get_config()
  config.stage1.batch_size = 7
  code, stderr = run_main(config, "stage1", tmp_path)
  assert code == 2
  assert "stage1.batch_size=7 is not divisible by the 2 devices" in single_error_line(stderr)


def test_stage2_without_stage1_checkpoint_fails_in_one_line(run_main, tmp_path):
  code, stderr = run_main(demo.get_config(), "stage2", tmp_path)
  assert code == 2
  assert "no Stage I checkpoint in" in single_error_line(stderr)


def test_stage2_quantizer_differing_from_stage1_fails_in_one_line(run_main, tmp_path):
  fake_stage1_run(tmp_path, "quantizer=vq,codebook_bits=8")
  code, stderr = run_main(demo.get_config("quantizer=vq,codebook_bits=10"), "stage2", tmp_path)
  assert code == 2
  line = single_error_line(stderr)
  assert "quantizer.codebook_size=1024 does not match the Stage I run" in line and "(256)" in line


def test_workdir_of_another_config_is_refused_unless_allowed(run_main, tmp_path, monkeypatch):
  fake_stage1_run(tmp_path, "quantizer=fsq,codebook_bits=8")
  config = demo.get_config("quantizer=fsq,codebook_bits=10")
  code, stderr = run_main(config, "stage1", tmp_path)
  assert code == 2
  line = single_error_line(stderr)
  assert "holds a stage1 run with a different config" in line and "--allow_config_change" in line
  started = []
  monkeypatch.setattr(stage1, "train_and_evaluate", lambda *a: started.append(a))
  code, stderr = run_main(config, "stage1", tmp_path, allow_config_change=True)
  assert code == 0 and len(started) == 1 and "error:" not in stderr


@pytest.mark.usefixtures("parsed_flags")
def test_unreadable_image_in_image_folder_is_skipped_and_counted(tmp_path, caplog):
  import PIL.Image  # pylint: disable=g-import-not-at-top
  for name in ("a", "b"):
    os.makedirs(tmp_path / "photos" / name)
    PIL.Image.new("RGB", (20, 20), (9, 9, 9)).save(tmp_path / "photos" / name / "ok.png")
  (tmp_path / "photos" / "b" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
  config = with_dataset(f"image_folder:{tmp_path / 'photos'}", str(tmp_path / "tfds"))
  with flagsaver.flagsaver(allow_config_change=False), caplog.at_level(logging.WARNING):
    cli.preflight(config, "stage1", str(tmp_path / "run"))
  messages = [r.getMessage() for r in caplog.records if "skipped 1 of 3" in r.getMessage()]
  assert len(messages) == 1 and "b/truncated.jpg" in messages[0]
  assert "\n" not in messages[0]


def test_unknown_config_field_fails_in_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "fsq_repro.main", "--mode=stage1", CONFIG,
       f"--workdir={tmp_path}", "--config.stage1.no_such_field=1"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert "no_such_field" in single_error_line(result.stderr)
  assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_chaos_script_survives_one_trial_of_every_scenario(tmp_path):
  result = subprocess.run([sys.executable, "scripts/chaos.py", "--trials=1",
                           f"--workdir={tmp_path / 'chaos'}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=3600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  for scenario in ("stage1-kill9", "stage1-sigterm", "extraction-kill9", "stage2-kill9",
                   "stage2-sigterm"):
    assert f"{scenario:<18} 1/1" in result.stdout
