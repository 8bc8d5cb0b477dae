"""Tests of MaskGIT iterative decoding with classifier-free guidance."""

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsq_repro import sampling
from fsq_repro.models.transformer import TokenLayout, image_logits

LAYOUT = TokenLayout(codebook_size=8, num_classes=3)
NUM_TOKENS = 16
LABELS = jnp.array([0, 1, 2, 1])


def mixing_logits_fn(seed=0):
  """A cheap stand-in for the transformer: every position sees every input token.

  Class and MASK ids get +20 so that a sampler not restricted to the codebook would emit them.
  """
  rng = np.random.default_rng(seed)
  length = NUM_TOKENS + 1
  embed = jnp.asarray(rng.normal(size=(LAYOUT.vocab_size, LAYOUT.vocab_size)), jnp.float32)
  mix = jnp.asarray(rng.normal(size=(length, length)) / np.sqrt(length), jnp.float32)
  non_image = jnp.where(jnp.arange(LAYOUT.vocab_size) >= LAYOUT.codebook_size, 20.0, 0.0)

  def logits_fn(input_ids):
    one_hot = jax.nn.one_hot(input_ids, LAYOUT.vocab_size)
    return 2.0 * jnp.einsum("ij,bjv->biv", mix, one_hot) @ embed + non_image
  return logits_fn


LOGITS_FN = mixing_logits_fn()


# cfg_alpha and choice_temperature are traced here (no recompiles per value), so this
# wrapper always runs the guided formula; a Python 0 skips it (tested below).
@functools.partial(jax.jit, static_argnames=("logits_fn", "num_tokens", "num_steps"))
def decode(rng, labels, cfg_alpha=0.0, choice_temperature=4.5, *, logits_fn=LOGITS_FN,
           num_tokens=NUM_TOKENS, num_steps=12):
  return sampling.decode_token_maps(
      logits_fn, rng, labels, num_tokens=num_tokens, layout=LAYOUT, num_steps=num_steps,
      cfg_alpha=cfg_alpha, choice_temperature=choice_temperature)


def test_remask_schedule():
  np.testing.assert_array_equal(sampling.remask_schedule(16, 12),
                                [15, 15, 14, 13, 12, 11, 9, 8, 6, 4, 2, 0])
  np.testing.assert_array_equal(sampling.remask_schedule(5, 1), [0])


# Unknown tokens after each step: floor(N cos(pi/2 (t+1)/T)) clipped to [1, unknown - 1],
# 0 after the last step. Worked by hand.
@pytest.mark.parametrize("num_tokens,num_steps,expected_unknown", [
    (16, 12, [15, 14, 13, 12, 11, 10, 9, 8, 6, 4, 2, 0]),
    (4, 6, [3, 2, 1, 1, 1, 0]),  # more steps than the schedule can use
    (16, 1, [0]),
])
def test_decoding_follows_schedule_and_never_changes_revealed_tokens(
    num_tokens, num_steps, expected_unknown):
  logits_fn = LOGITS_FN if num_tokens == NUM_TOKENS else (
      lambda ids: LOGITS_FN(jnp.pad(ids, ((0, 0), (0, NUM_TOKENS - num_tokens))))[
          :, :num_tokens + 1])
  maps = np.asarray(decode(jax.random.key(0), LABELS, logits_fn=logits_fn,
                           num_tokens=num_tokens, num_steps=num_steps))
  assert maps.shape == (num_steps, 4, num_tokens) and maps.dtype == np.int32
  unknown = maps == LAYOUT.mask_id
  np.testing.assert_array_equal(unknown.sum(-1), np.tile(expected_unknown, (4, 1)).T)
  for before, after in zip(maps[:-1], maps[1:]):
    revealed = before != LAYOUT.mask_id
    np.testing.assert_array_equal(after[revealed], before[revealed])
  final = maps[-1]
  assert np.all((final >= 0) & (final < LAYOUT.codebook_size))  # never class/MASK ids


def test_decoding_is_deterministic_per_rng():
  tokens = decode(jax.random.key(3), LABELS)[-1]
  np.testing.assert_array_equal(tokens, decode(jax.random.key(3), LABELS)[-1])
  assert np.any(tokens != decode(jax.random.key(4), LABELS)[-1])


def test_reveals_most_confident_tokens_first():
  # Image position i (sequence position i + 1) has a peak of height 2i on code i % |C|:
  # higher i = more confident.
  image_position = jnp.arange(-1, NUM_TOKENS)
  sharpness = 2.0 * image_position
  peaks = jax.nn.one_hot(image_position % LAYOUT.codebook_size, LAYOUT.vocab_size)

  def logits_fn(ids):
    return jnp.broadcast_to(sharpness[:, None] * peaks, ids.shape + (LAYOUT.vocab_size,))

  maps = np.asarray(decode(jax.random.key(0), LABELS, 0.0, 0.0, logits_fn=logits_fn))
  # 8 tokens are known after step 7 (see the schedule above): positions 8..15.
  known = maps[7] != LAYOUT.mask_id
  np.testing.assert_array_equal(known, np.broadcast_to(np.arange(NUM_TOKENS) >= 8, known.shape))
  np.testing.assert_array_equal(
      maps[7][:, 8:], np.tile(np.arange(8, 16) % LAYOUT.codebook_size, (4, 1)))
  # With the default Gumbel temperature the order is randomised.
  noisy = np.asarray(decode(jax.random.key(0), LABELS, logits_fn=logits_fn))
  assert np.any((noisy[7] != LAYOUT.mask_id) != known)


