"""UViM's optimizer, as big_vision configures it (`big_vision/optax.py`), from optax parts.

  update = -schedule(t) * (lr * adafactor(clip(g)) + wd * kernel)

big_vision's Adafactor: factored second moments (`optax.scale_by_factored_rms`) for
dimensions of at least 32, second-moment decay 1 - (t + 1)^-0.8 capped at `beta2_cap`, then
momentum 0.9 kept in bfloat16. Gradients are clipped to global norm 1 first; weight decay is
decoupled (added after the learning rate, so not multiplied by it, but by the schedule) and
applies to kernels only; the schedule is linear warmup then cosine decay to 0.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax


def warmup_cosine(total_steps: int, warmup_steps: int):
  """big_vision's `create_learning_rate_schedule(decay_type="cosine", base=1)`: a multiplier
  rising linearly to 1 over `warmup_steps`, then cosine to 0 at `total_steps`."""
  if not 0 <= warmup_steps < max(total_steps, 1):
    raise ValueError(f"warmup_steps={warmup_steps} must lie in [0, total_steps={total_steps})")

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    progress = jnp.clip((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
    multiplier = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    if warmup_steps:
      multiplier = multiplier * jnp.minimum(1.0, step / warmup_steps)
    return multiplier

  return schedule


def scale_by_big_vision_adafactor(*, beta2_cap: float = 0.999, decay_exponent: float = 0.8,
                                  momentum: float = 0.9, min_dim_size_to_factor: int = 32,
                                  momentum_dtype=jnp.bfloat16) -> optax.GradientTransformation:
  """big_vision's `scale_by_adafactor` (no block-RMS clipping, as UViM uses it)."""
  def decay_rate(count, exponent):  # optax calls it with the step count and decay_rate
    t = jnp.asarray(count, jnp.float32) + 1.0
    return jnp.minimum(beta2_cap, 1.0 - t**(-exponent))

  return optax.chain(
      optax.scale_by_factored_rms(factored=True, decay_rate=decay_exponent,
                                  min_dim_size_to_factor=min_dim_size_to_factor,
                                  epsilon=1e-30, decay_rate_fn=decay_rate),
      optax.ema(momentum, debias=False, accumulator_dtype=momentum_dtype))


def kernel_mask(params):
  """True for the leaves named "kernel" (big_vision's default wd_mults: `.*/kernel$`)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def scale_by_path(multiplier: Callable[[tuple], float]) -> optax.GradientTransformation:
  """Each leaf's update times `multiplier(its key path)` (big_vision's lr_mults)."""
  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(lambda path, u: u * multiplier(path), updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def uvim_optimizer(*, learning_rate: float, weight_decay: float, total_steps: int,
                   warmup_steps: int, grad_clip_norm: float | None = 1.0,
                   beta2_cap: float = 0.95, momentum_dtype=jnp.bfloat16,
                   lr_multiplier: Callable[[tuple], float] | None = None
                   ) -> optax.GradientTransformation:
  """The whole update of the module docstring; grad_clip_norm None or 0 does not clip.
  `lr_multiplier(path)` scales the learning rate (not the weight decay) of some parameters,
  e.g. 0.1 for Stage II's pretrained encoder."""
  parts = [optax.clip_by_global_norm(grad_clip_norm)] if grad_clip_norm else []
  parts += [scale_by_big_vision_adafactor(beta2_cap=beta2_cap, momentum_dtype=momentum_dtype),
            optax.scale(learning_rate)]
  if lr_multiplier is not None:
    parts.append(scale_by_path(lr_multiplier))
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay, kernel_mask))
  parts += [optax.scale_by_schedule(warmup_cosine(total_steps, warmup_steps)), optax.scale(-1.0)]
  return optax.chain(*parts)
