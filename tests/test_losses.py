"""Tests of the Stage I losses against hand-computed values and closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsq_repro.models.discriminator import Discriminator
from fsq_repro.train import losses


def test_l2_reconstruction_loss():
  reconstructions = jnp.array([[0.0, 1.0], [2.0, 3.0]])
  assert float(losses.l2_reconstruction_loss(reconstructions, jnp.zeros((2, 2)))) == 3.5
  bf16 = losses.l2_reconstruction_loss(reconstructions.astype(jnp.bfloat16), jnp.ones((2, 2)))
  assert bf16.dtype == jnp.float32 and float(bf16) == pytest.approx((1 + 0 + 1 + 4) / 4)


def test_generator_gan_loss_is_non_saturating():
  fake_logits = jnp.array([0.0, math.log(3.0)])
  expected = (math.log(2.0) + math.log(4.0 / 3.0)) / 2  # -log sigmoid(l) = log(1 + e^-l)
  assert float(losses.generator_gan_loss(fake_logits)) == pytest.approx(expected, rel=1e-6)
  # A confidently rejected fake still gives a loss of ~|l| and a gradient of ~-1 (no saturation).
  value, grad = jax.value_and_grad(lambda l: losses.generator_gan_loss(l))(jnp.array([-1000.0]))
  assert float(value) == pytest.approx(1000.0) and float(grad[0]) == pytest.approx(-1.0)


def test_discriminator_gan_loss():
  real_logits = jnp.array([math.log(3.0), 0.0])
  fake_logits = jnp.array([-math.log(3.0)])
  expected = (math.log(4.0 / 3.0) + math.log(2.0)) / 2 + math.log(4.0 / 3.0)
  value = losses.discriminator_gan_loss(real_logits, fake_logits)
  assert float(value) == pytest.approx(expected, rel=1e-6)


def test_r1_penalty_of_a_linear_discriminator_is_the_squared_weight_norm():
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(size=(4, 4, 3)), jnp.float32)
  images = jnp.asarray(rng.uniform(size=(5, 4, 4, 3)), jnp.float32)
  linear = lambda x: jnp.sum(x * w, axis=(1, 2, 3)) + 0.7
  penalty, logits = losses.r1_penalty(linear, images)
  assert float(penalty) == pytest.approx(float(jnp.sum(w**2)), rel=1e-6)
  np.testing.assert_allclose(logits, linear(images), rtol=1e-6)


def test_r1_penalty_averages_per_image_gradients():
  # D(x_b) = sum(a * x_b^2): grad_b = 2 a x_b, different for every image.
  rng = np.random.default_rng(1)
  a = rng.normal(size=(3, 3, 2))
  images = rng.normal(size=(4, 3, 3, 2))
  quadratic = lambda x: jnp.sum(jnp.asarray(a, jnp.float32) * x**2, axis=(1, 2, 3))
  penalty, _ = jax.jit(losses.r1_penalty, static_argnums=0)(
      quadratic, jnp.asarray(images, jnp.float32))
  expected = np.mean(np.sum((2 * a * images)**2, axis=(1, 2, 3)))
  assert float(penalty) == pytest.approx(expected, rel=1e-5)


def test_lecam_regularizer_hand_computed():
  real_logits, fake_logits = jnp.array([1.0, -1.0]), jnp.array([0.0, 2.0])
  ema_real, ema_fake = jnp.array(0.5), jnp.array(-0.5)
  # relu([1.5, -0.5])^2 mean = 1.125; relu([0.5, -1.5])^2 mean = 0.125.
  value = losses.lecam_regularizer(real_logits, fake_logits, ema_real, ema_fake)
  assert float(value) == pytest.approx(1.25)
  grads = jax.grad(losses.lecam_regularizer, argnums=(0, 1, 2, 3))(
      real_logits, fake_logits, ema_real, ema_fake)
  np.testing.assert_allclose(grads[0], [1.5, 0.0])
  np.testing.assert_allclose(grads[1], [-0.5, 0.0])
  assert float(grads[2]) == 0.0 and float(grads[3]) == 0.0  # the averages are constants


def test_update_lecam_ema():
  ema_real, ema_fake = losses.update_lecam_ema(
      jnp.array(0.5), jnp.array(-0.5), jnp.array([1.0, -1.0]), jnp.array([0.0, 2.0]), decay=0.9)
  assert float(ema_real) == pytest.approx(0.9 * 0.5 + 0.1 * 0.0)
  assert float(ema_fake) == pytest.approx(0.9 * -0.5 + 0.1 * 1.0)
  with pytest.raises(ValueError, match="decay=1.0"):
    losses.update_lecam_ema(0.0, 0.0, jnp.zeros(1), jnp.zeros(1), decay=1.0)


def test_r1_penalty_with_the_discriminator_matches_per_image_gradients():
  model = Discriminator(image_size=16, max_filters=4)
  images = jnp.asarray(np.random.default_rng(2).uniform(size=(2, 16, 16, 3)), jnp.float32)
  params = jax.jit(model.init)(jax.random.key(0, impl="rbg"), images)["params"]

  def penalty_of(params):
    return losses.r1_penalty(lambda x: model.apply({"params": params}, x), images)[0]

  penalty, param_grads = jax.jit(jax.value_and_grad(penalty_of))(params)
  single = lambda x: model.apply({"params": params}, x[None])[0]
  per_image = [float(jnp.sum(jax.grad(single)(x)**2)) for x in images]
  assert float(penalty) == pytest.approx(np.mean(per_image), rel=1e-4)
  # The trainer differentiates the penalty with respect to D's parameters (double backprop).
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(param_grads))
  assert float(jnp.abs(param_grads["conv_in"]["kernel"]).max()) > 0
