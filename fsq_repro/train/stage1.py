"""Stage I: train the VQ-GAN / FSQ-GAN tokenizer with MaskGIT's recipe.

Generator loss = L2 reconstruction + perceptual (ResNet-50 features as MaskGIT, or LPIPS)
+ generator_weight * non-saturating GAN + the quantizer's auxiliary loss.
Discriminator loss = logistic GAN + r1_weight * R1 on reals (+ LeCam, optional).
Both use Adam(b1=0, b2=0.99); an EMA of the generator is the tokenizer used downstream.
The generator runs forward once per step; the discriminator step reuses its output.
"""

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import parameter_overview

from fsq_repro import parallel
from fsq_repro import images as images_lib
from fsq_repro.data import pipeline
from fsq_repro.models import factory, perceptual
from fsq_repro.quantizers import split_unused_codes
from fsq_repro.train import loop, losses


@dataclasses.dataclass(frozen=True)
class LossConfig:
  reconstruction_weight: float
  perceptual_weight: float
  generator_weight: float
  r1_weight: float
  lecam_weight: float
  lecam_ema_decay: float
  ema_decay: float
  split_every_steps: int

  @classmethod
  def from_config(cls, config, *, perceptual_on: bool):
    s = config.stage1
    return cls(s.reconstruction_weight, s.perceptual_weight if perceptual_on else 0.0,
               s.generator_weight, s.r1_weight, s.lecam_weight, s.lecam_ema_decay,
               s.ema_decay, config.quantizer.split_every_steps if config.quantizer.kind == "vq"
               else 0)


@flax.struct.dataclass
class Stage1State:
  step: jax.Array
  g_params: Any
  d_params: Any
  ema_params: Any  # the tokenizer used downstream
  g_opt_state: Any
  d_opt_state: Any
  quantizer_state: Any  # VQ usage counts for codebook splitting; {} otherwise
  lecam_ema: Any  # (real, fake) moving averages of the discriminator's mean logits


def make_optimizer(s: ml_collections.ConfigDict) -> optax.GradientTransformation:
  schedule = optax.linear_schedule(0.0, s.learning_rate, max(s.warmup_steps, 1))
  if s.warmup_steps == 0:
    schedule = optax.constant_schedule(s.learning_rate)
  return optax.adam(schedule, b1=s.adam_b1, b2=s.adam_b2)


def create_train_state(rng, *, autoencoder, discriminator, optimizer, image_size) -> Stage1State:
  g_rng, d_rng = jax.random.split(rng)
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  g_variables = autoencoder.init(g_rng, images, train=False)
  d_params = discriminator.init(d_rng, images)["params"]
  g_params = g_variables["params"]
  return Stage1State(
      step=jnp.zeros((), jnp.int32), g_params=g_params, d_params=d_params,
      ema_params=g_params, g_opt_state=optimizer.init(g_params),
      d_opt_state=optimizer.init(d_params),
      quantizer_state={k: v for k, v in g_variables.items() if k != "params"},
      lecam_ema=(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)))


def train_step(state: Stage1State, batch, rng, perceptual_params, *, autoencoder, discriminator,
               perceptual_distance, optimizer, loss_config: LossConfig):
  """One generator update, then one discriminator update; returns (state, float32 metrics).

  `perceptual_params`: the frozen perceptual network's parameters for
  `perceptual_distance(params, reconstructions, images)` ({} and None when the loss is off).
  """
  lc = loss_config
  images = batch["image"]
  mutable = list(state.quantizer_state)

  def generator_loss(g_params):
    variables = {"params": g_params, **state.quantizer_state}
    (recon, q_out), quantizer_state = autoencoder.apply(variables, images, train=True,
                                                        mutable=mutable)
    terms = {"reconstruction_loss": losses.l2_reconstruction_loss(recon, images),
             "quantizer_loss": q_out.loss}
    total = lc.reconstruction_weight * terms["reconstruction_loss"] + q_out.loss
    if lc.generator_weight:
      fake_logits = discriminator.apply({"params": state.d_params}, recon)
      terms["generator_gan_loss"] = losses.generator_gan_loss(fake_logits)
      total = total + lc.generator_weight * terms["generator_gan_loss"]
    if lc.perceptual_weight:
      terms["perceptual_loss"] = perceptual_distance(perceptual_params, recon, images)
      total = total + lc.perceptual_weight * terms["perceptual_loss"]
    return total, (recon, quantizer_state, terms, q_out.stats)

  (g_loss, (recon, quantizer_state, g_terms, q_stats)), g_grads = jax.value_and_grad(
      generator_loss, has_aux=True)(state.g_params)
  g_updates, g_opt_state = optimizer.update(g_grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, g_updates)
  if lc.split_every_steps:
    g_params, quantizer_state = _split_codebook(g_params, quantizer_state, state.step + 1,
                                                rng, lc.split_every_steps)
  # The decay ramps up as (1 + t) / (10 + t) until it reaches ema_decay, so that short runs
  # do not keep most of the initialisation in their EMA (TF's ExponentialMovingAverage).
  step = state.step.astype(jnp.float32)
  decay = jnp.minimum(lc.ema_decay, (1.0 + step) / (10.0 + step))
  ema_params = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params,
                            g_params)
  metrics = {"generator_loss": g_loss, **g_terms, **q_stats,
             "generator_grad_norm": optax.global_norm(g_grads)}
  state = state.replace(step=state.step + 1, g_params=g_params, ema_params=ema_params,
                        g_opt_state=g_opt_state, quantizer_state=quantizer_state)
  if lc.generator_weight:  # without a GAN term the discriminator has nothing to do
    state, d_metrics = _discriminator_update(state, images, jax.lax.stop_gradient(recon),
                                             discriminator=discriminator, optimizer=optimizer,
                                             lc=lc)
    metrics.update(d_metrics)
  return state, jax.tree.map(lambda x: x.astype(jnp.float32), metrics)