def test_guided_logits_formula():
  ids = LAYOUT.build_input(jnp.full((4, NUM_TOKENS), LAYOUT.mask_id), LABELS)
  conditional = image_logits(LOGITS_FN(ids), LAYOUT)
  unconditional = image_logits(LOGITS_FN(ids.at[:, 0].set(LAYOUT.mask_id)), LAYOUT)
  assert np.max(np.abs(conditional - unconditional)) > 0.1
  guided = sampling.guided_image_logits(LOGITS_FN, ids, LAYOUT, 0.3)
  np.testing.assert_allclose(guided, conditional + 0.3 * (conditional - unconditional),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(sampling.guided_image_logits(LOGITS_FN, ids, LAYOUT, 0.0),
                                conditional)


def test_sample_tokens_with_alpha_zero_is_plain_conditional_sampling():
  calls = []

  def counting_logits_fn(ids):
    calls.append(ids.shape)
    return LOGITS_FN(ids)

  sample = jax.jit(functools.partial(
      sampling.sample_tokens, counting_logits_fn, num_tokens=NUM_TOKENS, layout=LAYOUT,
      cfg_alpha=0.0))
  plain = sample(jax.random.key(5), LABELS)
  assert len(calls) == 1  # only the conditional model call is traced in the loop body
  # The full guided formula l_c + 0 * (l_c - l_u) is bitwise the same; the last map is the
  # sample.
  np.testing.assert_array_equal(decode(jax.random.key(5), LABELS, 0.0)[-1], plain)
  assert np.any(decode(jax.random.key(5), LABELS, 1.0)[-1] != plain)


def test_cfg_pulls_samples_towards_the_conditional_mode():
  # Conditional logits favour code 0, unconditional ones (MASK class token) favour code 1.
  def logits_fn(ids):
    conditional = ids[:, :1] != LAYOUT.mask_id
    favoured = jnp.where(conditional, 0, 1)
    logits = 2.0 * jax.nn.one_hot(favoured, LAYOUT.vocab_size)
    return jnp.broadcast_to(logits, ids.shape + (LAYOUT.vocab_size,))

  labels = jnp.arange(64) % LAYOUT.num_classes
  plain = decode(jax.random.key(6), labels, 0.0, logits_fn=logits_fn)[-1]
  guided = decode(jax.random.key(6), labels, 1.0, logits_fn=logits_fn)[-1]
  # Per token p(0) = e^2 / (e^2 + 7) = 0.51 plain and e^4 / (e^4 + e^-2 + 6) = 0.90 guided
  # (before confidence selection, which favours code 0 in both).
  assert np.mean(guided == 0) > np.mean(plain == 0) + 0.2
  assert np.mean(guided == 1) < 0.01


def test_sample_categorical_draws_from_the_softmax():
  """Frequencies of 200,000 draws per row match the probabilities within 5 standard
  errors, zero-probability entries are never drawn, and so is no index >= V."""
  probs = np.array([[0.5, 0.0, 0.2, 0.3, 0.0, 0.0],
                    [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
                    [1 / 6] * 6], np.float32)
  draws = 200_000
  log_probs = jnp.log(jnp.asarray(probs))[:, None, :].repeat(draws, axis=1)
  samples = np.asarray(jax.jit(sampling.sample_categorical)(jax.random.key(0), log_probs))
  assert samples.shape == (3, draws) and samples.dtype == np.int32
  for row, p in zip(samples, probs):
    frequency = np.bincount(row, minlength=6) / draws
    assert len(frequency) == 6
    np.testing.assert_array_equal(frequency[p == 0], 0)
    np.testing.assert_array_less(np.abs(frequency - p), 5 * np.sqrt(p * (1 - p) / draws) + 1e-9)


def test_rejects_bad_arguments():
  with pytest.raises(ValueError, match="num_steps"):
    sampling.sample_tokens(LOGITS_FN, jax.random.key(0), LABELS, num_tokens=NUM_TOKENS,
                           layout=LAYOUT, num_steps=0)
  with pytest.raises(ValueError, match="labels"):
    sampling.sample_tokens(LOGITS_FN, jax.random.key(0), LABELS[:, None],
                           num_tokens=NUM_TOKENS, layout=LAYOUT)


SHARDED_SCRIPT = textwrap.dedent("""
    import functools
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from fsq_repro import sampling
    from fsq_repro.models.transformer import MaskGITTransformer, TokenLayout

    assert jax.device_count() == 8, jax.devices()
    layout = TokenLayout(codebook_size=8, num_classes=3)
    model = MaskGITTransformer(vocab_size=layout.vocab_size, hidden_size=16, num_layers=1,
                               num_heads=2, mlp_dim=32, max_len=5)
    labels = jnp.arange(16) % 3
    # Random weights without compiling the initialiser.
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                            jnp.zeros((1, 5), jnp.int32))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape) * 0.5, x.dtype),
                          shapes)

    @jax.jit
    def sample(params, rng, labels):
      logits_fn = functools.partial(model.apply, params, train=False)
      return sampling.sample_tokens(logits_fn, rng, labels, num_tokens=4, layout=layout,
                                    num_steps=4, cfg_alpha=0.2)

    single = np.asarray(sample(params, jax.random.key(1), labels))
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    sharded_labels = jax.device_put(labels, NamedSharding(mesh, P("data")))
    replicated_params = jax.device_put(params, NamedSharding(mesh, P()))
    assert len(sharded_labels.sharding.device_set) == 8
    sharded = sample(replicated_params, jax.random.key(1), sharded_labels)
    np.testing.assert_array_equal(np.asarray(sharded), single)
    assert np.all(single < layout.codebook_size) and len(np.unique(single)) > 2
    print("SHARDED_OK", len(sharded.sharding.device_set))
""")


@pytest.mark.slow  # a fresh process with 8 CPU devices
def test_sharded_sampling_matches_single_device():
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("XLA_FLAGS", None)
  repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], env=env, cwd=repo_root,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "SHARDED_OK 8" in result.stdout
