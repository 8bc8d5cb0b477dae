"""Vector quantization as in MaskGIT's tokenizer, with the entropy loss and UViM's splitting.

Nearest neighbour in squared L2; loss = codebook term + commitment_cost * commitment term
(+ entropy loss); straight-through gradients. Losses are means over the whole (global)
batch: under jit with a sharded batch this is the correct cross-device mean. The entropy
loss's code statistics can instead be taken over groups of `entropy_group_size` examples,
as MaskGIT's pmap took them per device, whatever the number of devices here.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsq_repro.quantizers.interface import QuantizerOutput, batch_code_stats


def squared_distances(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """||z_i - c_j||^2 for z (N, d) and codebook (K, d), as (N, K), in float32."""
  z = z.astype(jnp.float32)
  codebook = codebook.astype(jnp.float32)
  return (jnp.sum(z**2, axis=1, keepdims=True) - 2.0 * z @ codebook.T
          + jnp.sum(codebook**2, axis=1)[None, :])


def entropy_loss(distances: jax.Array, temperature: float) -> jax.Array:
  """MaskGIT's codebook entropy loss: mean per-token entropy minus entropy of the mean.

  p_i = softmax(-d_i / T). Minimising it makes each token confident about one code
  while spreading the batch over many codes. The 1e-5 terms follow MaskGIT.
  """
  logits = -distances / temperature
  probs = jax.nn.softmax(logits, axis=-1)
  log_probs = jax.nn.log_softmax(logits + 1e-5, axis=-1)
  per_token_entropy = -jnp.mean(jnp.sum(probs * log_probs, axis=-1))
  mean_probs = jnp.mean(probs, axis=0)
  entropy_of_mean = -jnp.sum(mean_probs * jnp.log(mean_probs + 1e-5))
  return per_token_entropy - entropy_of_mean


def grouped_entropy_loss(distances: jax.Array, temperature: float, group_size: int) -> jax.Array:
  """`entropy_loss` of each group of `group_size` examples, averaged; distances are
  [examples, tokens, codes]. group_size 0 (or the batch size) is one group: the batch."""
  examples = distances.shape[0]
  group_size = group_size or examples
  if examples % group_size:
    raise ValueError(f"quantizer.entropy_group_size={group_size} does not divide the batch of "
                     f"{examples} examples")
  if group_size == examples:  # one group: 2D reductions; XLA:CPU ran the vmapped 3D ones and
    # their gradients far slower (demo Stage I step at 2^12 codes, one core: 0.59 -> 0.32 s)
    return entropy_loss(distances.reshape(-1, distances.shape[-1]), temperature)
  groups = distances.reshape(examples // group_size, -1, distances.shape[-1])
  return jnp.mean(jax.vmap(lambda d: entropy_loss(d, temperature))(groups))


class VectorQuantizer(nn.Module):
  """MaskGIT's VQ layer behind the common quantizer interface.

  With `track_usage=True` the module counts code assignments during training in the
  mutable collection "vq_usage"; `split_unused_codes` uses those counts.
  """
  codebook_size: int
  codebook_dim: int
  commitment_cost: float = 0.25
  entropy_loss_weight: float = 0.0
  entropy_temperature: float = 0.01
  entropy_group_size: int = 0  # examples per group of entropy statistics; 0 = the batch
  track_usage: bool = False

  @property
  def latent_dim(self) -> int:
    return self.codebook_dim

  def setup(self):
    if self.codebook_size < 2:
      raise ValueError(f"codebook_size={self.codebook_size} must be at least 2")
    init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
    self.codebook = self.param("codebook", init, (self.codebook_size, self.codebook_dim))
    if self.track_usage:
      self.usage_counts = self.variable(
          "vq_usage", "counts", jnp.zeros, (self.codebook_size,), jnp.float32)

  def __call__(self, z: jax.Array, *, train: bool = False):
    if z.shape[-1] != self.codebook_dim:
      raise ValueError(f"VQ with codebook_dim={self.codebook_dim} got z of shape {z.shape}")
    z32 = z.astype(jnp.float32)
    flat = z32.reshape(-1, self.codebook_dim)
    distances = squared_distances(flat, self.codebook)
    flat_indices = jnp.argmin(distances, axis=-1).astype(jnp.int32)
    quantized = jnp.take(self.codebook, flat_indices, axis=0).reshape(z32.shape)

    codebook_loss = jnp.mean((quantized - jax.lax.stop_gradient(z32))**2)
    commitment_loss = jnp.mean((jax.lax.stop_gradient(quantized) - z32)**2)
    loss = codebook_loss + self.commitment_cost * commitment_loss
    stats = batch_code_stats(flat_indices)
    stats.update(codebook_loss=codebook_loss, commitment_loss=commitment_loss)
    if self.entropy_loss_weight:
      ent = grouped_entropy_loss(distances.reshape(z.shape[0], -1, self.codebook_size),
                                 self.entropy_temperature, self.entropy_group_size)
      loss = loss + self.entropy_loss_weight * ent
      stats["entropy_loss"] = ent
    if train and self.track_usage and self.is_mutable_collection("vq_usage"):
      self.usage_counts.value += jnp.zeros_like(self.usage_counts.value).at[flat_indices].add(1.0)

    zq = z32 + jax.lax.stop_gradient(quantized - z32)  # straight-through
    indices = flat_indices.reshape(z.shape[:-1])
    return zq.astype(z.dtype), QuantizerOutput(indices, loss, stats)

  def decode_indices(self, indices: jax.Array) -> jax.Array:
    return jnp.take(self.codebook, jnp.asarray(indices, jnp.int32), axis=0)


def split_unused_codes(codebook: jax.Array, counts: jax.Array, rng: jax.Array,
                       noise_scale: float = 1e-2) -> jax.Array:
  """UViM-style codebook splitting: re-seed every unused code near a used one.

  Each code with count 0 is replaced by a code drawn with probability proportional to
  its usage, plus Gaussian noise of `noise_scale` times the codebook's RMS entry, so
  popular codes split in two. Used codes are kept as they are. Call it every few thousand steps
  with the counts from the "vq_usage" collection, then reset the counts to zero.
  """
  k = codebook.shape[0]
  draw_rng, noise_rng = jax.random.split(rng)
  used = counts > 0
  logits = jnp.where(used, jnp.log(jnp.maximum(counts, 1e-30)), -jnp.inf)
  donors = jax.random.categorical(draw_rng, logits, shape=(k,))
  donor_codes = codebook[donors]
  noise = jax.random.normal(noise_rng, codebook.shape, codebook.dtype)
  noise = noise * noise_scale * jnp.sqrt(jnp.mean(codebook**2))
  any_used = jnp.any(used)
  replace = jnp.logical_and(~used, any_used)[:, None]
  return jnp.where(replace, donor_codes + noise, codebook)


def split_most_used_code(sums: jax.Array, counts: jax.Array, rng: jax.Array):
  """One step of UViM's splitting: the least-used code becomes a copy of the most-used one
  times uniform noise in [0.999, 1.001]; the two share the donor's count and sum equally.
  `sums` (K, d) and `counts` (K,) are the EMA statistics the codewords are computed from."""
  most, least = jnp.argmax(counts), jnp.argmin(counts)
  noise = jax.random.uniform(rng, sums.shape[1:], sums.dtype, 1.0 - 1e-3, 1.0 + 1e-3)
  sums = sums.at[least].set(sums[most] * noise / 2.0).at[most].set(sums[most] / 2.0)
  counts = counts.at[least].set(counts[most] / 2.0).at[most].set(counts[most] / 2.0)
  return sums, counts


def split_rare_codes(sums: jax.Array, counts: jax.Array, rng: jax.Array, min_count: float):
  """`split_most_used_code` until no EMA count is below `min_count` (UViM: 0.1, a code
  unused for ~460 steps at momentum 0.995), each split with its own key; at most one split
  per code, so a dictionary whose whole mass is below codebook_size * min_count (which no
  number of splits can lift) does not loop forever."""
  def rare(state):
    return jnp.any(state[1] < min_count) & (state[3] < counts.shape[0])

  def split(state):
    sums, counts, rng, done = state
    rng, key = jax.random.split(rng)
    return (*split_most_used_code(sums, counts, key), rng, done + 1)

  sums, counts, _, _ = jax.lax.while_loop(rare, split, (sums, counts, rng, jnp.int32(0)))
  return sums, counts


class EmaVectorQuantizer(nn.Module):
  """UViM's VQ behind the common quantizer interface.

  Codewords are unit vectors, sums / counts normalised, of exponential moving averages (in
  the mutable collection "vq_state") of the latents assigned to each code and of their
  number, over the global batch. Nearest neighbour in squared L2 to unit codewords is the
  cosine nearest neighbour. No codebook or commitment loss (UViM's commitment weight is 0;
  the term is logged). With `splitting`, codes whose EMA count falls below `min_count` are
  replaced by splitting the most used one after every update (random key from the "vq_split"
  stream).
  """
  codebook_size: int = 4096
  codebook_dim: int = 768
  momentum: float = 0.995
  min_count: float = 0.1
  splitting: bool = True

  @property
  def latent_dim(self) -> int:
    return self.codebook_dim

  def setup(self):
    if self.codebook_size < 2:
      raise ValueError(f"codebook_size={self.codebook_size} must be at least 2")
    init = nn.initializers.normal(stddev=1.0 / self.codebook_size**0.5)
    self.sums = self.variable("vq_state", "sums", lambda: init(
        self.make_rng("params"), (self.codebook_size, self.codebook_dim), jnp.float32))
    self.counts = self.variable("vq_state", "counts", jnp.ones, (self.codebook_size,),
                                jnp.float32)

  def codewords(self) -> jax.Array:
    e = self.sums.value / self.counts.value[:, None]
    return e / jnp.linalg.norm(e, axis=-1, keepdims=True)

  def __call__(self, z: jax.Array, *, train: bool = False):
    if z.shape[-1] != self.codebook_dim:
      raise ValueError(f"VQ with codebook_dim={self.codebook_dim} got z of shape {z.shape}")
    z32 = z.astype(jnp.float32)
    flat = z32.reshape(-1, self.codebook_dim)
    codewords = self.codewords()
    flat_indices = jnp.argmin(squared_distances(flat, codewords), axis=-1).astype(jnp.int32)
    quantized = jnp.take(codewords, flat_indices, axis=0).reshape(z32.shape)
    counts = jnp.zeros([self.codebook_size], jnp.float32).at[flat_indices].add(1.0)
    stats = batch_code_stats(flat_indices)
    stats.update(commitment_loss=jnp.mean((jax.lax.stop_gradient(quantized) - z32)**2),
                 codebook_max_ratio=jnp.max(counts) / flat.shape[0],
                 codebook_zeros_ratio=jnp.mean((counts == 0).astype(jnp.float32)))
    if train and self.is_mutable_collection("vq_state"):
      sums = self.sums.value * self.momentum + jnp.zeros_like(self.sums.value).at[
          flat_indices].add(jax.lax.stop_gradient(flat))
      ema_counts = self.counts.value * self.momentum + counts
      if self.splitting:
        sums, ema_counts = split_rare_codes(sums, ema_counts, self.make_rng("vq_split"),
                                            self.min_count)
      self.sums.value, self.counts.value = sums, ema_counts
    zq = z32 + jax.lax.stop_gradient(quantized - z32)  # straight-through
    indices = flat_indices.reshape(z.shape[:-1])
    return zq.astype(z.dtype), QuantizerOutput(indices, jnp.zeros((), jnp.float32), stats)

  def decode_indices(self, indices: jax.Array) -> jax.Array:
    return jnp.take(self.codewords(), jnp.asarray(indices, jnp.int32), axis=0)
