"""The one interface every quantizer implements.

A quantizer is a Flax module called as `zq, out = quantizer(z, train=...)` on latents z of
shape (..., d). `zq` has z's shape and dtype; `out` is a `QuantizerOutput`. The module also
has `decode_indices(indices) -> zq`, used to turn Stage II tokens back into latents.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class QuantizerOutput(NamedTuple):
  indices: jax.Array  # int32, z.shape[:-1]
  loss: jax.Array  # float32 scalar, the weighted auxiliary loss (0 for FSQ)
  stats: dict[str, jax.Array]  # float32 scalars for logging


def batch_code_stats(indices: jax.Array) -> dict[str, jax.Array]:
  """Codes used in this batch and the perplexity of their histogram.

  Works for any codebook size: it sorts the indices instead of building a dense
  histogram of |C| bins.
  """
  flat = indices.reshape(-1)
  n = flat.shape[0]
  _, counts = jnp.unique(flat, return_counts=True, size=n, fill_value=-1)
  # Padding entries of the fixed-size unique have count 0 and drop out below.
  p = counts.astype(jnp.float32) / n
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return {
      "codes_used_in_batch": jnp.sum(counts > 0).astype(jnp.float32),
      "perplexity": jnp.exp(entropy),
  }