def _discriminator_update(state: Stage1State, images, fake, *, discriminator, optimizer, lc):
  """Logistic GAN loss + R1 on reals (+ LeCam) for the discriminator, on the step's fakes."""

  def discriminator_loss(d_params):
    apply = lambda x: discriminator.apply({"params": d_params}, x)
    r1, real_logits = losses.r1_penalty(apply, images)
    fake_logits = apply(fake)
    terms = {"discriminator_gan_loss": losses.discriminator_gan_loss(real_logits, fake_logits),
             "r1_penalty": r1}
    total = terms["discriminator_gan_loss"] + lc.r1_weight * r1
    lecam_ema = losses.update_lecam_ema(*state.lecam_ema, real_logits, fake_logits,
                                        lc.lecam_ema_decay)
    if lc.lecam_weight:
      terms["lecam_loss"] = losses.lecam_regularizer(real_logits, fake_logits, *lecam_ema)
      total = total + lc.lecam_weight * terms["lecam_loss"]
    terms["real_logits"] = jnp.mean(real_logits)
    terms["fake_logits"] = jnp.mean(fake_logits)
    return total, (terms, lecam_ema)

  (d_loss, (d_terms, lecam_ema)), d_grads = jax.value_and_grad(
      discriminator_loss, has_aux=True)(state.d_params)
  d_updates, d_opt_state = optimizer.update(d_grads, state.d_opt_state, state.d_params)
  d_params = optax.apply_updates(state.d_params, d_updates)
  metrics = {"discriminator_loss": d_loss, **d_terms,
             "discriminator_grad_norm": optax.global_norm(d_grads)}
  return state.replace(d_params=d_params, d_opt_state=d_opt_state, lecam_ema=lecam_ema), metrics


def _split_codebook(g_params, quantizer_state, step, rng, every):
  """Every `every` steps, re-seeds unused VQ codes next to used ones and resets the counts."""
  counts = quantizer_state["vq_usage"]["quantizer"]["counts"]
  codebook = g_params["quantizer"]["codebook"]
  due = (step % every) == 0
  new_codebook = jnp.where(due, split_unused_codes(codebook, counts, rng), codebook)
  g_params = flax.core.copy(g_params, {"quantizer": {"codebook": new_codebook}}) \
      if isinstance(g_params, flax.core.FrozenDict) else \
      {**g_params, "quantizer": {**g_params["quantizer"], "codebook": new_codebook}}
  counts = jnp.where(due, jnp.zeros_like(counts), counts)
  return g_params, {"vq_usage": {"quantizer": {"counts": counts}}}


def setup(config: ml_collections.ConfigDict, perceptual_loss="from config") -> loop.Setup:
  """Stage I's networks, losses, optimizer and data, for the shared trainer skeleton.

  `perceptual_loss`: a perceptual.PerceptualLoss (or None) to use instead of loading the one
  config.stage1.perceptual_loss names (bench.py passes one with synthetic weights).
  """
  s = config.stage1
  if perceptual_loss == "from config":
    perceptual_loss = perceptual.load(s.perceptual_loss, s.perceptual_weights)
  status = perceptual.status(perceptual_loss)
  autoencoder = factory.build_tokenizer(config)
  discriminator = factory.build_discriminator(config)
  optimizer = make_optimizer(s)
  batches = functools.partial(pipeline.train_batches, config, s.batch_size)

  reconstruct = jax.jit(lambda variables, x: autoencoder.apply(variables, x, train=False)[0])

  def log_reconstructions(step, state, batch, reporter):
    if step % s.image_every_steps == 0 or step == s.num_train_steps:
      originals = batch["image"][:8]
      recon = reconstruct({"params": state.ema_params, **state.quantizer_state}, originals)
      grid = images_lib.image_grid(np.concatenate([parallel.host_array(originals),
                                                  parallel.host_array(recon)]))
      reporter.images(step, {"originals_and_ema_reconstructions": grid[None]})

  def summary(state):
    if int(state.step) == 0:
      parameter_overview.log_parameter_overview(state.g_params)
    return (f"{status}\nstage1: {factory.count_params(state.g_params):,} generator and "
            f"{factory.count_params(state.d_params):,} discriminator parameters")

  rng = jax.random.key(config.seed)
  return loop.Setup(
      name="stage1",
      init=functools.partial(create_train_state, autoencoder=autoencoder,
                             discriminator=discriminator, optimizer=optimizer,
                             image_size=config.dataset.image_size),
      train_step=functools.partial(
          train_step, autoencoder=autoencoder, discriminator=discriminator,
          perceptual_distance=perceptual_loss and perceptual_loss.distance, optimizer=optimizer,
          loss_config=LossConfig.from_config(config, perceptual_on=perceptual_loss is not None)),
      batches=batches, init_rng=rng, step_rng=jax.random.fold_in(rng, 1), summary=summary,
      frozen=perceptual_loss.params if perceptual_loss else {},
      on_step=log_reconstructions, run_info={"perceptual_loss": status})


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Stage1State:
  """Trains Stage I into `workdir`/stage1, resuming from its newest checkpoint."""
  return loop.train(setup(config), config, workdir)
