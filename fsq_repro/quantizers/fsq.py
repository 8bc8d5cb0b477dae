"""Finite Scalar Quantization (Mentzer et al., 2024, App. A.1).

Each of the d latent channels is bounded to L_i values and rounded; the implicit
codebook is the product of the per-channel grids, |C| = prod(L_i).

Two variants of the bounding function:
  "paper": the paper's listing: half_l = (L-1)(1-eps)/2, shift = tan(offset/half_l).
  "atanh": what the widely used PyTorch port (vector-quantize-pytorch) computes:
           half_l = (L-1)(1+eps)/2 in float32, shift = arctanh(offset/half_l).
The variants agree for most inputs but put the bin edges in slightly different places.

All bounding, rounding and index arithmetic runs in float32 / int32, whatever dtype
comes in: in bfloat16 the codes of |C| > 256 are not all representable.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fsq_repro.quantizers.interface import QuantizerOutput, batch_code_stats

VARIANTS = ("paper", "atanh")
MAX_CODEBOOK_SIZE = 2**31 - 1  # indices are int32

# Table 1 and App. A.4.1 of the paper: recommended levels per codebook size. The appendix
# prints [7, 5, 5, 5] for 2^12, a typo (its product is 875); the main text's Table 1 has
# [7, 5, 5, 5, 5] = 4375 ~ 2^12.
LEVELS_FOR_CODEBOOK_SIZE = {
    2**4: (5, 3),
    2**6: (8, 8),
    2**8: (8, 6, 5),
    2**9: (8, 8, 8),
    2**10: (8, 5, 5, 5),
    2**11: (8, 8, 6, 5),
    2**12: (7, 5, 5, 5, 5),
    2**14: (8, 8, 8, 6, 5),
    2**16: (8, 8, 8, 5, 5, 5),
}


def levels_for_codebook_size(size: int) -> tuple[int, ...]:
  """The paper's recommended FSQ levels for a target codebook size (a power of two)."""
  if size not in LEVELS_FOR_CODEBOOK_SIZE:
    known = ", ".join(f"2^{int(np.log2(k))}" for k in sorted(LEVELS_FOR_CODEBOOK_SIZE))
    raise ValueError(
        f"codebook size {size} (2^{np.log2(size):g}) has no recommended FSQ levels; use one of {known} "
        "or pass explicit levels")
  return LEVELS_FOR_CODEBOOK_SIZE[size]


def round_ste(x: jax.Array) -> jax.Array:
  """Rounds to the nearest integer (half to even) with straight-through gradients."""
  return x + jax.lax.stop_gradient(jnp.round(x) - x)


