"""FSQ against the paper's formulas (App. A.1), to the bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsq_repro.quantizers import FSQ, LEVELS_FOR_CODEBOOK_SIZE, levels_for_codebook_size

TABLE_LEVELS = sorted(set(LEVELS_FOR_CODEBOOK_SIZE.values()))


def paper_listing_codes(levels, z, eps=1e-3):
  """The paper's listing, step by step: numpy float64 constants, JAX float32 math."""
  levels_np = np.asarray(levels)
  half_l = (levels_np - 1) * (1 - eps) / 2
  offset = jnp.where(levels_np % 2 == 1, 0.0, 0.5)
  shift = jnp.tan(offset / half_l)
  bounded = jnp.tanh(jnp.asarray(z, jnp.float32) + shift) * half_l - offset
  return _round_ste(bounded) / (levels_np // 2)


def pytorch_port_codes(levels, z, eps=1e-3):
  """vector-quantize-pytorch's FSQ: float32 (1 + eps) half-width and arctanh shift."""
  levels32 = np.asarray(levels, np.float32)
  half_l = (levels32 - 1) * np.float32(1 + eps) / np.float32(2)
  offset = np.where(np.asarray(levels) % 2 == 0, 0.5, 0.0).astype(np.float32)
  shift = jnp.arctanh(offset / half_l)
  bounded = jnp.tanh(jnp.asarray(z, jnp.float32) + shift) * half_l - offset
  return _round_ste(bounded) / (np.asarray(levels) // 2)


def _round_ste(x):
  # Both sources round as x + stop_gradient(round(x) - x), which gives +0.0 where
  # jnp.round gives -0.0; the bits of the codes include that sign.
  return x + jax.lax.stop_gradient(jnp.round(x) - x)


def reference_indices(levels, codes):
  """index = sum_i digit_i * prod(L_<i), digits = round(code * L//2 + L//2), in int64."""
  levels = np.asarray(levels, np.int64)
  digits = np.round(np.asarray(codes, np.float64) * (levels // 2) + levels // 2).astype(np.int64)
  basis = np.concatenate([[1], np.cumprod(levels[:-1])])
  return (digits * basis).sum(-1)


def test_paper_anchor():
  fsq = FSQ([3, 5, 4])
  codes, index = fsq(jnp.asarray([0.25, 0.6, -7.0]))
  np.testing.assert_array_equal(codes, [0.0, 0.5, -1.0])
  assert int(index) == 10 and index.dtype == jnp.int32
  np.testing.assert_array_equal(fsq.indices_to_codes(index), [0.0, 0.5, -1.0])


@pytest.mark.parametrize("variant,reference", [("paper", paper_listing_codes),
                                               ("atanh", pytorch_port_codes)])
@pytest.mark.parametrize("levels", TABLE_LEVELS)
def test_codes_and_indices_match_formulas_bitwise(levels, variant, reference):
  z = 2.0 * jax.random.normal(jax.random.key(len(levels)), (4096, len(levels)))
  fsq = FSQ(levels, variant=variant)
  codes, indices = jax.jit(fsq.__call__)(z)
  expected = np.asarray(reference(levels, z))
  assert np.asarray(codes).tobytes() == expected.astype(np.float32).tobytes()
  np.testing.assert_array_equal(indices, reference_indices(levels, expected))


def test_variants_differ_on_a_small_fraction_of_bins():
  levels = (8, 5, 5, 5)
  z = jax.random.normal(jax.random.key(0), (200_000, 4))
  _, paper = FSQ(levels, variant="paper")(z)
  _, port = FSQ(levels, variant="atanh")(z)
  differ = float(np.mean(np.asarray(paper) != np.asarray(port)))
  assert 0.001 < differ < 0.03, differ


@pytest.mark.parametrize("levels", TABLE_LEVELS)
def test_full_codebook_round_trip(levels):
  fsq = FSQ(levels)
  codebook = fsq.indices_to_codes(np.arange(fsq.codebook_size))
  assert codebook.shape == (fsq.codebook_size, len(levels))
  np.testing.assert_array_equal(fsq.codes_to_indices(codebook), np.arange(fsq.codebook_size))
  assert len(np.unique(np.asarray(codebook), axis=0)) == fsq.codebook_size
  # Every code is a fixed point of quantization of a point that bounds onto it.
  np.testing.assert_array_equal(reference_indices(levels, codebook), np.arange(fsq.codebook_size))


@pytest.mark.parametrize("level,grid", [(3, [-1, 0, 1]), (4, [-1, -0.5, 0, 0.5]),
                                        (5, [-1, -0.5, 0, 0.5, 1]),
                                        (8, [-1, -0.75, -0.5, -0.25, 0, 0.25, 0.5, 0.75])])
def test_even_and_odd_grids(level, grid):
  z = jnp.linspace(-20, 20, 20001)[:, None]
  codes = FSQ([level]).quantize(z)
  np.testing.assert_array_equal(np.unique(np.asarray(codes)), np.asarray(grid, np.float32))


def test_straight_through_gradient_is_gradient_of_bound():
  fsq = FSQ([8, 5, 5, 5])
  z = jax.random.normal(jax.random.key(1), (16, 4))
  w = jax.random.normal(jax.random.key(2), (16, 4))
  grad = jax.grad(lambda z: jnp.sum(fsq.quantize(z) * w))(z)
  expected = jax.grad(lambda z: jnp.sum(fsq.bound(z) / np.array([4, 2, 2, 2.0]) * w))(z)
  np.testing.assert_allclose(grad, expected, rtol=1e-6)
  assert np.all(np.asarray(grad) != 0)


def test_bfloat16_input_gives_float32_indices_and_input_dtype_codes():
  levels = (8, 8, 8, 5, 5, 5)
  z = (3 * jax.random.normal(jax.random.key(3), (8192, 6))).astype(jnp.bfloat16)
  fsq = FSQ(levels)
  codes, indices = fsq(z)
  codes32, indices32 = fsq(z.astype(jnp.float32))
  assert codes.dtype == jnp.bfloat16 and indices.dtype == jnp.int32
  np.testing.assert_array_equal(indices, indices32)
  np.testing.assert_array_equal(codes.astype(jnp.float32), codes32)


@pytest.mark.parametrize("levels", [(46340, 46340), (8,) * 10, (7, 5, 5, 5, 5, 7, 5, 5, 5, 5, 5)])
def test_indices_exact_for_huge_codebooks(levels):
  fsq = FSQ(levels)
  assert fsq.codebook_size < 2**31
  rng = np.random.default_rng(0)
  idx = np.concatenate([rng.integers(0, fsq.codebook_size, 10000), [0, fsq.codebook_size - 1]])
  codes = fsq.indices_to_codes(idx)
  np.testing.assert_array_equal(fsq.codes_to_indices(codes), idx)
  # Codes from real inputs index the same way as the int64 reference.
  z = jax.random.normal(jax.random.key(4), (10000, len(levels)))
  codes, indices = fsq(z)
  np.testing.assert_array_equal(indices, reference_indices(levels, codes))


@pytest.mark.parametrize("levels,match", [([], "at least one dimension"),
                                          ([5, 1], "level 1"),
                                          ([5, 2.5], "level 2.5"),
                                          ([65536, 32768], "below 2\\^31")])
def test_bad_levels_name_the_value(levels, match):
  with pytest.raises(ValueError, match=match):
    FSQ(levels)


def test_level_two_is_finite_in_both_variants():
  for variant in ("paper", "atanh"):
    codes = FSQ([2, 5], variant=variant).quantize(jnp.linspace(-5, 5, 101)[:, None] * jnp.ones(2))
    assert np.all(np.isfinite(codes))
    assert set(np.unique(np.asarray(codes)[:, 0])) == {-1.0, 0.0}


def test_bad_variant_and_dimension():
  with pytest.raises(ValueError, match="variant"):
    FSQ([5, 5], variant="torch")
  with pytest.raises(ValueError, match="expects 2 channels"):
    FSQ([5, 5])(jnp.zeros((3, 4)))


def test_levels_for_codebook_size_tables():
  expected = {4: (5, 3), 6: (8, 8), 8: (8, 6, 5), 9: (8, 8, 8), 10: (8, 5, 5, 5),
              11: (8, 8, 6, 5), 12: (7, 5, 5, 5, 5), 14: (8, 8, 8, 6, 5), 16: (8, 8, 8, 5, 5, 5)}
  for bits, levels in expected.items():
    assert levels_for_codebook_size(2**bits) == levels
    # Each recommendation is within a factor 1.2 of its target size.
    assert 1 / 1.2 < np.prod(levels) / 2**bits < 1.2
  with pytest.raises(ValueError, match="2\\^13"):
    levels_for_codebook_size(2**13)
