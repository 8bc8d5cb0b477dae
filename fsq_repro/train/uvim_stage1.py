"""UViM's Stage I: the label autoencoder (big_vision `trainers/proj/uvim/vqvae.py`).

Each training batch becomes the task's labels and context image (tasks/); the autoencoder
encodes the labels with the context, quantizes (FSQ, or UViM's EMA VQ whose dictionary
statistics, "vq_state", are updated in the same step over the global batch, with codebook
splitting), drops codes at random and decodes. The loss is the task's (colorization: MSE)
plus the quantizer's (FSQ: none; UViM's VQ: none, its commitment weight is 0). big_vision's
Adafactor with global-norm clipping, decoupled weight decay and a warmup-cosine schedule.
"""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from clu import parameter_overview

from fsq_repro import tasks
from fsq_repro.data import pipeline
from fsq_repro.models import factory
from fsq_repro.train import loop, optimizers


@flax.struct.dataclass
class UvimStage1State:
  step: jax.Array
  params: Any
  vq_state: Any  # {"vq_state": ...} for UViM's VQ, {} for FSQ
  opt_state: Any


def make_optimizer(s: ml_collections.ConfigDict, lr_multiplier=None):
  return optimizers.uvim_optimizer(
      learning_rate=s.learning_rate, weight_decay=s.weight_decay,
      total_steps=s.num_train_steps, warmup_steps=s.warmup_steps,
      grad_clip_norm=s.grad_clip_norm, beta2_cap=s.beta2_cap, lr_multiplier=lr_multiplier)


def example_shapes(config, task: tasks.Task) -> dict:
  """A one-example batch of zeros, as the pipeline gives it, prepared by the task."""
  return task.prepare(tasks.zeros_batch(task, config.dataset.image_size))


def create_train_state(rng, *, model, optimizer, example) -> UvimStage1State:
  variables = model.init(rng, example["labels"], example["context"], train=False)
  params = variables["params"]
  vq_state = {k: v for k, v in variables.items() if k != "params"}
  return UvimStage1State(step=jnp.zeros((), jnp.int32), params=params, vq_state=vq_state,
                         opt_state=optimizer.init(params))


def train_step(state: UvimStage1State, batch, rng, frozen=(), *, model, task, optimizer):
  """One step on {"image"}: the task's loss of the decoded labels, the dictionary update."""
  del frozen
  example = task.prepare(batch)
  dropout_rng, split_rng = jax.random.split(rng)

  def loss_fn(params):
    (decoded, out), vq_state = model.apply(
        {"params": params, **state.vq_state}, example["labels"], example["context"],
        train=True, rngs={"dropout": dropout_rng, "vq_split": split_rng},
        mutable=list(state.vq_state))
    loss, metrics = task.loss(decoded, example["labels"])
    return loss + out.loss, (metrics, out.stats, vq_state)

  (loss, (metrics, stats, vq_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, **metrics, **stats, "grad_norm": optax.global_norm(grads)}
  return (state.replace(step=state.step + 1, params=params, vq_state=dict(vq_state),
                        opt_state=opt_state),
          jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics))


def setup(config: ml_collections.ConfigDict) -> loop.Setup:
  """UViM Stage I's model, loss, optimizer and batches, for the shared trainer skeleton."""
  s, task = config.stage1, tasks.get(config.task.name)
  model = factory.build_label_autoencoder(config, task.labels)
  optimizer = make_optimizer(s)

  def summary(state):
    if int(state.step) == 0:
      parameter_overview.log_parameter_overview(state.params)
    return (f"uvim stage1 ({task.name}): {factory.count_params(state.params):,} label "
            f"autoencoder parameters, {factory.codebook_size(config.quantizer)} codes "
            f"({config.quantizer.kind}), {config.model.code_len} per image")

  rng = jax.random.key(config.seed)
  return loop.Setup(
      name="stage1",
      init=functools.partial(create_train_state, model=model, optimizer=optimizer,
                             example=example_shapes(config, task)),
      train_step=functools.partial(train_step, model=model, task=task, optimizer=optimizer),
      batches=functools.partial(pipeline.train_batches, config, s.batch_size,
                                keys=("image", *task.maps)),
      init_rng=rng, step_rng=jax.random.fold_in(rng, 1), summary=summary)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> UvimStage1State:
  """Trains UViM's Stage I into `workdir`/stage1, resuming from its newest checkpoint."""
  return loop.train(setup(config), config, workdir)
