"""Tests of the MaskGIT transformer, its token layout and the Stage II training pieces."""

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flax.linen as nn

from fsq_repro.models import transformer
from fsq_repro.models.transformer import (MaskGITTransformer, SelfAttention, TokenLayout,
                                         image_logits)
from fsq_repro.train import masking

LAYOUT = TokenLayout(codebook_size=8, num_classes=3)
NUM_TOKENS = 4
# One tiny config shared by the model tests, so XLA compiles it once (slow, busy CI cores).
MODEL = MaskGITTransformer(vocab_size=LAYOUT.vocab_size, hidden_size=16, num_layers=1,
                           num_heads=2, mlp_dim=32, max_len=NUM_TOKENS + 1,
                           dropout_rate=0.1, attention_dropout_rate=0.1)
BATCH = 3


def random_ids(seed, length=NUM_TOKENS + 1):
  return jax.random.randint(jax.random.key(seed), (BATCH, length), 0, LAYOUT.vocab_size)


@functools.cache
def tiny_params():
  init = jax.jit(functools.partial(MODEL.init, train=False))
  return init(jax.random.key(1), random_ids(0))


@jax.jit
def apply_eval(params, ids):
  return MODEL.apply(params, ids, train=False)


# --- token layout -------------------------------------------------------------------------


def test_token_layout_ids():
  assert LAYOUT.mask_id == 11 and LAYOUT.vocab_size == 12
  np.testing.assert_array_equal(LAYOUT.class_token(jnp.array([0, 2])), [8, 10])
  ids = LAYOUT.build_input(jnp.array([[1, 2, 3, 4], [5, 6, 7, 11]]), jnp.array([0, 2]))
  np.testing.assert_array_equal(ids, [[8, 1, 2, 3, 4], [10, 5, 6, 7, 11]])
  np.testing.assert_array_equal(
      LAYOUT.unconditional(ids), [[11, 1, 2, 3, 4], [11, 5, 6, 7, 11]])
  logits = jnp.arange(2 * 5 * 12.0).reshape(2, 5, 12)
  np.testing.assert_array_equal(image_logits(logits, LAYOUT), logits[:, 1:, :8])


def test_token_layout_rejects_bad_sizes():
  with pytest.raises(ValueError, match="codebook_size"):
    TokenLayout(codebook_size=1, num_classes=10)
  with pytest.raises(ValueError, match="num_classes"):
    TokenLayout(codebook_size=16, num_classes=0)


# --- model --------------------------------------------------------------------------------


def test_bfloat16_compute_keeps_float32_params_and_logits():
  params = tiny_params()
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  ids = random_ids(0)
  logits = jax.jit(functools.partial(MODEL.clone(dtype=jnp.bfloat16).apply, train=False))(
      params, ids)
  assert logits.shape == (BATCH, NUM_TOKENS + 1, LAYOUT.vocab_size)
  assert logits.dtype == jnp.float32
  # bf16 has ~3 significant digits; the float32 model gives nearly the same logits.
  np.testing.assert_allclose(logits, apply_eval(params, ids), atol=0.1)


def test_attention_is_bidirectional_and_examples_independent():
  params = tiny_params()
  ids = random_ids(2)
  changed = ids.at[0, -1].set((ids[0, -1] + 1) % LAYOUT.vocab_size)
  before = apply_eval(params, ids)
  after = apply_eval(params, changed)
  # The last token influences the first position (no causal mask; a causal one would leave
  # it bit-identical). Small at init: attention is near uniform with 0.02-scale weights.
  assert np.max(np.abs(after[0, 0] - before[0, 0])) > 1e-6
  # ... and nothing of the other examples.
  np.testing.assert_array_equal(after[1:], before[1:])


