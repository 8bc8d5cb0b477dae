"""UViM's Stage II task model: teacher forcing is causal, KV-cached sampling is the same
decoding as recomputing the whole prefix, codes and tokens map one to one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsq_repro import uvim_sampling
from fsq_repro.models import uvim_task


def tiny_model():
  return uvim_task.TaskModel(codebook_size=11, image_size=16, patch_size=4, seq_len=6,
                             width=16, mlp_dim=32, num_heads=2, encoder_layers=1,
                             decoder_layers=2)


def random_logits_head(params, rng):
  """LogitsDense is zero-initialised (uniform predictions); give it weights to test with."""
  head = params["decoder"]["LogitsDense"]
  return {**params, "decoder": {**params["decoder"], "LogitsDense": {
      **head, "kernel": jax.random.normal(rng, head["kernel"].shape)}}}


@pytest.fixture(scope="module")
def model_and_params():
  model = tiny_model()
  image = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
  tokens = jnp.ones((2, 6), jnp.int32)
  params = model.init(jax.random.key(1), image, tokens)["params"]
  return model, random_logits_head(params, jax.random.key(2)), image


def test_codes_and_tokens_map_one_to_one_and_zero_starts():
  codes = jnp.asarray([[0, 5, 10]])
  np.testing.assert_array_equal(uvim_task.codes_to_tokens(codes), [[1, 6, 11]])
  np.testing.assert_array_equal(uvim_task.tokens_to_codes(uvim_task.codes_to_tokens(codes)),
                                codes)
  np.testing.assert_array_equal(uvim_task.shift_right(jnp.asarray([[3, 4, 5]])), [[0, 3, 4]])


def test_teacher_forced_logits_depend_only_on_earlier_tokens(model_and_params):
  model, params, image = model_and_params
  a = jnp.asarray([[1, 2, 3, 4, 5, 6]] * 2)
  b = a.at[:, 3].set(9)
  la, lb = (np.asarray(model.apply({"params": params}, image, t)) for t in (a, b))
  assert la.shape == (2, 6, 12)
  np.testing.assert_allclose(la[:, :4], lb[:, :4], rtol=1e-5, atol=1e-6)  # position 3 sees 0..2
  assert not np.allclose(la[:, 4:], lb[:, 4:])


def test_cached_greedy_sampling_equals_recomputing_the_prefix(model_and_params):
  model, params, image = model_and_params
  codes = jax.jit(lambda p, x, r: uvim_sampling.sample_codes(model, p, x, r, temperature=1e-7))(
      params, image, jax.random.key(3))
  assert codes.shape == (2, 6) and codes.dtype == jnp.int32
  tokens = np.zeros((2, 6), np.int32)
  for t in range(6):  # greedy decoding without a cache: the whole prefix every step
    logits = np.array(model.apply({"params": params}, image, jnp.asarray(tokens)))[:, t]
    logits[:, 0] = -np.inf
    tokens[:, t] = logits.argmax(axis=-1)
  np.testing.assert_array_equal(codes, tokens - 1)


def test_sampling_at_temperature_one_draws_and_never_the_start_token(model_and_params):
  model, params, image = model_and_params
  draws = [np.asarray(uvim_sampling.sample_codes(model, params, image, jax.random.key(s),
                                                 temperature=1.0)) for s in range(3)]
  assert not all(np.array_equal(draws[0], d) for d in draws[1:])
  assert all(((d >= 0) & (d < 11)).all() for d in draws)
  with pytest.raises(ValueError, match="temperature"):
    uvim_sampling.sample_codes(model, params, image, jax.random.key(0), temperature=0.0)


def write_augreg_npz(path, params, old_grid):
  """A ViT checkpoint in the AugReg file layout (pre-Linen names, CLS in the posemb) whose
  encoder is `params`' and whose position grid is old_grid x old_grid."""
  renamed = {"LayerNorm_0": "LayerNorm_0", "LayerNorm_1": "LayerNorm_2",
             "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
             "MlpBlock_0": "MlpBlock_3"}
  flat = {}
  for name, block in params["encoder"].items():
    for child, leaves in block.items():
      prefix = f"Transformer/{name}/{renamed.get(child, child)}" if name != "encoder_norm" \
          else f"Transformer/{name}"
      for path_, leaf in jax.tree_util.tree_flatten_with_path(
          leaves if name != "encoder_norm" else {child: leaves})[0]:
        flat[prefix + "/" + "/".join(p.key for p in path_)] = np.asarray(leaf)
  width = params["pos_embedding_encoder"].shape[-1]
  rng = np.random.default_rng(0)
  posemb = rng.normal(size=(1, old_grid * old_grid + 1, width)).astype(np.float32)
  flat["Transformer/posembed_input/pos_embedding"] = posemb
  flat["embedding/kernel"] = np.asarray(params["EmbedPatches"]["kernel"])
  flat["embedding/bias"] = np.asarray(params["EmbedPatches"]["bias"])
  flat["cls"] = np.zeros((1, 1, width), np.float32)
  flat["head/kernel"] = np.zeros((width, 21843), np.float32)
  np.savez(path, **flat)
  return posemb


def test_augreg_vit_checkpoint_loads_into_the_task_encoder(tmp_path, model_and_params):
  from fsq_repro.converters import big_vision_vit
  model, params, image = model_and_params  # a 4 x 4 patch grid
  fresh = model.init(jax.random.key(9), image, jnp.ones((2, 6), jnp.int32))["params"]
  path = str(tmp_path / "vit.npz")
  posemb = write_augreg_npz(path, params, old_grid=4)
  loaded = big_vision_vit.load_task_encoder(fresh, path, grid=4)
  np.testing.assert_array_equal(loaded["pos_embedding_encoder"], posemb[:, 1:])  # CLS dropped
  with_posemb = {**params, "pos_embedding_encoder": jnp.asarray(posemb[:, 1:])}
  np.testing.assert_allclose(model.apply({"params": loaded}, image, method=model.encode),
                             model.apply({"params": with_posemb}, image, method=model.encode),
                             rtol=1e-6)
  np.testing.assert_array_equal(loaded["decoder"]["LogitsDense"]["kernel"],
                                fresh["decoder"]["LogitsDense"]["kernel"])  # decoder untouched
  # A 2 x 2 grid (+ CLS) is resampled linearly to 4 x 4, as big_vision's resample_posemb.
  small = write_augreg_npz(path, params, old_grid=2)
  resampled = big_vision_vit.load_task_encoder(fresh, path, grid=4)["pos_embedding_encoder"]
  grid = small[0, 1:].reshape(2, 2, -1)
  np.testing.assert_allclose(resampled[0].reshape(4, 4, -1)[[0, 0, 3, 3], [0, 3, 0, 3]],
                             grid[[0, 0, 1, 1], [0, 1, 0, 1]], rtol=1e-6)  # corners kept
  wider = uvim_task.TaskModel(codebook_size=11, image_size=16, patch_size=4, seq_len=6,
                              width=32, mlp_dim=32, num_heads=2, encoder_layers=1,
                              decoder_layers=1)
  other = wider.init(jax.random.key(0), image, jnp.ones((2, 6), jnp.int32))["params"]
  with pytest.raises(ValueError, match="shape"):
    big_vision_vit.load_task_encoder(other, path, grid=4)
