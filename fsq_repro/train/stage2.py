"""Stage II: a MaskGIT transformer on the frozen Stage I tokens.

First the EMA tokenizer encodes the training split once into token shards under
`workdir`/stage2/tokens (data/extract.py, resumable). Then the transformer learns to predict
masked tokens: cosine masking with the FSQ paper's lower bound on the masked fraction,
label-smoothed loss on masked positions only, class labels dropped to MASK for
classifier-free guidance, AdamW with warmup, weight decay on kernels only, and gradient
clipping.
"""

import dataclasses
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
from fsq_repro.data import extract, pipeline
from fsq_repro.data import tokens as tokens_lib
from fsq_repro.models import factory
from fsq_repro.models import transformer as transformer_lib
from fsq_repro.train import loop, masking


def decay_mask(params):
  """True for the leaves AdamW decays: kernels (dense and attention), not biases, norms or
  embeddings."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: jax.tree_util.keystr(path).endswith("['kernel']"), params)


def make_optimizer(s: ml_collections.ConfigDict) -> optax.GradientTransformation:
  schedule = optax.join_schedules(
      [optax.linear_schedule(0.0, s.learning_rate, max(s.warmup_steps, 1)),
       optax.constant_schedule(s.learning_rate)], [s.warmup_steps])
  return optax.chain(optax.clip_by_global_norm(s.grad_clip_norm),
                     optax.adamw(schedule, b1=s.adam_b1, b2=s.adam_b2,
                                 weight_decay=s.weight_decay, mask=decay_mask))


@flax.struct.dataclass
class Stage2State:
  step: jax.Array
  params: Any  # api.Generator reads these
  opt_state: Any


def create_train_state(rng, *, model, optimizer, sequence_length) -> Stage2State:
  params = model.init(rng, jnp.zeros((1, sequence_length), jnp.int32), train=False)["params"]
  return Stage2State(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=optimizer.init(params))


def train_step(state: Stage2State, batch, rng, frozen=(), *, model, layout, optimizer, s):
  """One AdamW step on a batch of token maps; `frozen` is unused (no frozen networks)."""
  del frozen
  mask_rng, dropout_rng = jax.random.split(rng)
  input_ids, targets, loss_mask = masking.make_training_inputs(
      mask_rng, batch["tokens"], batch["label"], layout, s.min_mask_fraction, s.label_drop_rate)

  def loss_fn(params):
    logits = model.apply({"params": params}, input_ids, train=True,
                         rngs={"dropout": dropout_rng})
    logits = transformer_lib.image_logits(logits, layout)
    loss = masking.masked_cross_entropy(logits, targets, loss_mask, s.label_smoothing)
    correct = (jnp.argmax(logits, -1) == targets) & loss_mask
    return loss, jnp.sum(correct) / jnp.maximum(jnp.sum(loss_mask), 1)

  (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "masked_token_accuracy": accuracy,
             "masked_fraction": jnp.mean(loss_mask.astype(jnp.float32)),
             "grad_norm": optax.global_norm(grads)}
  return (state.replace(step=state.step + 1, params=params, opt_state=opt_state),
          jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics))


def setup(config: ml_collections.ConfigDict, layout: transformer_lib.TokenLayout,
          batches: tokens_lib.TokenBatches) -> loop.Setup:
  """Stage II's transformer, loss, optimizer and token batches, for the trainer skeleton."""
  s = config.stage2
  model, optimizer = factory.build_transformer(config, layout), make_optimizer(s)

  def summary(state):
    if int(state.step) == 0:
      parameter_overview.log_parameter_overview(state.params)
    return (f"stage2: {factory.count_params(state.params):,} transformer parameters, "
            f"{len(batches.tokens):,} token maps of {factory.tokens_per_image(config)} tokens, "
            f"vocabulary {layout.vocab_size}")

  rng = jax.random.key(config.seed)
  return loop.Setup(
      name="stage2",
      init=functools.partial(create_train_state, model=model, optimizer=optimizer,
                             sequence_length=factory.tokens_per_image(config) + 1),
      train_step=functools.partial(train_step, model=model, layout=layout,
                                   optimizer=optimizer, s=s),
      batches=batches.iterate, init_rng=jax.random.fold_in(rng, 2),
      step_rng=jax.random.fold_in(rng, 3), summary=summary,
      run_info={"token_layout": dataclasses.asdict(layout)})


def token_layout(config) -> transformer_lib.TokenLayout:
  """The Stage II vocabulary of `config`: its codebook and its dataset's classes."""
  return factory.token_layout(config, pipeline.num_classes(config.dataset.name,
                                                           data_dir=config.dataset.data_dir))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Stage2State:
  """Extracts tokens if needed, then trains Stage II into `workdir`/stage2 (resuming)."""
  token_dir = workdir_lib.token_dir(workdir)
  if not tokens_lib.is_complete(token_dir):
    tokenizer = api.Tokenizer.from_workdir(workdir_lib.stage1_workdir(config, workdir), config)
    extract.extract_tokens(config, token_dir, tokenizer)
  tokens, labels = tokens_lib.load_all(token_dir)
  batches = tokens_lib.TokenBatches(tokens, labels, global_batch_size=config.stage2.batch_size,
                                    seed=config.seed, process_index=jax.process_index(),
                                    process_count=jax.process_count())
  return loop.train(setup(config, token_layout(config), batches), config, workdir)
