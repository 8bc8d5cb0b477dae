"""Stage I losses as pure functions: reconstruction, GAN, R1 and LeCam.

MaskGIT/MAGVIT conventions: L2 reconstruction (weight 1), non-saturating GAN loss (generator
weight 0.1), R1 gradient penalty on reals (weight 10, see `r1_penalty` for the convention),
LeCam optional (off in the MaskGIT/MAGVIT configs), no adaptive GAN weight. Weights are
applied by the trainer; every function here returns the unweighted term in float32.
"""

from typing import Callable

import jax
import jax.numpy as jnp


def l2_reconstruction_loss(reconstructions: jax.Array, images: jax.Array) -> jax.Array:
  """Mean squared error over all pixels and channels."""
  difference = reconstructions.astype(jnp.float32) - images.astype(jnp.float32)
  return jnp.mean(difference**2)


def generator_gan_loss(fake_logits: jax.Array) -> jax.Array:
  """Non-saturating generator loss: mean softplus(-D(fake)) = -mean log sigmoid(D(fake))."""
  return jnp.mean(jax.nn.softplus(-fake_logits.astype(jnp.float32)))


def discriminator_gan_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """mean softplus(-D(real)) + mean softplus(D(fake)): logistic loss, reals labelled 1."""
  real_term = jnp.mean(jax.nn.softplus(-real_logits.astype(jnp.float32)))
  fake_term = jnp.mean(jax.nn.softplus(fake_logits.astype(jnp.float32)))
  return real_term + fake_term


def r1_penalty(discriminator_apply: Callable[[jax.Array], jax.Array],
               real_images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """R1 gradient penalty on real images; returns (penalty, real_logits).

  penalty = mean over the batch of ||d D(x_b) / d x_b||^2 (sum over all pixels and
  channels), unweighted. MAGVIT's `r1_gradient_penalty` multiplies exactly this by its
  cost of 10, which is what "R1 weight 10" means in our configs; in StyleGAN's
  (gamma / 2) * E||grad||^2 convention that is gamma = 20.

  `discriminator_apply` maps images (B, ...) to logits (B,), each logit depending only on
  its own image, so one vector-Jacobian product with ones gives every per-image gradient.
  The logits come from the same forward pass, so the trainer can reuse them for the GAN loss.
  """
  logits, vjp = jax.vjp(discriminator_apply, real_images)
  (gradients,) = vjp(jnp.ones_like(logits))
  gradients = gradients.astype(jnp.float32).reshape(real_images.shape[0], -1)
  return jnp.mean(jnp.sum(gradients**2, axis=1)), logits


def lecam_regularizer(real_logits: jax.Array, fake_logits: jax.Array,
                      ema_real: jax.Array, ema_fake: jax.Array) -> jax.Array:
  """LeCam regulariser (Tseng et al., 2021) for the discriminator loss.

  mean(relu(D(real) - ema_fake)^2) + mean(relu(ema_real - D(fake))^2), with ema_real and
  ema_fake the moving averages of the batch-mean logits (`update_lecam_ema`). LeCam's and
  MAGVIT's code update the averages with the current batch first, then regularise.
  """
  real_logits = real_logits.astype(jnp.float32)
  fake_logits = fake_logits.astype(jnp.float32)
  real_term = jnp.mean(jax.nn.relu(real_logits - jax.lax.stop_gradient(ema_fake))**2)
  fake_term = jnp.mean(jax.nn.relu(jax.lax.stop_gradient(ema_real) - fake_logits)**2)
  return real_term + fake_term


def update_lecam_ema(ema_real: jax.Array, ema_fake: jax.Array, real_logits: jax.Array,
                     fake_logits: jax.Array, decay: float = 0.999) -> tuple[jax.Array, jax.Array]:
  """One EMA step of the batch-mean logits; start both averages at 0 (LeCam, MAGVIT)."""
  if not 0.0 <= decay < 1.0:
    raise ValueError(f"decay={decay} must lie in [0, 1), e.g. 0.999")
  mean_real = jnp.mean(jax.lax.stop_gradient(real_logits).astype(jnp.float32))
  mean_fake = jnp.mean(jax.lax.stop_gradient(fake_logits).astype(jnp.float32))
  return (decay * ema_real + (1.0 - decay) * mean_real,
          decay * ema_fake + (1.0 - decay) * mean_fake)
