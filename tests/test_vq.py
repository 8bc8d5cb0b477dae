"""VQ layer (MaskGIT) against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsq_repro.quantizers import FiniteScalarQuantizer, VectorQuantizer, entropy_loss, split_unused_codes
from fsq_repro.quantizers.vq import grouped_entropy_loss

CODEBOOK = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], np.float32)
Z = np.array([[[0.1, -0.1], [0.9, 0.3]], [[0.2, 1.4], [-0.5, 0.0]]], np.float32)


def _apply(vq, z, **kw):
  return vq.apply({"params": {"codebook": jnp.asarray(CODEBOOK)}}, jnp.asarray(z), **kw)


def test_nearest_neighbour_and_losses_by_hand():
  vq = VectorQuantizer(codebook_size=3, codebook_dim=2, commitment_cost=0.25)
  zq, out = _apply(vq, Z, train=True)
  np.testing.assert_array_equal(out.indices, [[0, 1], [2, 0]])
  quantized = CODEBOOK[[0, 1, 2, 0]].reshape(Z.shape)
  np.testing.assert_allclose(zq, quantized, atol=1e-7)
  mse = np.mean((quantized - Z)**2)
  np.testing.assert_allclose(out.stats["codebook_loss"], mse, rtol=1e-6)
  np.testing.assert_allclose(out.stats["commitment_loss"], mse, rtol=1e-6)
  np.testing.assert_allclose(out.loss, 1.25 * mse, rtol=1e-6)
  assert out.stats["codes_used_in_batch"] == 3
  np.testing.assert_allclose(out.stats["perplexity"], np.exp(-(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))),
                             rtol=1e-6)


def test_gradients_straight_through_and_split_between_terms():
  vq = VectorQuantizer(codebook_size=3, codebook_dim=2, commitment_cost=0.25)
  w = np.arange(8, dtype=np.float32).reshape(Z.shape)

  def f(codebook, z):
    zq, out = vq.apply({"params": {"codebook": codebook}}, z, train=True)
    return jnp.sum(zq * w), out.loss

  # Straight-through: d sum(zq * w) / dz = w, and the codebook gets nothing from zq.
  g_cb, g_z = jax.grad(lambda c, z: f(c, z)[0], argnums=(0, 1))(jnp.asarray(CODEBOOK), jnp.asarray(Z))
  np.testing.assert_allclose(g_z, w)
  np.testing.assert_allclose(g_cb, 0.0)
  # Loss gradient: codebook gets 2 (q - z) / n, the encoder gets 0.25 * 2 (z - q) / n.
  g_cb, g_z = jax.grad(lambda c, z: f(c, z)[1], argnums=(0, 1))(jnp.asarray(CODEBOOK), jnp.asarray(Z))
  quantized = CODEBOOK[[0, 1, 2, 0]].reshape(Z.shape)
  np.testing.assert_allclose(g_z, 0.25 * 2 * (Z - quantized) / Z.size, rtol=1e-5)
  expected_cb = np.zeros_like(CODEBOOK)
  np.add.at(expected_cb, [0, 1, 2, 0], (2 * (quantized - Z) / Z.size).reshape(-1, 2))
  np.testing.assert_allclose(g_cb, expected_cb, rtol=1e-5, atol=1e-7)


def test_entropy_loss_by_hand():
  """Two tokens, two codes, T = 0.01: distances (0, T ln 3) give p = (3/4, 1/4) and the mirror
  (1/4, 3/4); the mean assignment is (1/2, 1/2). MaskGIT's epsilon: log(mean + 1e-5)."""
  t = 0.01
  d = np.array([[0.0, t * np.log(3.0)], [t * np.log(3.0), 0.0]], np.float32)
  per_token_entropy = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
  entropy_of_mean = -2 * 0.5 * np.log(0.5 + 1e-5)
  np.testing.assert_allclose(entropy_loss(jnp.asarray(d), t), per_token_entropy - entropy_of_mean,
                             rtol=1e-5)
  # One-hot and spread evenly: no per-token entropy, log 2 for the mean.
  far = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
  np.testing.assert_allclose(entropy_loss(jnp.asarray(far), t), 2 * 0.5 * np.log(0.5 + 1e-5),
                             atol=1e-6)


def test_entropy_loss_is_weighted_into_the_vq_loss():
  plain = VectorQuantizer(3, 2)
  with_entropy = VectorQuantizer(3, 2, entropy_loss_weight=0.1, entropy_temperature=0.01)
  _, out0 = _apply(plain, Z, train=True)
  _, out1 = _apply(with_entropy, Z, train=True)
  distances = ((Z.reshape(-1, 1, 2) - CODEBOOK[None])**2).sum(-1)
  np.testing.assert_allclose(out1.loss - out0.loss,
                             0.1 * entropy_loss(jnp.asarray(distances), 0.01), rtol=1e-5)
  np.testing.assert_allclose(out1.stats["entropy_loss"], entropy_loss(jnp.asarray(distances), 0.01),
                             rtol=1e-6)


