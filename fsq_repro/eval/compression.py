"""Compression cost of token maps under M2T's deterministic schedule.

Positions are ranked by the quantised R2 low-discrepancy sequence and split
into `steps` groups whose cumulative size grows like N * (i / steps)^alpha.
At step i the model sees the tokens of groups < i (MASK elsewhere) and the
class label; the cost of group i is sum -log2 p(true token). No sampling, no
CFG. `range_code_tokens` turns the same probabilities into a real, lossless
bitstream with `constriction` to show the ideal cost is achievable.
"""

import functools
import math
from typing import Callable

import constriction
import jax
import jax.numpy as jnp
import numpy as np

# Plastic number: the R2 sequence's generator (x^3 = x + 1).
_PLASTIC = 1.32471795724474602596

LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]


def qlds_order(height: int, width: int) -> np.ndarray:
  """Rank of each raster position [H*W] in the quantised R2 sequence order."""
  if height < 1 or width < 1:
    raise ValueError(f"height and width must be >= 1, got {height}x{width}")
  a1, a2 = 1 / _PLASTIC, 1 / _PLASTIC**2
  rank = np.full([height, width], -1, np.int64)
  next_rank, n = 0, 0
  while next_rank < height * width:
    n += 1
    row = int(round(((0.5 + n * a1) % 1) * height)) % height
    col = int(round(((0.5 + n * a2) % 1) * width)) % width
    if rank[row, col] < 0:
      rank[row, col] = next_rank
      next_rank += 1
  return rank.reshape(-1)


def group_schedule(height: int, width: int, steps: int = 12,
                   alpha: float = 2.2) -> np.ndarray:
  """Group (decoding step) of each raster position, int32 [H*W].

  Thresholds t_i = floor(N ((i+1)/steps)^alpha) clipped to [0, N-1]; group i
  holds the QLDS ranks in (t_{i-1}, t_i], with t_{-1} = -1. Small grids may
  get empty groups.
  """
  if steps < 1 or alpha <= 0:
    raise ValueError(f"steps must be >= 1 and alpha > 0, got {steps}, {alpha}")
  num = height * width
  thresholds = [min(max(math.floor(num * ((i + 1) / steps)**alpha), 0), num - 1)
                for i in range(steps)]
  ranks = qlds_order(height, width)
  return np.searchsorted(np.array(thresholds), ranks, side="left").astype(
      np.int32)


def compression_cost_bits(logits_fn: LogitsFn, tokens, labels, groups, *,
                          num_steps: int, mask_id: int) -> jax.Array:
  """Ideal code length in bits of each token map, float32 [B].

  Pure jnp over a static schedule, so it also runs under `jax.jit` (pass the
  model parameters as jit arguments, not as closure constants, or XLA embeds
  them). The step loop is a Python loop: under jit it unrolls `num_steps`
  model calls; called eagerly with a jitted `logits_fn`, the model compiles
  once for all steps and batches.

  Args:
    logits_fn: (inputs int32 [B, N], labels int32 [B]) -> logits [B, N, C].
    tokens: int32 [B, N] true tokens in raster order.
    labels: int32 [B] class labels.
    groups: int32 [N] group id per position (`group_schedule`).
    num_steps: number of groups.
    mask_id: the MASK token id fed at positions not yet decoded.
  """
  tokens = jnp.asarray(tokens, jnp.int32)
  labels = jnp.asarray(labels, jnp.int32)
  groups = jnp.asarray(groups, jnp.int32)
  bits = jnp.zeros([tokens.shape[0]], jnp.float32)
  for step in range(num_steps):
    inputs = jnp.where(groups[None, :] < step, tokens, mask_id)
    bits += _group_bits(logits_fn(inputs, labels), tokens, groups == step)
  return bits


