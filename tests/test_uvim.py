"""UViM's Stage I pieces: label patches, code dropout, UViM's EMA VQ with splitting, the
label autoencoder with FSQ or VQ."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsq_repro.models import uvim
from fsq_repro.quantizers import EmaVectorQuantizer, FiniteScalarQuantizer, split_rare_codes
from fsq_repro.quantizers.fsq import FSQ


def test_patches_follow_big_visions_layout_and_invert():
  x = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype(np.float32)
  patches = np.asarray(uvim.patchify(jnp.asarray(x), 4))
  assert patches.shape == (2, 6, 3, 16)
  # einops "b (hn hp) (wn wp) c -> b (hn wn) c (hp wp)": patch i*3+j, entry [c, hp*4+wp].
  for i, j, c, hp, wp in [(0, 0, 0, 0, 0), (1, 2, 2, 3, 1), (0, 1, 1, 2, 3)]:
    assert patches[1, i * 3 + j, c, hp * 4 + wp] == x[1, i * 4 + hp, j * 4 + wp, c]
  square = jnp.asarray(x[:, :8, :8])
  np.testing.assert_array_equal(uvim.unpatchify(uvim.patchify(square, 4), 2, 4), square)


def test_code_dropout_keeps_a_uniform_number_of_codes_at_uniform_places():
  mask = np.asarray(uvim.code_dropout_mask(jax.random.key(0), 20000, 16))
  kept = mask.sum(axis=1)
  histogram = np.bincount(kept, minlength=17) / len(kept)
  np.testing.assert_allclose(histogram, 1 / 17, atol=0.01)  # 0..16 codes, equally likely
  np.testing.assert_allclose(mask.mean(axis=0), 0.5, atol=0.02)  # no position preferred


def test_flag_marks_dropped_codes_so_fsqs_zero_code_stays_distinct():
  fsq = FSQ((7, 5, 5, 5, 5))
  zero_code = np.asarray(fsq.indices_to_codes(jnp.asarray([fsq.codebook_size // 2])))
  np.testing.assert_array_equal(zero_code, 0.0)  # odd levels: the zero vector is a code
  zq = jnp.zeros((1, 2, 5))
  keep = jnp.asarray([[True, False]])  # the zero code given at 0, a code dropped at 1
  flagged = np.asarray(uvim.drop_codes(zq, keep, "flag"))
  assert flagged.shape == (1, 2, 6)
  assert not np.array_equal(flagged[0, 0], flagged[0, 1])
  np.testing.assert_array_equal(flagged[0, :, -1], [0.0, 1.0])
  zeroed = np.asarray(uvim.drop_codes(zq, keep, "zero"))
  np.testing.assert_array_equal(zeroed[0, 0], zeroed[0, 1])  # big_vision's: indistinguishable


def test_splitting_replaces_every_rare_code_by_halving_the_most_used():
  sums = jnp.asarray([[4.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  counts = jnp.asarray([8.0, 0.05, 2.0])
  new_sums, new_counts = split_rare_codes(sums, counts, jax.random.key(0), 0.1)
  np.testing.assert_allclose(new_counts, [4.0, 4.0, 2.0])
  np.testing.assert_allclose(new_sums[0], [2.0, 0.0])
  np.testing.assert_allclose(new_sums[1], [2.0, 0.0], rtol=1.001e-3)  # x uniform(0.999, 1.001)
  assert not np.array_equal(new_sums[1], new_sums[0])
  np.testing.assert_array_equal(new_sums[2], sums[2])
  # Two rare codes: two splits, the second of the then most used code.
  _, counts2 = split_rare_codes(sums, jnp.asarray([8.0, 0.05, 0.01]), jax.random.key(1), 0.1)
  np.testing.assert_allclose(sorted(np.asarray(counts2)), [2.0, 2.0, 4.0])


def ema_vq(splitting=True, size=6, dim=4):
  return EmaVectorQuantizer(codebook_size=size, codebook_dim=dim, splitting=splitting)


def test_ema_vq_is_the_cosine_nearest_unit_codeword_with_a_straight_through_gradient():
  vq = ema_vq()
  z = jax.random.normal(jax.random.key(1), (3, 5, 4))
  variables = vq.init(jax.random.key(0), z)
  (zq, out) = vq.apply(variables, z)
  codewords = np.asarray(vq.apply(variables, method=vq.codewords))
  np.testing.assert_allclose(np.linalg.norm(codewords, axis=-1), 1.0, rtol=1e-6)
  cosine = np.asarray(z).reshape(-1, 4) @ codewords.T
  np.testing.assert_array_equal(np.asarray(out.indices).reshape(-1), cosine.argmax(axis=1))
  np.testing.assert_allclose(zq, codewords[np.asarray(out.indices)], rtol=1e-6)
  assert float(out.loss) == 0.0  # UViM trains the codebook by EMA, commitment weight 0
  grad = jax.grad(lambda z: jnp.sum(vq.apply(variables, z)[0] * 3.0))(z)
  np.testing.assert_allclose(grad, 3.0)
  np.testing.assert_allclose(vq.apply(variables, out.indices, method=vq.decode_indices), zq,
                             rtol=1e-6)


def test_ema_vq_updates_sums_and_counts_with_momentum_over_the_batch():
  vq = ema_vq(splitting=False)
  z = jax.random.normal(jax.random.key(2), (2, 8, 4))
  variables = vq.init(jax.random.key(0), z)
  (_, out), updated = vq.apply(variables, z, train=True, mutable=["vq_state"])
  indices = np.asarray(out.indices).reshape(-1)
  histogram = np.bincount(indices, minlength=6)
  old = variables["vq_state"]
  np.testing.assert_allclose(updated["vq_state"]["counts"],
                             0.995 * np.asarray(old["counts"]) + histogram, rtol=1e-6)
  assigned = np.zeros((6, 4), np.float32)
  np.add.at(assigned, indices, np.asarray(z).reshape(-1, 4))
  np.testing.assert_allclose(updated["vq_state"]["sums"],
                             0.995 * np.asarray(old["sums"]) + assigned, rtol=1e-5, atol=1e-6)
  (_, _), frozen = vq.apply(variables, z, train=False, mutable=["vq_state"])
  np.testing.assert_array_equal(frozen["vq_state"]["counts"], old["counts"])


def test_ema_vq_splitting_leaves_no_code_below_the_minimum_count():
  vq = ema_vq(splitting=True, size=16)
  z = jnp.ones((1, 8, 4)) + 0.01 * jax.random.normal(jax.random.key(3), (1, 8, 4))
  variables = vq.init(jax.random.key(0), z)
  state = {"vq_state": {"sums": variables["vq_state"]["sums"],
                        "counts": variables["vq_state"]["counts"] * 0.01}}  # all rare
  (_, _), updated = vq.apply(state, z, train=True, mutable=["vq_state"],
                             rngs={"vq_split": jax.random.key(4)})
  counts = np.asarray(updated["vq_state"]["counts"])
  assert counts.min() >= 0.1
  # A split halves the donor's count between the two and drops the rare code's own (< 0.1):
  # the batch's 8 assignments stay, the rare codes' leftovers go.
  assert 8.0 - 1e-4 <= counts.sum() <= 0.995 * 0.16 + 8


def tiny_autoencoder(quantizer, **kw):
  args = dict(labels=(("color", 3),), image_size=16, patch_size=4, code_len=4, width=16,
              enc_depth=1, dec_depth=1, mlp_dim=32, num_heads=2)
  return uvim.LabelAutoencoder(quantizer=quantizer, **{**args, **kw})


def random_heads(params, rng):
  """Heads are zero-initialised (outputs start at the bias); give them weights to test flow."""
  head = params["head_color"]["kernel"]
  return {**params, "head_color": {**params["head_color"],
                                   "kernel": 0.1 * jax.random.normal(rng, head.shape)}}


@pytest.mark.parametrize("quantizer,standardize,marker", [
    (FiniteScalarQuantizer(levels=(7, 5, 5, 5, 5)), False, "flag"),
    (EmaVectorQuantizer(codebook_size=32, codebook_dim=8), True, "zero")])
def test_label_autoencoder_reconstructs_label_shapes_and_trains(quantizer, standardize, marker):
  model = tiny_autoencoder(quantizer, standardize=standardize, dropped_code=marker)
  rng = np.random.default_rng(0)
  labels = {"color": jnp.asarray(rng.uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)}
  context = jnp.asarray(rng.uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
  variables = model.init(jax.random.key(0), labels, context)
  outputs, out = model.apply(variables, labels, context)
  assert outputs["color"].shape == (2, 16, 16, 3)
  assert out.indices.shape == (2, 4)
  assert int(out.indices.max()) < quantizer.codebook_size
  np.testing.assert_allclose(model.apply(variables, out.indices, context,
                                         method=model.decode_indices)["color"],
                             outputs["color"], rtol=1e-5, atol=1e-6)
  params = random_heads(variables["params"], jax.random.key(5))
  state = {k: v for k, v in variables.items() if k != "params"}

  def loss(params):
    outputs, _ = model.apply({"params": params, **state}, labels, context, train=True,
                             rngs={"dropout": jax.random.key(6), "vq_split": jax.random.key(7)},
                             mutable=list(state))[0]
    return jnp.mean((outputs["color"] - labels["color"])**2)

  grads = jax.grad(loss)(params)
  for name in ("embedding_color", "encoder_context_embedding", "decoder_context_embedding",
               "encoder", "encoder_head", "decoder_stem", "decoder", "head_color"):
    norm = sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(grads[name]))
    assert norm > 0, name  # the straight-through estimator reaches the encoder


def test_context_is_optional_and_switchable():
  vq = EmaVectorQuantizer(codebook_size=32, codebook_dim=8)
  rng = np.random.default_rng(1)
  labels = {"color": jnp.asarray(rng.uniform(-1, 1, (1, 16, 16, 3)), jnp.float32)}
  context = jnp.asarray(rng.uniform(-1, 1, (1, 16, 16, 3)), jnp.float32)
  plain = tiny_autoencoder(vq, encoder_context=False, decoder_context=False)
  variables = plain.init(jax.random.key(0), labels)
  assert not {"encoder_context_embedding", "decoder_context_embedding"} & set(
      variables["params"])
  plain.apply(variables, labels)  # no context needed
  with_context = tiny_autoencoder(vq, encoder_context=False, decoder_context=True)
  variables = with_context.init(jax.random.key(0), labels, context)
  variables = {**variables, "params": random_heads(variables["params"], jax.random.key(1))}
  a, out = with_context.apply(variables, labels, context)
  b = with_context.apply(variables, out.indices, -context, method=with_context.decode_indices)
  assert not np.allclose(a["color"], b["color"])  # the decoder reads the context
  with pytest.raises(ValueError, match="context"):
    with_context.apply(variables, labels)


def test_bad_geometry_and_marker_are_clear_errors():
  labels = {"color": jnp.zeros((1, 16, 16, 3))}
  fsq = FiniteScalarQuantizer(levels=(7, 5, 5, 5, 5))
  with pytest.raises(ValueError, match="code_len"):
    tiny_autoencoder(fsq, code_len=5, encoder_context=False,
                     decoder_context=False).init(jax.random.key(0), labels)
  with pytest.raises(ValueError, match="dropped_code"):
    tiny_autoencoder(fsq, dropped_code="nan", encoder_context=False,
                     decoder_context=False).init(jax.random.key(0), labels)


def test_splitting_a_dictionary_too_light_to_lift_stops_after_one_split_per_code():
  # 16 codes holding 0.5 in all: no number of splits brings every count to 0.1.
  sums = jnp.ones((16, 4))
  counts = jnp.full((16,), 0.5 / 16).at[0].set(0.25)
  new_sums, new_counts = split_rare_codes(sums, counts, jax.random.key(0), 0.1)
  # It returned; splits only move mass (a rare code's own leftover is dropped), never add it.
  assert float(new_counts.sum()) <= float(counts.sum()) + 1e-6
  assert bool(jnp.all(jnp.isfinite(new_sums))) and float(new_counts.max()) < 0.25