def _flax_attention(dropout_rate=0.1):
  """flax's own module, as the transformer used it before SelfAttention (and as MaskGIT's
  official transformer uses it, less the all-ones mask)."""
  return nn.MultiHeadDotProductAttention(
      num_heads=4, dropout_rate=dropout_rate, kernel_init=nn.initializers.truncated_normal(0.02),
      force_fp32_for_softmax=True, name="attention")


class _Wrapped(nn.Module):  # puts either attention module at the same path, "attention"
  make: object

  @nn.compact
  def __call__(self, x, deterministic):
    module = self.make()
    if isinstance(module, SelfAttention):
      return module(x, deterministic=deterministic)
    return module(x, x, deterministic=deterministic)


def test_self_attention_equals_flax_multi_head_attention():
  x = jax.random.normal(jax.random.key(3), (3, 9, 32))
  ours = _Wrapped(lambda: SelfAttention(4, 0.1, jnp.float32, name="attention"))
  flax_mha = _Wrapped(_flax_attention)
  params = jax.jit(functools.partial(ours.init, deterministic=True))(jax.random.key(0), x)
  reference = jax.jit(functools.partial(flax_mha.init, deterministic=True))(jax.random.key(0), x)
  # Same parameter names, shapes and initial values: checkpoints and converters are unchanged.
  assert jax.tree.structure(params) == jax.tree.structure(reference)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):
    np.testing.assert_array_equal(a, b)
  for deterministic in (True, False):  # with dropout: the same rng gives the same mask
    apply = lambda module: jax.jit(functools.partial(module.apply, deterministic=deterministic))(
        params, x, rngs={"dropout": jax.random.key(5)})
    np.testing.assert_allclose(apply(ours), apply(flax_mha), rtol=1e-5, atol=1e-6)
  # ... and the same gradients (the train step's path).
  grad = lambda module: jax.jit(jax.grad(lambda p: jnp.sum(module.apply(
      p, x, deterministic=False, rngs={"dropout": jax.random.key(5)}) ** 2)))(params)
  for a, b in zip(jax.tree.leaves(grad(ours)), jax.tree.leaves(grad(flax_mha))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_attention_implementations_match_flax_with_the_same_dropout():
  x = jax.random.normal(jax.random.key(4), (3, 7, 32))
  make = lambda impl: _Wrapped(lambda: SelfAttention(4, 0.1, jnp.float32, impl,
                                                     name="attention"))
  params = make("flax").init(jax.random.key(0), x, deterministic=True)

  @functools.partial(jax.jit, static_argnums=(0, 1))
  def output_and_grads(impl, deterministic, params):
    apply = lambda p: make(impl).apply(p, x, deterministic=deterministic,
                                       rngs={"dropout": jax.random.key(2)})
    return apply(params), jax.grad(lambda p: jnp.sum(apply(p) ** 2))(params)

  for deterministic in (True, False):
    reference = output_and_grads("flax", deterministic, params)
    # With dropout, dot_product_attention trains through custom_vjp.
    for impl in ("custom_vjp", "dot_product_attention"):
      out, grads = output_and_grads(impl, deterministic, params)
      np.testing.assert_allclose(out, reference[0], rtol=1e-5, atol=1e-6, err_msg=impl)
      for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference[1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=impl)
  with pytest.raises(ValueError, match="attention implementation"):
    make("flash").init(jax.random.key(0), x, deterministic=True)


def _autodiff_attention(query, key, value, multiplier):
  """softmax_attention's forward in plain JAX, for JAX to differentiate."""
  query, key, value = (x.transpose(0, 2, 1, 3) for x in (query, key, value))
  probabilities = jax.nn.softmax(query @ key.swapaxes(-1, -2), axis=-1)
  if multiplier is not None:
    probabilities = probabilities * multiplier
  return (probabilities @ value).transpose(0, 2, 1, 3)


@pytest.mark.parametrize("groups", [1, 2, 3])
@pytest.mark.parametrize("dropout", [False, True])
def test_softmax_attention_backward_equals_autodiff(groups, dropout):
  query, key, value, d_out = (jax.random.normal(k, (2, 7, 5, 4)) for k in
                              jax.random.split(jax.random.key(0), 4))
  keep = jax.random.bernoulli(jax.random.key(1), 0.7, (1, 1, 7, 7))
  multiplier = keep.astype(jnp.float32) / 0.7 if dropout else None
  ours = functools.partial(transformer.softmax_attention, multiplier=multiplier, groups=groups)
  reference = functools.partial(_autodiff_attention, multiplier=multiplier)
  np.testing.assert_allclose(ours(query, key, value), reference(query, key, value), rtol=1e-5,
                             atol=1e-6)
  # Unequal groups (5 heads in 2 or 3) and the vector-Jacobian product against JAX's.
  vjp = lambda f: jax.vjp(f, query, key, value)[1](d_out)
  for a, b, name in zip(vjp(ours), vjp(reference), ("query", "key", "value")):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


def test_softmax_attention_in_bfloat16_is_close_to_float32():
  query, key, value = (jax.random.normal(k, (2, 9, 2, 8)) for k in
                       jax.random.split(jax.random.key(2), 3))
  bf16 = lambda x: x.astype(jnp.bfloat16)
  loss = lambda q, k, v: jnp.sum(transformer.softmax_attention(q, k, v, groups=2)
                                 .astype(jnp.float32) ** 2)
  out = transformer.softmax_attention(bf16(query), bf16(key), bf16(value))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32), _autodiff_attention(
      query, key, value, None), atol=0.05)
  grads = jax.grad(loss, argnums=(0, 1, 2))(bf16(query), bf16(key), bf16(value))
  expected = jax.grad(loss, argnums=(0, 1, 2))(query, key, value)
  for a, b in zip(grads, expected):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_allclose(a.astype(jnp.float32), b, atol=0.1 * float(jnp.max(jnp.abs(b))))


