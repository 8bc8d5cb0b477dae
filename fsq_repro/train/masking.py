"""Stage II training inputs and loss: cosine masking, CFG label dropout, masked CE.

One training example: draw r ~ U[0, r_max), mask ceil(cos(pi/2 r) * N) of the N image
tokens (chosen uniformly at random), replace the class token by MASK with probability 0.1,
and score the model only on the masked tokens:

  input_ids, targets, loss_mask = make_training_inputs(rng, tokens, labels, layout)
  logits = model.apply(params, input_ids, train=True, rngs={"dropout": ...})
  loss = masked_cross_entropy(image_logits(logits, layout), targets, loss_mask)

Label smoothing spreads over the image codebook only (the |C| logits that `image_logits`
keeps), not over the class and MASK ids of the output layer as MaskGIT's code does: those
ids are never valid at an image position, sampling and compression renormalise over the
codebook, so training that same distribution makes the compression-cost likelihoods the
ones the loss optimised.
"""

import math

import jax
import jax.numpy as jnp

from fsq_repro.models.transformer import TokenLayout


def max_mask_time(min_mask_fraction: float) -> float:
  """Largest r with cos(pi/2 * r) >= min_mask_fraction: 2 * arccos(fraction) / pi.

  0.45 (the FSQ paper's bound) gives r_max = 0.702848; equivalently r' = 1 - r lies in
  [0.297152, 1], the r_min of REFERENCE.md.
  """
  if not 0.0 <= min_mask_fraction <= 1.0:
    raise ValueError(f"min_mask_fraction must be in [0, 1], got {min_mask_fraction}")
  return 2.0 * math.acos(min_mask_fraction) / math.pi


def cosine_mask(rng: jax.Array, batch: int, num_tokens: int,
                min_mask_fraction: float = 0.45) -> jax.Array:
  """Bool [batch, num_tokens]; True = masked. Per row ceil(cos(pi/2 r) N) tokens masked.

  r ~ U[0, max_mask_time(min_mask_fraction)), so the masked fraction is never below the
  bound; the count is clipped to [max(1, ceil(bound * N)), N] so float rounding of the
  cosine cannot break that. Positions: the `count` smallest of i.i.d. uniform scores.
  """
  if num_tokens < 1:
    raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
  r_max = max_mask_time(min_mask_fraction)
  min_count = max(1, math.ceil(min_mask_fraction * num_tokens - 1e-9))
  time_rng, position_rng = jax.random.split(rng)
  r = jax.random.uniform(time_rng, (batch,), minval=0.0, maxval=r_max)
  count = jnp.ceil(jnp.cos(jnp.pi / 2 * r) * num_tokens).astype(jnp.int32)
  count = jnp.clip(count, min_count, num_tokens)
  scores = jax.random.uniform(position_rng, (batch, num_tokens))
  ranks = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
  return ranks < count[:, None]


def drop_labels(rng: jax.Array, class_tokens: jax.Array, mask_id: int,
                drop_rate: float = 0.1) -> jax.Array:
  """Replaces each class token by `mask_id` with probability `drop_rate` (CFG training)."""
  if not 0.0 <= drop_rate <= 1.0:
    raise ValueError(f"label drop_rate must be in [0, 1], got {drop_rate}")
  dropped = jax.random.uniform(rng, class_tokens.shape) < drop_rate
  return jnp.where(dropped, jnp.asarray(mask_id, class_tokens.dtype), class_tokens)


REDUCTIONS = ("per_example", "token")


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array,
                         label_smoothing: float = 0.1,
                         reduction: str = "per_example") -> jax.Array:
  """Label-smoothed cross entropy on the masked tokens.

  logits [B, N, K], targets int [B, N] in [0, K), mask bool [B, N]. The smoothed target is
  (1 - s) * onehot + s / K over the K logits given (pass `image_logits` so K = |C|).
  Positions with mask False contribute nothing. `reduction`: "per_example" averages each
  example's masked tokens, then the examples (MaskGIT's libml/losses.py); "token" averages
  every masked token of the batch at once, so heavily masked examples weigh more. An example
  with nothing masked contributes 0.
  """
  if reduction not in REDUCTIONS:
    raise ValueError(f"reduction={reduction!r} must be one of {REDUCTIONS}")
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  target_log_prob = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  # Written without a [B, N, K] one-hot: K reaches 2^16 in the codebook sweep.
  per_token = (-(1.0 - label_smoothing) * target_log_prob
               - label_smoothing * jnp.mean(log_probs, axis=-1))
  weights = mask.astype(jnp.float32)
  if reduction == "token":
    return jnp.sum(per_token * weights) / jnp.maximum(jnp.sum(weights), 1.0)
  per_example = (jnp.sum(per_token * weights, axis=-1)
                 / jnp.maximum(jnp.sum(weights, axis=-1), 1.0))
  return jnp.mean(per_example)


def make_training_inputs(rng: jax.Array, image_tokens: jax.Array, labels: jax.Array,
                         layout: TokenLayout, min_mask_fraction: float = 0.45,
                         label_drop_rate: float = 0.1):
  """One Stage II training batch: (input_ids [B, N+1], targets [B, N], loss_mask [B, N]).

  image_tokens int [B, N] and labels int [B] in. input_ids = [class token or MASK, image
  tokens with the masked ones set to MASK]; targets are the original image tokens;
  loss_mask marks the masked image positions.
  """
  if image_tokens.ndim != 2:
    raise ValueError(f"image_tokens must be [batch, num_tokens], got {image_tokens.shape}")
  if labels.shape != image_tokens.shape[:1]:
    raise ValueError(f"labels must have shape {image_tokens.shape[:1]}, got {labels.shape}")
  mask_rng, label_rng = jax.random.split(rng)
  batch, num_tokens = image_tokens.shape
  loss_mask = cosine_mask(mask_rng, batch, num_tokens, min_mask_fraction)
  masked_tokens = jnp.where(loss_mask, layout.mask_id, image_tokens)
  input_ids = layout.build_input(masked_tokens, labels)
  class_tokens = drop_labels(label_rng, input_ids[:, 0], layout.mask_id, label_drop_rate)
  input_ids = input_ids.at[:, 0].set(class_tokens)
  return input_ids, jnp.asarray(image_tokens, jnp.int32), loss_mask