class FSQ:
  """The FSQ quantizer as plain, jit-safe JAX functions over the last axis."""

  def __init__(self, levels: Sequence[int], eps: float = 1e-3, variant: str = "paper"):
    self.levels = _validate_levels(levels)
    self.eps = float(eps)
    self.variant = variant
    if variant not in VARIANTS:
      raise ValueError(f"variant={variant!r} is unknown; use one of {VARIANTS}")
    if not 0.0 < self.eps < 1.0:
      raise ValueError(f"eps={eps} must lie in (0, 1)")
    levels_np = np.asarray(self.levels, np.int64)
    self._half_width = (levels_np // 2).astype(np.float32)
    basis = np.concatenate([[1], np.cumprod(levels_np[:-1])])
    self._basis = basis.astype(np.int32)  # every entry < |C| < 2^31
    self._half_l, self._offset, self._shift = _bound_constants(levels_np, self.eps, variant)
    if not np.all(np.isfinite(self._shift)):
      bad = [l for l, s in zip(self.levels, self._shift) if not np.isfinite(s)]
      raise ValueError(f"levels {bad} give a non-finite shift in variant {variant!r}; "
                       "use levels >= 3")

  @property
  def num_dimensions(self) -> int:
    return len(self.levels)

  @property
  def codebook_size(self) -> int:
    return int(np.prod(self.levels, dtype=np.int64))

  def bound(self, z: jax.Array) -> jax.Array:
    """Squashes z (..., d) into (-(L-1)/2 - offset, (L-1)/2 - offset) per channel, float32."""
    z = jnp.asarray(z, jnp.float32)
    return jnp.tanh(z + self._shift) * self._half_l - self._offset

  def quantize(self, z: jax.Array) -> jax.Array:
    """Codes in [-1, 1] (even L: [-1, 1 - 2/L]) with straight-through gradients, in z's dtype."""
    dtype = jnp.result_type(z)
    codes = round_ste(self.bound(z)) / self._half_width
    return codes.astype(dtype)

  def codes_to_indices(self, codes: jax.Array) -> jax.Array:
    """Maps codes (..., d) to int32 indices; channel 0 varies fastest."""
    digits = self._codes_to_digits(codes)
    return jnp.sum(digits * self._basis, axis=-1, dtype=jnp.int32)

  def indices_to_codes(self, indices: jax.Array) -> jax.Array:
    """Inverse of `codes_to_indices`: int indices (...) to float32 codes (..., d)."""
    indices = jnp.asarray(indices, jnp.int32)[..., None]
    digits = (indices // self._basis) % np.asarray(self.levels, np.int32)
    return (digits.astype(jnp.float32) - self._half_width) / self._half_width

  def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns (codes in z's dtype, int32 indices) for z of shape (..., d)."""
    if z.shape[-1] != self.num_dimensions:
      raise ValueError(f"FSQ with levels {list(self.levels)} expects {self.num_dimensions} "
                       f"channels, got z of shape {z.shape}")
    rounded = round_ste(self.bound(z))  # float32 integers in [-L//2, L//2]
    codes = (rounded / self._half_width).astype(jnp.result_type(z))
    # Indices come from the float32 integers, never from a bfloat16 copy of the codes.
    digits = jax.lax.stop_gradient(rounded + self._half_width).astype(jnp.int32)
    indices = jnp.sum(digits * self._basis, axis=-1, dtype=jnp.int32)
    return codes, indices

  def _codes_to_digits(self, codes: jax.Array) -> jax.Array:
    scaled = jnp.asarray(codes, jnp.float32) * self._half_width + self._half_width
    return jnp.round(scaled).astype(jnp.int32)


def _validate_levels(levels: Sequence[int]) -> tuple[int, ...]:
  levels = tuple(levels)
  if not levels:
    raise ValueError("levels is empty; FSQ needs at least one dimension, e.g. levels=[8,5,5,5]")
  for l in levels:
    if int(l) != l or l < 2:
      raise ValueError(f"levels={list(levels)} has level {l}; every level must be an integer >= 2")
  size = int(np.prod(levels, dtype=object))
  if size > MAX_CODEBOOK_SIZE:
    raise ValueError(f"levels={list(levels)} give a codebook of {size} codes; the product must "
                     f"be below 2^31 (int32 indices)")
  return tuple(int(l) for l in levels)


def _bound_constants(levels: np.ndarray, eps: float, variant: str):
  """half_l, offset and shift as float32 arrays, each rounded as its source computes them."""
  offset = np.where(levels % 2 == 1, 0.0, 0.5).astype(np.float32)
  # Evaluated eagerly even when FSQ is built inside a jit trace (e.g. a Flax module call).
  with np.errstate(invalid="ignore", divide="ignore"), jax.ensure_compile_time_eval():
    if variant == "paper":
      # The listing computes half_l in numpy float64; JAX then holds it in float32, and
      # tan runs on float32 operands.
      half_l = ((levels - 1) * (1 - eps) / 2).astype(np.float32)
      shift = np.asarray(jnp.tan(jnp.asarray(offset) / jnp.asarray(half_l)))
    else:
      # The PyTorch port computes in float32 tensors throughout.
      half_l = (levels.astype(np.float32) - 1) * np.float32(1 + eps) / np.float32(2)
      shift = np.asarray(jnp.arctanh(jnp.asarray(offset) / jnp.asarray(half_l)))
  return half_l.astype(np.float32), offset, shift.astype(np.float32)


class FiniteScalarQuantizer(nn.Module):
  """FSQ behind the common quantizer interface. It has no parameters and no aux loss."""
  levels: Sequence[int]
  eps: float = 1e-3
  variant: str = "paper"

  @property
  def fsq(self) -> FSQ:
    return FSQ(self.levels, self.eps, self.variant)

  @property
  def latent_dim(self) -> int:
    return len(self.levels)

  @property
  def codebook_size(self) -> int:
    return self.fsq.codebook_size

  def __call__(self, z: jax.Array, *, train: bool = False):
    del train  # FSQ behaves the same in training and evaluation.
    codes, indices = self.fsq(z)
    return codes, QuantizerOutput(indices, jnp.zeros((), jnp.float32), batch_code_stats(indices))

  def decode_indices(self, indices: jax.Array) -> jax.Array:
    return self.fsq.indices_to_codes(indices)
