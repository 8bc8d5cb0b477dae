"""fsq_repro.api over a run directory written here: random weights saved the way the trainers
save them (the fields api reads of Stage1State and Stage2State), loaded back by name."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsq_repro import api, checkpoints
from fsq_repro import workdir as workdir_lib
from fsq_repro.models import factory
from fsq_repro.models import transformer as transformer_lib
from tiny_configs import tiny_pipeline_config

LAYOUT = {"codebook_size": 64, "num_classes": 8}


def random_tree(abstract, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: (rng.normal(size=a.shape) * 0.3).astype(a.dtype), abstract)


def save(workdir, stage, config, state, **run_info):
  checkpointer = checkpoints.Checkpointer(workdir_lib.checkpoint_dir(workdir, stage),
                                          every_steps=1, keep=1)
  checkpointer.save(int(state["step"]), state, force=True)
  checkpointer.close()
  workdir_lib.write_run_config(workdir_lib.stage_dir(workdir, stage), config, **run_info)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(workdir, config, tokenizer variables, transformer params) of a saved random run."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_pipeline_config("quantizer=fsq,codebook_bits=6")
  key = jax.random.key(0, impl="rbg")
  tokenizer = factory.build_tokenizer(config)
  images = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  variables = random_tree(jax.eval_shape(
      functools.partial(tokenizer.init, train=False), key, images), 1)
  # A Stage I state also holds what inference does not read; api must skip it.
  save(workdir, "stage1", config, {"step": np.int32(7), "ema_params": variables["params"],
                                   "g_params": random_tree(variables["params"], 2)})
  layout = transformer_lib.TokenLayout(**LAYOUT)
  model = factory.build_transformer(config, layout)
  ids = jax.ShapeDtypeStruct((1, 65), jnp.int32)
  params = random_tree(jax.eval_shape(functools.partial(model.init, train=False), key,
                                      ids)["params"], 3)
  save(workdir, "stage2", config, {"step": np.int32(5), "params": params},
       token_layout=LAYOUT)
  return workdir, config, variables, params


def test_tokenizer_loads_the_ema_parameters_and_codes_images(run):
  workdir, config, variables, _ = run
  tokenizer = api.Tokenizer.from_workdir(workdir)  # with the config the run saved
  for a, b in zip(jax.tree.leaves(tokenizer.variables["params"]),
                  jax.tree.leaves(variables["params"])):
    np.testing.assert_array_equal(a, b)
  images = np.random.default_rng(4).random((3, 16, 16, 3), np.float32)
  codes = tokenizer.encode(images)
  assert codes.shape == (3, 8, 8) and codes.dtype == jnp.int32
  assert 0 <= int(codes.min()) and int(codes.max()) < tokenizer.codebook_size == 64
  decoded = tokenizer.decode(codes)
  assert decoded.shape == (3, 16, 16, 3) and decoded.dtype == jnp.float32
  # One forward pass gives the same codes and, but for straight-through round-off, images.
  reconstructions, quantized = tokenizer.reconstruct(images)
  np.testing.assert_array_equal(quantized.indices, codes)
  np.testing.assert_allclose(reconstructions, decoded, atol=1e-5)
  assert tokenizer.config.quantizer.kind == config.quantizer.kind


def test_generator_logits_and_samples(run):
  workdir, _, _, params = run
  generator = api.Generator.from_workdir(workdir)
  assert generator.mask_id == 64 + 8 and generator.grid == (8, 8)
  tokens = np.random.default_rng(5).integers(0, 64, (2, 64))
  tokens[:, ::3] = generator.mask_id
  labels = np.array([1, 6])
  logits = generator.logits(tokens, labels)
  assert logits.shape == (2, 64, 64) and logits.dtype == jnp.float32  # image codes only
  # The image positions of the model's output over [class token, image tokens].
  ids = np.concatenate([labels[:, None] + 64, tokens], axis=1)
  full = generator.model.apply({"params": params}, jnp.asarray(ids, jnp.int32), train=False)
  np.testing.assert_allclose(logits, full[:, 1:, :64], rtol=1e-6, atol=1e-6)
  assert not np.allclose(generator.logits(tokens, labels[::-1]), logits)  # labels matter

  samples = generator.sample(labels, cfg=0.0, seed=0)
  assert samples.shape == (2, 16, 16, 3) and samples.dtype == jnp.float32
  np.testing.assert_array_equal(generator.sample(labels, cfg=0.0, seed=0), samples)
  assert not np.array_equal(generator.sample(labels, cfg=0.0, seed=1), samples)
  guided = generator.sample(labels, cfg=0.5, seed=0)
  assert guided.shape == samples.shape and np.all(np.isfinite(guided))


def test_a_run_without_a_saved_config_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json is missing"):
    api.Tokenizer.from_workdir(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="run --mode=stage2 first"):
    api.Generator.from_workdir(str(tmp_path))
