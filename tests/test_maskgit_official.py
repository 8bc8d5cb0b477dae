"""Official MaskGIT checkpoints -> a run directory -> fsq_repro.api, against a transcription.

Small networks of the official architecture (tests/official_maskgit.py, written from reading
google-research/maskgit) are initialised at random, serialised as the official files are
(`flax.serialization.to_bytes` of the variables), converted with
`scripts/convert_weights.py maskgit`, and loaded back through `fsq_repro.api`: the tokens must
be equal and the images and logits equal to 1e-5.
"""

import os
import shutil
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import official_maskgit
from fsq_repro import api
from fsq_repro.converters import maskgit as maskgit_converter
from scripts import convert_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODEBOOK, CLASSES, SIZE = 16, 8, 16  # 8 x 8 tokens of a 16 px image
# The official architecture, small: widths of 32 and 64 keep GroupNorm's 32 groups.
TOKENIZER = dict(filters=32, num_res_blocks=1, channel_multipliers=(1, 2), embedding_dim=8,
                 codebook_size=CODEBOOK)
TRANSFORMER = dict(vocab_size=CODEBOOK + CLASSES + 1, hidden_size=16, num_hidden_layers=2,
                   num_attention_heads=2, intermediate_size=32, max_position_embeddings=65)
CONFIG = f"""
from configs import maskgit_official

def get_config(arg=None):
  c = maskgit_official.get_config()  # the official recipe, shrunk to the networks above
  c.dataset.name, c.dataset.image_size = "fsq_photo_crops", {SIZE}
  c.quantizer.codebook_size, c.quantizer.codebook_dim = {CODEBOOK}, 8
  c.model.filters, c.model.channel_multipliers, c.model.num_res_blocks = 32, (1, 2), 1
  c.model.disc_max_filters = 8
  s = c.stage2
  s.hidden_size, s.num_layers, s.num_heads, s.mlp_dim = 16, 2, 2, 32
  c.sample.num_images, c.sample.batch_size = 16, 16
  c.eval.num_images, c.eval.batch_size, c.eval.num_sample_images = 64, 32, 32
  c.eval.num_reference_images, c.eval.compression_num_images = 64, 32
  c.eval.range_coding_images = 2
  return c
"""


def images(seed, batch=4):
  return np.random.default_rng(seed).random((batch, SIZE, SIZE, 3), np.float32)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
  """(tokenizer module, its variables, transformer module, its variables, converted workdir)."""
  root = tmp_path_factory.mktemp("official")
  key = jax.random.key(0, impl="rbg")
  tokenizer = official_maskgit.VQVAE(**TOKENIZER)
  tokenizer_variables = jax.jit(tokenizer.init)(key, images(0, 1))
  transformer = official_maskgit.Transformer(**TRANSFORMER)
  transformer_variables = jax.jit(transformer.init)(
      jax.random.fold_in(key, 1), jnp.zeros((1, 65), jnp.int32))
  # Non-trivial norms and biases (their initialisers give ones and zeros).
  rng = np.random.default_rng(1)
  perturb = lambda tree: jax.tree.map(
      lambda x: np.asarray(x) + rng.normal(0, 0.1, x.shape).astype(np.float32), tree)
  tokenizer_variables, transformer_variables = (perturb(tokenizer_variables),
                                                perturb(transformer_variables))
  paths = {}
  for name, variables in (("tokenizer", tokenizer_variables),
                          ("transformer", transformer_variables)):
    paths[name] = root / f"{name}_checkpoint"
    paths[name].write_bytes(flax.serialization.to_bytes(variables))
  config_path = root / "tiny_official.py"
  config_path.write_text(CONFIG)
  workdir = root / "converted"
  assert convert_weights.main(["maskgit", f"--tokenizer={paths['tokenizer']}",
                               f"--transformer={paths['transformer']}",
                               f"--config={config_path}", f"--out={workdir}"]) == 0
  return tokenizer, tokenizer_variables, transformer, transformer_variables, str(workdir), \
      str(config_path)


def test_official_tokenizer_gives_the_same_tokens_and_images(official):
  tokenizer, variables, _, _, workdir, _ = official
  ours = api.Tokenizer.from_workdir(workdir)
  x = images(2, batch=6)
  official_ids = tokenizer.apply(variables, x, method="encode_to_indices")
  ids = ours.encode(x)
  np.testing.assert_array_equal(ids, official_ids)
  assert len(np.unique(np.asarray(ids))) > 4  # the comparison is not of constant maps
  np.testing.assert_allclose(ours.decode(ids),
                             tokenizer.apply(variables, official_ids, method="decode_from_indices"),
                             atol=1e-5, rtol=1e-5)
  reconstructions, _ = ours.reconstruct(x)
  np.testing.assert_allclose(reconstructions, tokenizer.apply(variables, x, method="reconstruct"),
                             atol=1e-5, rtol=1e-5)


