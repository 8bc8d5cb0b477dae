"""UViM's stages under the MaskGIT stages' guarantees, through the CLI (slow).

kill -9 at a checkpoint and SIGTERM in training, then the same command: the final
checkpoint is bitwise that of an uninterrupted run (UViM's VQ dictionary and its splitting
included); SIGTERM exits 75 having saved the current step. Two local processes (gloo) log
the same losses, end in the same states and evaluate to the same numbers as one process.
"""

import json
import os
import signal
import textwrap
import time

import numpy as np
import pytest

from fsq_repro import checkpoints
from scripts import chaos
from test_multihost import (assert_trees_close, environment, final_state, read_metrics,
                            run_one_process, run_two_processes)

CONFIG = textwrap.dedent("""
    from tiny_configs import tiny_uvim_config

    def get_config(arg=None):
      c = tiny_uvim_config(arg or "quantizer=vq")
      c.dataset.train_split = "train[:25%]"
      for s in (c.stage1, c.stage2):
        s.num_train_steps, s.log_every_steps, s.checkpoint_every_steps = 8, 1, 2
      c.quantizer.momentum = 0.5  # UViM's VQ splits codes within these 8 steps
      return c
""")
STEPS = 8


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
  path = tmp_path_factory.mktemp("uvim_config") / "tiny_uvim.py"
  path.write_text(CONFIG)
  return path


def start(config_path, mode, workdir, *extra) -> chaos.Run:
  return chaos.Run(mode, str(workdir), environment(1), extra, config=f"--config={config_path}",
                   overrides={})


def finish(run: chaos.Run) -> str:
  assert run.wait(timeout=600) == 0, run.output()[-3000:]
  return run.output()


@pytest.fixture(scope="module")
def reference(config_path, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uvim_reference")
  for mode in ("stage1", "stage2"):
    finish(start(config_path, mode, workdir))
  return str(workdir)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stage1", "stage2"])
def test_uvim_stage_survives_kill9_then_sigterm_bitwise(config_path, reference, tmp_path, mode):
  workdir = str(tmp_path)
  extra = (f"--config.stage1_workdir={reference}",) if mode == "stage2" else ()
  run = start(config_path, mode, workdir, *extra)
  assert run.wait_until(lambda: chaos.checkpoint_steps(workdir, mode)), run.output()[-3000:]
  run.process.kill()
  assert run.wait() == -signal.SIGKILL
  resumed = chaos.checkpoint_steps(workdir, mode)[-1]
  assert resumed < STEPS

  lines = chaos.metrics_lines(workdir, mode)
  run = start(config_path, mode, workdir, *extra)
  assert run.wait_until(lambda: chaos.metrics_lines(workdir, mode) > lines), run.output()[-3000:]
  run.process.send_signal(signal.SIGTERM)
  sent = time.time()
  rc = run.wait(timeout=120)
  text = run.output()
  if rc == 0:  # the signal reached the last step, which finishes instead
    assert chaos.checkpoint_steps(workdir, mode)[-1] == STEPS
  else:
    assert rc == checkpoints.PREEMPTED_EXIT_CODE and time.time() - sent < 60, text[-3000:]
    saved = int(text.split("preempted (SIGTERM); saved step ")[1].split(";")[0])
    assert resumed < saved < STEPS and chaos.checkpoint_steps(workdir, mode)[-1] == saved
    assert f"steps {saved} -> {STEPS}" in finish(start(config_path, mode, workdir, *extra))
  assert f"{mode}: resumed from step {resumed}" in text
  assert chaos.differences(reference, workdir, mode) is None


@pytest.mark.slow
def test_two_uvim_processes_train_and_evaluate_like_one(config_path, tmp_path):
  two, one = tmp_path / "two", tmp_path / "one"
  for mode in ("stage1", "stage2", "eval"):
    run_two_processes(mode, config_path, two)
    run_one_process(mode, config_path, one)
  for stage in ("stage1", "stage2"):
    logged_two, logged_one = read_metrics(two, stage), read_metrics(one, stage)
    assert [m["step"] for m in logged_two] == list(range(1, STEPS + 1))
    for a, b in zip(logged_two, logged_one):
      for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=f"{stage} {key}")
    assert_trees_close(final_state(two, stage), final_state(one, stage), stage)
  results = [json.load(open(os.path.join(w, "results.json"))) for w in (two, one)]
  assert results[0]["num_eval_images"] == results[1]["num_eval_images"] == 896
  assert results[0]["codes_used"] == results[1]["codes_used"]
  for key in ("psnr", "oracle_psnr", "baseline_psnr", "fid", "oracle_fid", "usage"):
    np.testing.assert_allclose(results[0][key], results[1][key], rtol=1e-4, err_msg=key)