def test_entropy_loss_prefers_confident_and_diverse_assignments():
  confident_diverse = jnp.asarray([[0.0, 1.0], [1.0, 0.0]] * 4)
  confident_collapsed = jnp.asarray([[0.0, 1.0]] * 8)
  assert entropy_loss(confident_diverse, 0.01) < entropy_loss(confident_collapsed, 0.01) - 0.5


def test_decode_indices_and_bfloat16_dtype():
  vq = VectorQuantizer(3, 2)
  params = {"params": {"codebook": jnp.asarray(CODEBOOK)}}
  np.testing.assert_array_equal(vq.apply(params, jnp.asarray([2, 1]), method="decode_indices"),
                                CODEBOOK[[2, 1]])
  zq, out = vq.apply(params, jnp.asarray(Z, jnp.bfloat16))
  assert zq.dtype == jnp.bfloat16
  np.testing.assert_array_equal(out.indices, [[0, 1], [2, 0]])


def test_usage_tracking_and_splitting():
  vq = VectorQuantizer(3, 2, track_usage=True)
  variables = {"params": {"codebook": jnp.asarray(CODEBOOK)},
               "vq_usage": {"counts": jnp.zeros(3)}}
  z = np.array([[0.1, 0.0], [0.9, 0.1], [1.1, 0.0]], np.float32)
  _, updates = vq.apply(variables, jnp.asarray(z), train=True, mutable=["vq_usage"])
  counts = updates["vq_usage"]["counts"]
  np.testing.assert_array_equal(counts, [1, 2, 0])
  new = split_unused_codes(jnp.asarray(CODEBOOK), counts, jax.random.key(0), noise_scale=1e-2)
  np.testing.assert_array_equal(new[:2], CODEBOOK[:2])  # used codes stay
  near = np.min(np.linalg.norm(np.asarray(new[2]) - CODEBOOK[:2], axis=-1))
  assert 0 < near < 0.1  # the unused code now sits next to a used one


def test_both_quantizers_share_the_interface():
  z = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
  for q in (FiniteScalarQuantizer(levels=(8, 5, 5)), VectorQuantizer(16, 3)):
    variables = q.init(jax.random.key(1), z)
    zq, out = q.apply(variables, z, train=True)
    assert zq.shape == z.shape and out.indices.shape == (2, 4, 4) and out.indices.dtype == jnp.int32
    assert out.loss.shape == () and set(out.stats) >= {"codes_used_in_batch", "perplexity"}
    decoded = q.apply(variables, out.indices, method="decode_indices")
    np.testing.assert_allclose(decoded, zq, atol=1e-6)


def test_entropy_statistics_over_groups_of_examples_by_hand():
  """Example 0 prefers code 0, example 1 code 1 (p = 3/4 each): over the batch the mean
  assignment is uniform (entropy log 2); per example it is (3/4, 1/4) each."""
  t = 0.01
  d = np.array([[[0.0, t * np.log(3.0)]] * 2, [[t * np.log(3.0), 0.0]] * 2], np.float32)
  h = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
  batch = h - (-2 * 0.5 * np.log(0.5 + 1e-5))
  per_example = h - (-(0.75 * np.log(0.75 + 1e-5) + 0.25 * np.log(0.25 + 1e-5)))
  for group_size, expected in ((0, batch), (2, batch), (1, per_example)):
    np.testing.assert_allclose(grouped_entropy_loss(jnp.asarray(d), t, group_size), expected,
                               rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="entropy_group_size=3 does not divide"):
    grouped_entropy_loss(jnp.asarray(d), t, 3)
  # In the layer: statistics per group of 1 example of (2, 1, 2, d) latents.
  z = np.array([[[[0.1, 0.0], [0.9, 0.1]]], [[[0.0, 1.9], [1.0, 0.1]]]], np.float32)
  grouped = VectorQuantizer(3, 2, entropy_loss_weight=1.0, entropy_group_size=1)
  whole = VectorQuantizer(3, 2, entropy_loss_weight=1.0)
  _, out_grouped = _apply(grouped, z, train=True)
  _, out_whole = _apply(whole, z, train=True)
  distances = ((z.reshape(2, 2, 1, 2) - CODEBOOK[None, None])**2).sum(-1)
  np.testing.assert_allclose(out_grouped.stats["entropy_loss"],
                             np.mean([entropy_loss(jnp.asarray(x), 0.01) for x in distances]),
                             rtol=1e-5)
  assert not np.isclose(out_grouped.stats["entropy_loss"], out_whole.stats["entropy_loss"])