@jax.jit
def _group_bits(logits, tokens, in_group):
  """sum over the group's positions of -log2 p(true token), float32 [B]."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  true_log_probs = jnp.take_along_axis(log_probs, tokens[..., None],
                                       axis=-1)[..., 0]
  return -jnp.sum(jnp.where(in_group[None, :], true_log_probs, 0.0),
                  axis=1) / math.log(2)


def compression_cost(logits_fn: LogitsFn, tokens, labels, *, height: int,
                     width: int, codebook_size: int, mask_id: int,
                     steps: int = 12, alpha: float = 2.2):
  """Compression cost of a batch of token maps under M2T's schedule.

  Returns:
    (bits per image float64 [B], summary) where summary holds bits_per_token,
    bits_per_image (means over this batch), uniform_bits_per_token =
    log2(codebook_size), num_images and tokens_per_image.
  """
  tokens, labels = _checked_tokens(tokens, labels, height * width,
                                   codebook_size, mask_id)
  _check_logits_shape(logits_fn, tokens, labels, codebook_size)
  groups = group_schedule(height, width, steps, alpha)
  bits = np.asarray(compression_cost_bits(
      logits_fn, tokens, labels, groups, num_steps=steps, mask_id=mask_id),
                    np.float64)
  return bits, _summary(bits, height * width, codebook_size)


def range_code_tokens(logits_fn: LogitsFn, tokens, labels, *, height: int,
                      width: int, codebook_size: int, mask_id: int,
                      steps: int = 12, alpha: float = 2.2) -> dict:
  """Range-codes each token map, decodes it back and checks it is lossless.

  One constriction RangeEncoder per image; group by group, the symbols of a
  group are coded with the categorical distributions the model predicts from
  the earlier groups. The decoder recomputes those distributions from its own
  decoded prefix only, so `logits_fn` must be deterministic.

  Returns:
    dict with compressed (list of uint32 arrays), real_bits and ideal_bits
    (float64 [B]; ideal = sum -log2 p under the same float64 probabilities)
    and their per-token means real_bits_per_token, ideal_bits_per_token.
  """
  tokens, labels = _checked_tokens(tokens, labels, height * width,
                                   codebook_size, mask_id)
  groups = group_schedule(height, width, steps, alpha)
  model_family = constriction.stream.model.Categorical(perfect=False)
  # Both directions compute each step's probabilities once for the whole
  # batch from identical inputs, so encoder and decoder see identical floats.
  step_probs = functools.partial(_step_probabilities, logits_fn, labels=labels,
                                 groups=groups, mask_id=mask_id,
                                 codebook_size=codebook_size)
  compressed, ideal_bits = _range_encode(tokens, step_probs, groups, steps,
                                         model_family)
  decoded = _range_decode(compressed, tokens.shape, step_probs, groups, steps,
                          model_family, mask_id)
  if not np.array_equal(decoded, tokens):
    raise RuntimeError("range decoding did not reproduce the tokens; logits_fn "
                       "must give identical outputs for identical inputs")
  real_bits = np.array([32.0 * c.size for c in compressed])
  return {"compressed": compressed, "real_bits": real_bits,
          "ideal_bits": ideal_bits,
          "real_bits_per_token": real_bits.sum() / tokens.size,
          "ideal_bits_per_token": ideal_bits.sum() / tokens.size}


def _range_encode(tokens, step_probs, groups, steps, model_family):
  """Returns (one uint32 stream per image, ideal bits float64 [B])."""
  encoders = [constriction.stream.queue.RangeEncoder() for _ in tokens]
  ideal_bits = np.zeros([len(tokens)], np.float64)
  for step in range(steps):
    positions = np.flatnonzero(groups == step)
    if positions.size:
      probs = np.ascontiguousarray(step_probs(tokens, step, positions))
      for b, encoder in enumerate(encoders):
        symbols = tokens[b, positions]
        encoder.encode(symbols, model_family, probs[b])
        ideal_bits[b] -= np.log2(probs[b, np.arange(positions.size),
                                       symbols]).sum()
  return [encoder.get_compressed() for encoder in encoders], ideal_bits


def _range_decode(compressed, shape, step_probs, groups, steps, model_family,
                  mask_id):
  """Decodes group by group; the model only ever sees decoded tokens."""
  decoders = [constriction.stream.queue.RangeDecoder(c) for c in compressed]
  decoded = np.full(shape, mask_id, np.int32)
  for step in range(steps):
    positions = np.flatnonzero(groups == step)
    if positions.size:
      probs = np.ascontiguousarray(step_probs(decoded, step, positions))
      for b, decoder in enumerate(decoders):
        decoded[b, positions] = decoder.decode(model_family, probs[b])
  return decoded


def _step_probabilities(logits_fn, known_tokens, step, positions, *, labels,
                        groups, mask_id, codebook_size):
  """float64 softmax [B, len(positions), C] at `positions`, given the tokens of
  groups < step (the softmax of only the positions coded at this step)."""
  inputs = np.where(groups[None, :] < step, known_tokens, mask_id)
  logits = logits_fn(jnp.asarray(inputs, jnp.int32), jnp.asarray(labels))
  if logits.shape != inputs.shape + (codebook_size,):
    raise ValueError(f"logits_fn must return [B, N, {codebook_size}] logits, "
                     f"got {logits.shape}")
  logits = np.asarray(logits, np.float64)[:, positions]
  logits -= logits.max(axis=-1, keepdims=True)
  probs = np.exp(logits)
  return probs / probs.sum(axis=-1, keepdims=True)


def _check_logits_shape(logits_fn, tokens, labels, codebook_size):
  shape = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(tokens.shape,
                                                         jnp.int32),
                         jax.ShapeDtypeStruct(labels.shape, jnp.int32)).shape
  if shape != tokens.shape + (codebook_size,):
    raise ValueError(f"logits_fn must return [B, N, {codebook_size}] logits, "
                     f"got {shape}")


def _checked_tokens(tokens, labels, num_positions, codebook_size, mask_id):
  tokens = np.asarray(tokens)
  labels = np.asarray(labels)
  if tokens.ndim != 2 or tokens.shape[1] != num_positions:
    raise ValueError(f"tokens must be [B, height*width={num_positions}] in "
                     f"raster order, got {tokens.shape}")
  if labels.shape != tokens.shape[:1]:
    raise ValueError(f"labels must have shape ({tokens.shape[0]},), got "
                     f"{labels.shape}")
  if tokens.min() < 0 or tokens.max() >= codebook_size:
    raise ValueError(f"tokens must lie in [0, codebook_size={codebook_size})")
  if 0 <= mask_id < codebook_size:
    raise ValueError(f"mask_id={mask_id} is a codebook index; use an id >= "
                     f"codebook_size={codebook_size}")
  return tokens.astype(np.int32), labels.astype(np.int32)


def _summary(bits, tokens_per_image, codebook_size):
  return {"bits_per_token": float(bits.mean() / tokens_per_image),
          "bits_per_image": float(bits.mean()),
          "uniform_bits_per_token": math.log2(codebook_size),
          "num_images": int(bits.shape[0]),
          "tokens_per_image": tokens_per_image}