def test_cpu_attention_groups_are_one_per_core_at_most_the_heads():
  cores = len(os.sched_getaffinity(0))
  assert jax.default_backend() == "cpu"
  assert transformer.cpu_attention_groups(1) == 1
  assert transformer.cpu_attention_groups(1000) == cores


def test_codebook_logits_are_the_image_logits_without_the_rest():
  params, ids = tiny_params(), random_ids(11)

  @functools.partial(jax.jit, static_argnums=(1, 2))
  def image_and_code_logits(params, train, codebook_size):
    logits = MODEL.apply(params, ids, train=train, rngs={"dropout": jax.random.key(3)},
                         codebook_size=codebook_size)
    return logits if codebook_size else image_logits(logits, LAYOUT)

  for train in (False, True):
    codes = image_and_code_logits(params, train, LAYOUT.codebook_size)
    assert codes.shape == (BATCH, NUM_TOKENS, LAYOUT.codebook_size)
    np.testing.assert_allclose(codes, image_and_code_logits(params, train, None), rtol=1e-6,
                               atol=1e-6)
  # The same gradients: the class position and the other ids never reached the loss.
  grad = jax.jit(jax.grad(lambda p, size: jnp.sum(jnp.sin(image_and_code_logits(p, True, size)))),
                 static_argnums=1)
  for a, b in zip(*(jax.tree.leaves(grad(params, size)) for size in (None, LAYOUT.codebook_size))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_output_head_is_tied_to_the_token_embedding():
  params = tiny_params()
  assert set(params["params"]) == {
      "token_embedding", "position_embedding", "embedding_norm", "layer_0", "head_dense",
      "head_norm", "logits_bias"}
  # With a zero embedding table the tied logits are exactly the bias.
  bias = jax.random.normal(jax.random.key(6), (LAYOUT.vocab_size,))
  embedding = params["params"]["token_embedding"]["embedding"]
  changed = {"params": {**params["params"], "logits_bias": bias,
                        "token_embedding": {"embedding": jnp.zeros_like(embedding)}}}
  logits = apply_eval(changed, random_ids(4))
  np.testing.assert_allclose(logits, jnp.broadcast_to(bias, logits.shape), atol=1e-6)


def test_layers_are_post_layer_norm():
  _, state = jax.jit(functools.partial(
      MODEL.apply, train=False, capture_intermediates=True, mutable=["intermediates"]))(
          tiny_params(), random_ids(7))
  # LayerNorm (scale 1, bias 0 at init) is the last op of every layer: outputs are
  # normalised per token. A pre-LN layer would return the un-normalised residual.
  out = np.asarray(state["intermediates"]["layer_0"]["__call__"][0])
  np.testing.assert_allclose(out.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(out.var(-1), 1.0, rtol=1e-3)


def test_dropout_only_in_training():
  params = tiny_params()
  ids = random_ids(9)
  apply_train = jax.jit(lambda rng: MODEL.apply(params, ids, train=True,
                                                rngs={"dropout": rng}))
  train_a, train_b = apply_train(jax.random.key(0)), apply_train(jax.random.key(1))
  assert np.max(np.abs(train_a - train_b)) > 1e-3
  assert np.max(np.abs(train_a - apply_eval(params, ids))) > 1e-3


def test_truncated_normal_init():
  params = tiny_params()["params"]
  weights = np.concatenate([
      np.ravel(params["token_embedding"]["embedding"]),
      np.ravel(params["position_embedding"]),
      np.ravel(params["layer_0"]["mlp_in"]["kernel"]),
      np.ravel(params["layer_0"]["mlp_out"]["kernel"]),
      np.ravel(params["head_dense"]["kernel"])])
  assert np.max(np.abs(weights)) <= 2 * 0.02 + 1e-7
  # std of N(0, 0.02^2) truncated at 2 sigma is 0.02 * 0.8796; ~1700 draws.
  assert abs(weights.std() - 0.02 * 0.8796) < 0.001
  np.testing.assert_array_equal(params["layer_0"]["mlp_in"]["bias"], 0.0)
  np.testing.assert_array_equal(params["logits_bias"], 0.0)


def test_rejects_sequence_longer_than_max_len():
  with pytest.raises(ValueError, match="max_len"):
    jax.eval_shape(functools.partial(MODEL.init, train=False), jax.random.key(0),
                   random_ids(0, length=NUM_TOKENS + 2))


def test_paper_config_parameter_count():
  layout = TokenLayout(codebook_size=1024, num_classes=1000)
  width, mlp, layers, length = 768, 3072, 24, 257
  model = MaskGITTransformer(vocab_size=layout.vocab_size, hidden_size=width,
                             num_layers=layers, num_heads=16, mlp_dim=mlp, max_len=length)
  shapes = jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.key(0),
      jax.ShapeDtypeStruct((1, length), jnp.int32))
  count = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
  layer_norm = 2 * width
  per_layer = (4 * (width * width + width) + layer_norm
               + (width * mlp + mlp) + (mlp * width + width) + layer_norm)
  expected = (layout.vocab_size * width + length * width + layer_norm + layers * per_layer
              + (width * width + width) + layer_norm + layout.vocab_size)
  print(f"MaskGIT paper-config transformer: {count:,} parameters")
  assert count == expected == 172_457_193


# --- training inputs and loss -------------------------------------------------------------


cosine_mask = jax.jit(masking.cosine_mask, static_argnums=(1, 2, 3))


def cdf_of_masked_count(k, num_tokens, min_fraction):
  """P(ceil(N cos(pi/2 r)) <= k) for r ~ U[0, r_max)."""
  r_max = 2 * math.acos(min_fraction) / math.pi
  return 1.0 - min(1.0, 2 * math.acos(min(1.0, k / num_tokens)) / math.pi / r_max)


@pytest.mark.parametrize("num_tokens,min_fraction", [(16, 0.45), (20, 0.45), (16, 0.0)])
def test_cosine_mask_counts_follow_the_bounded_cosine(num_tokens, min_fraction):
  draws = 20_000
  mask = np.asarray(cosine_mask(jax.random.key(0), draws, num_tokens, min_fraction))
  counts = mask.sum(axis=1)
  assert counts.min() >= max(1, math.ceil(min_fraction * num_tokens - 1e-9))
  assert counts.max() <= num_tokens
  for k in range(1, num_tokens + 1):
    empirical = np.mean(counts <= k)
    # Binomial std of an empirical CDF with 20k draws is <= 0.0036.
    assert abs(empirical - cdf_of_masked_count(k, num_tokens, min_fraction)) < 0.015, k
  # Which positions are masked is uniform.
  np.testing.assert_allclose(mask.mean(axis=0), counts.mean() / num_tokens, atol=0.02)


def test_cosine_mask_fraction_bound_extremes():
  assert masking.max_mask_time(0.45) == pytest.approx(0.702848, abs=1e-6)
  assert np.all(cosine_mask(jax.random.key(1), 50, 7, 1.0))
  with pytest.raises(ValueError, match="min_mask_fraction"):
    masking.cosine_mask(jax.random.key(1), 4, 7, min_mask_fraction=1.5)


def test_drop_labels_rate():
  drop = jax.jit(masking.drop_labels, static_argnums=(2, 3))
  tokens = jnp.full((20_000,), 5, jnp.int32)
  dropped = np.asarray(drop(jax.random.key(0), tokens, 99, 0.1))
  assert set(np.unique(dropped)) == {5, 99}
  num_dropped = np.sum(dropped == 99)
  assert abs(num_dropped - 2000) < 5 * math.sqrt(20_000 * 0.1 * 0.9)
  np.testing.assert_array_equal(drop(jax.random.key(1), tokens, 99, 0.0), 5)
  np.testing.assert_array_equal(drop(jax.random.key(1), tokens, 99, 1.0), 99)
  with pytest.raises(ValueError, match="drop_rate"):
    masking.drop_labels(jax.random.key(1), tokens, 99, 1.1)


def reference_smoothed_loss(logits, targets, mask, smoothing, reduction):
  logits, targets, mask = (np.asarray(x, np.float64) for x in (logits, targets, mask))
  k = logits.shape[-1]
  log_probs = logits - np.log(np.sum(np.exp(logits), -1, keepdims=True))
  target_dist = (1 - smoothing) * np.eye(k)[targets.astype(int)] + smoothing / k
  per_token = -np.sum(target_dist * log_probs, -1)
  if reduction == "token":
    return np.sum(per_token * mask) / np.sum(mask)
  return np.mean(np.sum(per_token * mask, -1) / np.maximum(np.sum(mask, -1), 1))


@pytest.mark.parametrize("reduction", ["per_example", "token"])
def test_masked_cross_entropy_only_counts_masked_tokens(reduction):
  loss_fn = jax.jit(masking.masked_cross_entropy, static_argnums=(3, 4))
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(2, 6, 8)) * 3, jnp.float32)
  targets = jnp.asarray(rng.integers(0, 8, (2, 6)))
  mask = jnp.asarray(rng.random((2, 6)) < 0.5).at[0, 0].set(True).at[0, 1].set(False)
  loss = loss_fn(logits, targets, mask, 0.1, reduction)
  np.testing.assert_allclose(loss, reference_smoothed_loss(logits, targets, mask, 0.1, reduction),
                             rtol=1e-5)
  np.testing.assert_allclose(loss_fn(logits, targets, mask, 0.0, reduction),
                             reference_smoothed_loss(logits, targets, mask, 0.0, reduction),
                             rtol=1e-5)
  noise = jnp.asarray(rng.normal(size=logits.shape) * 10, jnp.float32)
  at_unmasked = jnp.where(mask[..., None], logits, logits + noise)
  np.testing.assert_array_equal(loss_fn(at_unmasked, targets, mask, 0.1, reduction), loss)
  at_masked = logits.at[0, 0].add(noise[0, 0])
  assert loss_fn(at_masked, targets, mask, 0.1, reduction) != loss
  assert loss_fn(logits, targets, jnp.zeros_like(mask), 0.1, reduction) == 0.0


