"""UViM's Stage II: the task model on the frozen Stage I's codes (big_vision
`trainers/proj/uvim/train.py`).

The frozen label autoencoder (its newest checkpoint, evaluation mode, with context) codes
each training batch's labels; code k is token k + 1 and the task model learns them from
the task's input image by teacher forcing, cross-entropy without label smoothing (mean per
sequence, then over the batch). The encoder may start from an AugReg ViT `.npz`
(stage2.encoder_init) and learns at stage2.encoder_lr_multiplier times the learning rate;
big_vision's Adafactor, no clipping, warmup-cosine. stage2.seed draws the initialisation,
dropout and the order of the batches: Table 2's three runs per row differ only in it.
"""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from clu import parameter_overview

from fsq_repro import api
from fsq_repro import workdir as workdir_lib
from fsq_repro.converters import big_vision_vit
from fsq_repro.data import pipeline
from fsq_repro.models import factory, uvim_task
from fsq_repro.train import loop, uvim_stage1

ENCODER_PARAMS = ("EmbedPatches", "pos_embedding_encoder", "encoder")  # TaskModel's encoder


@flax.struct.dataclass
class UvimStage2State:
  step: jax.Array
  params: Any  # api.TaskPredictor reads these
  opt_state: Any


def encoder_lr_multiplier(multiplier: float):
  """path -> `multiplier` for the encoder's parameters, 1 for the decoder's."""
  return lambda path: multiplier if path[0].key in ENCODER_PARAMS else 1.0


def create_train_state(rng, *, model, optimizer, encoder_init=None) -> UvimStage2State:
  size = model.image_size
  params = model.init(rng, jnp.zeros((1, size, size, 3), jnp.float32),
                      jnp.zeros((1, model.seq_len), jnp.int32))["params"]
  if encoder_init:
    params = big_vision_vit.load_task_encoder(params, encoder_init,
                                              grid=size // model.patch_size)
  return UvimStage2State(step=jnp.zeros((), jnp.int32), params=params,
                         opt_state=optimizer.init(params))


def train_step(state: UvimStage2State, batch, rng, frozen, *, model, coder_model, task,
               optimizer):
  """One step on {"image"}: the frozen Stage I (variables `frozen`) codes the labels, the
  task model is trained to predict those codes' tokens from the task's input image."""
  example = task.prepare(batch)
  codes = coder_model.apply(frozen, example["labels"], example["context"],
                            method="encode")[1].indices
  tokens = uvim_task.codes_to_tokens(jax.lax.stop_gradient(codes))

  def loss_fn(params):
    logits = model.apply({"params": params}, example["image"], tokens, train=True,
                         rngs={"dropout": rng})
    per_token = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), tokens)
    loss = jnp.mean(jnp.mean(per_token, axis=-1))
    return loss, jnp.mean((jnp.argmax(logits, -1) == tokens).astype(jnp.float32))

  (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "token_accuracy": accuracy, "grad_norm": optax.global_norm(grads)}
  return (state.replace(step=state.step + 1, params=params, opt_state=opt_state),
          jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics))


def setup(config: ml_collections.ConfigDict, coder: api.LabelCoder) -> loop.Setup:
  """UViM Stage II's model, loss, optimizer and batches, on the frozen Stage I `coder`."""
  s = config.stage2
  model = factory.build_task_model(config)
  optimizer = uvim_stage1.make_optimizer(s, encoder_lr_multiplier(s.encoder_lr_multiplier))

  def summary(state):
    if int(state.step) == 0:
      parameter_overview.log_parameter_overview(state.params)
    init = f"encoder from {s.encoder_init}" if s.encoder_init else "encoder from scratch"
    return (f"uvim stage2 ({coder.task.name}): {factory.count_params(state.params):,} task "
            f"model parameters ({init}), {model.seq_len} tokens, vocabulary "
            f"{model.vocab_size}, seed {s.seed}")

  rng = jax.random.key(s.seed)
  return loop.Setup(
      name="stage2",
      init=functools.partial(create_train_state, model=model, optimizer=optimizer,
                             encoder_init=s.encoder_init),
      train_step=functools.partial(train_step, model=model, coder_model=coder.model,
                                   task=coder.task, optimizer=optimizer),
      batches=functools.partial(pipeline.train_batches, config, s.batch_size,
                                keys=("image", *coder.task.maps), seed=s.seed),
      init_rng=jax.random.fold_in(rng, 2), step_rng=jax.random.fold_in(rng, 3),
      summary=summary, frozen=coder.variables)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> UvimStage2State:
  """Trains UViM's Stage II into `workdir`/stage2 on the Stage I of config.stage1_workdir
  (default `workdir`), resuming from its newest checkpoint."""
  coder = api.LabelCoder.from_workdir(workdir_lib.stage1_workdir(config, workdir), config)
  return loop.train(setup(config, coder), config, workdir)