def test_official_transformer_gives_the_same_logits(official):
  _, _, transformer, variables, workdir, _ = official
  generator = api.Generator.from_workdir(workdir)
  assert generator.layout.num_classes == CLASSES and generator.mask_id == CODEBOOK + CLASSES
  rng = np.random.default_rng(3)
  tokens = rng.integers(0, CODEBOOK, (3, 64))
  tokens[rng.random((3, 64)) < 0.5] = -1  # the official mask token...
  labels = np.array([0, 5, 7])
  official_input = np.concatenate([labels[:, None] + CODEBOOK, tokens], axis=1)
  official_logits = transformer.apply(variables, official_input)
  ours = np.where(tokens < 0, generator.mask_id, tokens)  # ... is our mask id, vocab - 1
  np.testing.assert_allclose(generator.logits(ours, labels),
                             official_logits[:, 1:, :CODEBOOK], atol=1e-5, rtol=1e-5)


def test_the_official_checkpoint_size_picks_the_official_config():
  def fake(positions):
    embedding = {"embedding": np.zeros((2025, 4))}
    layer = {"Attention_0": {"self_attention": {"query": {"kernel": np.zeros((4, 2, 2))}}},
             "Mlp_0": {"intermediate_output": {"kernel": np.zeros((4, 8))}}}
    return {"params": {"Embed_0": {"word_embeddings": embedding,
                                   "position_embeddings": {"embedding": np.zeros((positions, 4))}},
                       "TransformerLayer_0": layer}}
  assert maskgit_converter.transformer_sizes(fake(257))["positions"] == 257
  assert convert_weights.official_config_spec(fake(257)).endswith(
      "maskgit_official.py:image_size=256")
  assert convert_weights.official_config_spec(fake(1025)).endswith(
      "maskgit_official.py:image_size=512")


def test_a_checkpoint_of_another_architecture_is_refused_in_one_line(official, tmp_path, capsys):
  _, tokenizer_variables, _, transformer_variables, _, config_path = official
  paths = {}
  for name, variables in (("tokenizer", tokenizer_variables),
                          ("transformer", transformer_variables)):
    paths[name] = tmp_path / name
    paths[name].write_bytes(flax.serialization.to_bytes(variables))
  with pytest.raises(SystemExit):
    convert_weights.main(["maskgit", f"--tokenizer={paths['transformer']}",
                          f"--transformer={paths['transformer']}", f"--config={config_path}",
                          f"--out={tmp_path / 'out'}"])
  assert "the official checkpoint has no 'encoder'" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    convert_weights.main(["maskgit", f"--tokenizer={paths['tokenizer']}",
                          f"--transformer={paths['transformer']}",
                          f"--config={os.path.join(ROOT, 'configs', 'maskgit_official.py')}",
                          f"--out={tmp_path / 'out'}"])
  assert "the official encoder has 3 ResBlocks" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "out")


@pytest.mark.slow  # four CLI processes
def test_sample_eval_and_fine_tuning_run_on_the_converted_workdir(official, tmp_path):
  *_, workdir, config_path = official
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([ROOT, os.path.dirname(config_path)]))

  def main(mode, run_dir, *flags):
    run = subprocess.run([sys.executable, "-m", "fsq_repro.main", f"--mode={mode}",
                          f"--config={config_path}", f"--workdir={run_dir}", *flags], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout + run.stderr

  for mode in ("sample", "eval"):
    main(mode, workdir)
  assert os.path.exists(os.path.join(workdir, "samples", "cfg_0", "samples.npz"))
  assert os.path.exists(os.path.join(workdir, "results.json"))
  # Fine-tuning, as the README says: the official tokenizer, Stage II from its parameters.
  fine_tuned = tmp_path / "fine_tuned"
  shutil.copytree(os.path.join(workdir, "stage1"), fine_tuned / "stage1")
  log = main("stage2", fine_tuned, f"--config.stage2.init_from={workdir}",
             "--config.stage2.num_train_steps=2", "--config.stage2.batch_size=4",
             "--config.stage2.warmup_steps=0")
  assert f"parameters of {workdir}" in log
  start = api.Generator.from_workdir(workdir).params
  tuned = api.Generator.from_workdir(str(fine_tuned)).params
  difference = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - b))), start, tuned)
  assert 0 < max(jax.tree.leaves(difference)) < 0.01  # two small steps away from the start