def test_per_example_reduction_weighs_examples_equally_by_hand():
  """Two codes, uniform logits: every token costs log 2; example 0 has one masked token whose
  target is certain (cost 0 with logits +-inf), example 1 three at log 2 each."""
  big = 30.0
  logits = jnp.zeros((2, 3, 2)).at[0, 0].set(jnp.array([big, -big]))
  targets = jnp.zeros((2, 3), jnp.int32)
  mask = jnp.array([[True, False, False], [True, True, True]])
  per_example = masking.masked_cross_entropy(logits, targets, mask, 0.0, "per_example")
  token = masking.masked_cross_entropy(logits, targets, mask, 0.0, "token")
  np.testing.assert_allclose(per_example, (0 + np.log(2)) / 2, atol=1e-6)
  np.testing.assert_allclose(token, 3 * np.log(2) / 4, atol=1e-6)
  with pytest.raises(ValueError, match="reduction"):
    masking.masked_cross_entropy(logits, targets, mask, 0.0, "mean")


def test_make_training_inputs():
  make_inputs = jax.jit(masking.make_training_inputs, static_argnums=(3, 4, 5))
  tokens = jax.random.randint(jax.random.key(0), (64, NUM_TOKENS), 0, LAYOUT.codebook_size)
  labels = jnp.arange(64) % LAYOUT.num_classes
  ids, targets, loss_mask = make_inputs(jax.random.key(1), tokens, labels, LAYOUT, 0.45, 0.0)
  np.testing.assert_array_equal(ids[:, 0], LAYOUT.class_token(labels))
  np.testing.assert_array_equal(ids[:, 1:], np.where(loss_mask, LAYOUT.mask_id, tokens))
  np.testing.assert_array_equal(targets, tokens)
  assert np.all(loss_mask.sum(1) >= 2)  # ceil(0.45 * 4)
  ids, _, _ = make_inputs(jax.random.key(1), tokens, labels, LAYOUT, 0.45, 1.0)
  np.testing.assert_array_equal(ids[:, 0], LAYOUT.mask_id)
  with pytest.raises(ValueError, match="labels"):
    masking.make_training_inputs(jax.random.key(1), tokens, labels[:5], LAYOUT)


