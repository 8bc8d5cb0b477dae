"""Compression cost under M2T's schedule, and real range coding of it."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsq_repro.eval import compression

CODEBOOK_SIZE = 16
MASK_ID = CODEBOOK_SIZE
HEIGHT = WIDTH = 8
NUM_TOKENS = HEIGHT * WIDTH


def _context_model(seed=0):
  """A toy model whose logits depend on the visible tokens, position, label:
  logits[b, n] = histogram(inputs[b]) @ mix + position[n] + 0.3 label[b]."""
  rng = np.random.default_rng(seed)
  params = {"mix": jnp.asarray(5 * rng.normal(size=[MASK_ID + 1,
                                                    CODEBOOK_SIZE]),
                               jnp.float32),
            "position": jnp.asarray(rng.normal(size=[NUM_TOKENS,
                                                     CODEBOOK_SIZE]),
                                    jnp.float32)}

  def logits_fn(params, inputs, labels):
    histogram = jax.nn.one_hot(inputs, MASK_ID + 1).mean(axis=1)
    return ((histogram @ params["mix"])[:, None, :] + params["position"][None]
            + 0.3 * labels[:, None, None])

  return params, logits_fn


def _tokens_and_labels(seed=0, batch=3):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, CODEBOOK_SIZE, size=[batch, NUM_TOKENS])
  return tokens.astype(np.int32), np.arange(batch, dtype=np.int32)


def _kwargs():
  return dict(height=HEIGHT, width=WIDTH, codebook_size=CODEBOOK_SIZE,
              mask_id=MASK_ID)


def _brute_force_bits(logits_fn, tokens, labels, groups, steps):
  """float64 reference: one explicit masked forward pass per group."""
  bits = np.zeros([len(tokens)])
  for step in range(steps):
    inputs = tokens.copy()
    inputs[:, groups >= step] = MASK_ID
    logits = np.asarray(logits_fn(jnp.asarray(inputs), jnp.asarray(labels)),
                        np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    for b in range(len(tokens)):
      for n in np.flatnonzero(groups == step):
        bits[b] -= log_probs[b, n, tokens[b, n]] / math.log(2)
  return bits


@pytest.mark.parametrize("height, width", [(8, 8), (16, 16), (5, 7), (1, 3)])
def test_qlds_order_is_a_permutation(height, width):
  order = compression.qlds_order(height, width)
  assert order.shape == (height * width,)
  np.testing.assert_array_equal(np.sort(order), np.arange(height * width))


def test_qlds_order_first_cells_by_hand():
  # n=1: frac(0.5 + 1/g) = 0.2549 -> row round(2.04) = 2; frac(0.5 + 1/g^2) =
  # 0.0698 -> col round(0.56) = 1. n=2: 0.0098 -> row 0; 0.6397 -> col 5.
  order = compression.qlds_order(8, 8).reshape(8, 8)
  assert order[2, 1] == 0 and order[0, 5] == 1


@pytest.mark.parametrize("size, expected", [
    (8, [1, 1, 2, 2, 4, 4, 6, 7, 7, 9, 10, 11]),
    (16, [2, 3, 8, 10, 15, 18, 23, 26, 31, 36, 40, 44]),
])
def test_group_sizes_match_m2t_schedule(size, expected):
  groups = compression.group_schedule(size, size)
  assert groups.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(groups, minlength=12), expected)
  # Groups are contiguous runs of the QLDS order.
  by_rank = groups[np.argsort(compression.qlds_order(size, size))]
  assert np.all(np.diff(by_rank) >= 0)


def test_uniform_logits_cost_log2_codebook_size_per_token():
  tokens, labels = _tokens_and_labels()
  uniform = lambda inputs, labels: jnp.zeros(inputs.shape + (CODEBOOK_SIZE,))
  bits, summary = compression.compression_cost(uniform, tokens, labels,
                                               **_kwargs())
  np.testing.assert_allclose(bits, NUM_TOKENS * 4.0, rtol=1e-6)
  assert summary["bits_per_token"] == pytest.approx(4.0, rel=1e-6)
  assert summary["uniform_bits_per_token"] == 4.0
  assert summary["bits_per_image"] == pytest.approx(NUM_TOKENS * 4.0, rel=1e-6)


def test_oracle_logits_cost_almost_nothing():
  tokens, labels = _tokens_and_labels()
  answer = 30.0 * jax.nn.one_hot(tokens, CODEBOOK_SIZE)
  oracle = lambda inputs, labels: answer
  _, summary = compression.compression_cost(oracle, tokens, labels,
                                            **_kwargs())
  assert 0 <= summary["bits_per_token"] < 1e-6


def test_cost_matches_brute_force_masked_passes():
  params, apply = _context_model()
  logits_fn = functools.partial(apply, params)
  tokens, labels = _tokens_and_labels()
  groups = compression.group_schedule(HEIGHT, WIDTH)
  bits, _ = compression.compression_cost(logits_fn, tokens, labels,
                                         **_kwargs())
  np.testing.assert_allclose(
      bits, _brute_force_bits(logits_fn, tokens, labels, groups, 12),
      rtol=1e-5)


def test_cost_bits_run_under_jit_with_params_as_arguments():
  params, apply = _context_model()
  tokens, labels = _tokens_and_labels()
  groups = compression.group_schedule(HEIGHT, WIDTH)

  @jax.jit
  def cost(params, tokens, labels):
    return compression.compression_cost_bits(
        functools.partial(apply, params), tokens, labels, groups,
        num_steps=12, mask_id=MASK_ID)

  eager, _ = compression.compression_cost(functools.partial(apply, params),
                                          tokens, labels, **_kwargs())
  np.testing.assert_allclose(cost(params, tokens, labels), eager, rtol=1e-5)


def test_range_coding_is_lossless_and_near_ideal():
  params, apply = _context_model()
  logits_fn = functools.partial(apply, params)
  tokens, labels = _tokens_and_labels(seed=1, batch=4)
  result = compression.range_code_tokens(logits_fn, tokens, labels,
                                         **_kwargs())
  ideal, _ = compression.compression_cost(logits_fn, tokens, labels,
                                          **_kwargs())
  np.testing.assert_allclose(result["ideal_bits"], ideal, rtol=1e-5)
  # A stream is whole 32-bit words, so it may exceed the ideal by up to a
  # word; the coder's sealing may also leave off a few trailing bits.
  overhead = result["real_bits"] - result["ideal_bits"]
  assert np.all(overhead > -8) and np.all(overhead < 40), overhead
  assert all(c.dtype == np.uint32 for c in result["compressed"])


def test_range_coding_detects_a_nondeterministic_model():
  params, apply = _context_model()
  calls = []

  def drifting_logits_fn(inputs, labels):
    calls.append(None)  # Decoding sees different logits than encoding did.
    return apply(params, inputs, labels) * (1 + len(calls))

  tokens, labels = _tokens_and_labels(seed=2)
  with pytest.raises(RuntimeError, match="did not reproduce"):
    compression.range_code_tokens(drifting_logits_fn, tokens, labels,
                                  **_kwargs())


def test_rejects_bad_input():
  tokens, labels = _tokens_and_labels()
  uniform = lambda inputs, labels: jnp.zeros(inputs.shape + (CODEBOOK_SIZE,))
  kwargs = _kwargs()
  with pytest.raises(ValueError, match="mask_id"):
    compression.compression_cost(uniform, tokens, labels,
                                 **{**kwargs, "mask_id": 3})
  with pytest.raises(ValueError, match="tokens must lie"):
    compression.compression_cost(uniform, tokens + CODEBOOK_SIZE, labels,
                                 **kwargs)
  with pytest.raises(ValueError, match="tokens must be"):
    compression.compression_cost(uniform, tokens[:, :10], labels, **kwargs)
  with pytest.raises(ValueError, match="logits"):
    compression.compression_cost(uniform, tokens, labels,
                                 **{**kwargs, "codebook_size": 32,
                                    "mask_id": 32})
