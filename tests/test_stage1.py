"""Stage I training: learning, device-count invariance, exact resume, clear config errors."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from fsq_repro import api
from fsq_repro.train import stage1

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_metrics(workdir):
  with open(os.path.join(workdir, "stage1", "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow  # 40 steps of training for each quantizer
@pytest.mark.parametrize("arg", ["quantizer=fsq,codebook_bits=6", "quantizer=vq,codebook_bits=6"])
def test_training_reduces_reconstruction_loss(tiny_config, tmp_path, arg):
  config = tiny_config(arg)
  config.stage1.generator_weight = 0.0  # reconstruction alone (the GAN step is tested below)
  config.stage1.num_train_steps = 40
  config.stage1.learning_rate = 2e-3
  config.stage1.checkpoint_every_steps = 40
  config.stage1.image_every_steps = 40
  stage1.train_and_evaluate(config, str(tmp_path))
  losses = [m["reconstruction_loss"] for m in read_metrics(tmp_path)]
  assert len(losses) == 40
  assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
  assert os.listdir(tmp_path / "stage1" / "checkpoints") == ["40"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "stage1"))
  saved = json.load(open(tmp_path / "stage1" / "config.json"))
  assert saved["perceptual_loss"].startswith("perceptual loss: off")
  assert saved["config"]["quantizer"]["kind"] == config.quantizer.kind


@pytest.mark.slow  # three Stage I runs (100 s here); the checkpointer's units are in make test
def test_resume_continues_the_same_trajectory_and_says_so(tiny_config, tmp_path, capsys):
  config = tiny_config()
  # Without the GAN (a third of the compile time); test_reliability resumes the GAN's state.
  config.stage1.generator_weight = 0.0
  config.stage1.num_train_steps = 4
  config.stage1.checkpoint_every_steps = 2
  straight = stage1.train_and_evaluate(config, str(tmp_path / "straight"))
  config.stage1.num_train_steps = 2
  stage1.train_and_evaluate(config, str(tmp_path / "resumed"))
  config.stage1.num_train_steps = 4
  capsys.readouterr()
  resumed = stage1.train_and_evaluate(config, str(tmp_path / "resumed"))
  first_line = capsys.readouterr().out.splitlines()[0]
  checkpoint = tmp_path / "resumed" / "stage1" / "checkpoints" / "2"
  assert first_line == f"stage1: resumed from step 2: {checkpoint}"
  # What the trainer saved is what inference loads: the EMA parameters.
  tokenizer = api.Tokenizer.from_workdir(str(tmp_path / "resumed"))
  for a, b in zip(jax.tree.leaves(tokenizer.variables["params"]),
                  jax.tree.leaves(resumed.ema_params)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  straight_losses = [m["generator_loss"] for m in read_metrics(tmp_path / "straight")]
  resumed_losses = [m["generator_loss"] for m in read_metrics(tmp_path / "resumed")]
  assert straight_losses == resumed_losses


EIGHT_DEVICE_RUN = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_num_cpu_devices", int(sys.argv[2]))
    sys.path[:0] = [sys.argv[3], sys.argv[3] + "/tests"]
    from tiny_configs import tiny_config
    from fsq_repro.train import stage1
    config = tiny_config("quantizer=vq,codebook_bits=6")
    assert jax.device_count() == int(sys.argv[2])
    stage1.train_and_evaluate(config, sys.argv[1])
""")


@pytest.mark.slow  # two fresh processes (side by side: each compiles on its own core)
def test_eight_devices_match_one_device(tmp_path):
  runs = [subprocess.Popen([sys.executable, "-c", EIGHT_DEVICE_RUN, str(tmp_path / str(devices)),
                            str(devices), ROOT], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True) for devices in (1, 8)]
  for run in runs:
    _, stderr = run.communicate(timeout=900)
    assert run.returncode == 0, stderr[-3000:]
  one, eight = read_metrics(tmp_path / "1"), read_metrics(tmp_path / "8")
  assert len(one) == len(eight) == 6
  for a, b in zip(one, eight):
    for key in ("generator_loss", "discriminator_loss", "reconstruction_loss", "quantizer_loss"):
      # Sharded reductions sum in a different order: float32 round-off only.
      np.testing.assert_allclose(a[key], b[key], rtol=2e-4, err_msg=key)