def test_short_training_run_reduces_masked_loss():
  # Toy data: the image tokens are a fixed pattern determined by the class.
  patterns = jax.random.randint(jax.random.key(0), (LAYOUT.num_classes, NUM_TOKENS), 0,
                                LAYOUT.codebook_size)
  labels = jnp.arange(24) % LAYOUT.num_classes
  tokens = patterns[labels]
  params = tiny_params()
  optimizer = optax.adam(3e-3)
  opt_state = optimizer.init(params)

  def loss_fn(params, rng, train):
    input_rng, dropout_rng = jax.random.split(rng)
    ids, targets, loss_mask = masking.make_training_inputs(input_rng, tokens, labels, LAYOUT)
    logits = MODEL.apply(params, ids, train=train, rngs={"dropout": dropout_rng})
    return masking.masked_cross_entropy(image_logits(logits, LAYOUT), targets, loss_mask)

  @jax.jit
  def train_step(params, opt_state, rng):
    loss, grads = jax.value_and_grad(loss_fn)(params, rng, True)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for step in range(40):
    params, opt_state, loss = train_step(params, opt_state, jax.random.key(step))
    losses.append(float(loss))
  initial, final = np.mean(losses[:3]), np.mean(losses[-5:])
  # log(8) ~ 2.08 at init; the smoothed optimum over 8 codes is 0.47.
  assert initial > 1.8
  assert final < 0.6 * initial, losses
