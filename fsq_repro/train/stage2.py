"""Stage II: a MaskGIT transformer on the frozen Stage I tokens.

Tokens come from the frozen EMA tokenizer, either "online" (stage2.tokens; MAGVIT's
trainer: every freshly augmented training batch is tokenized inside the step) or
"precomputed" (one pass of the training split into token shards under `workdir`/stage2/tokens,
data/extract.py, resumable). The transformer learns to predict masked tokens: cosine masking
with the FSQ paper's lower bound on the masked fraction, label-smoothed loss on masked
positions only (per-example means, as MaskGIT), class labels dropped to MASK for
classifier-free guidance, AdamW with warmup, weight decay on kernels only, and gradient
clipping. `stage2.init_from` starts from another run's transformer (fine-tuning).
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

from fsq_repro import api, checkpoints, timing
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


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """optax.clip_by_global_norm with the clipping as one multiply, g * min(1, max_norm/|g|),
  where optax divides, (g / |g|) * max_norm: equal to float32 round-off (bitwise when no
  clipping happens). XLA's CPU backend fuses a multiply into each consumer (the two Adam
  moments) but writes a divided gradient tree out first: 13% of the 128 px step."""
  def update(updates, state, params=None):
    del params
    scale = jnp.minimum(1.0, max_norm / optax.tree.norm(updates))
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(s: ml_collections.ConfigDict) -> optax.GradientTransformation:
  schedule = optax.join_schedules(
      [optax.linear_schedule(0.0, s.learning_rate, max(s.warmup_steps, 1)),
       optax.constant_schedule(s.learning_rate)], [s.warmup_steps])
  return optax.chain(clip_by_global_norm(s.grad_clip_norm),
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


def train_step(state: Stage2State, batch, rng, frozen=(), *, model, layout, optimizer, s,
               tokenizer=None):
  """One AdamW step on a batch: {"tokens", "label"}, or {"image", "label"} with the frozen
  `tokenizer` (a Stage I model) and its variables `frozen`, which code the images first."""
  if tokenizer is None:
    tokens = batch["tokens"]
  else:
    indices = tokenizer.apply(frozen, batch["image"], method="encode")[1].indices
    tokens = jax.lax.stop_gradient(indices).reshape(indices.shape[0], -1)
  mask_rng, dropout_rng = jax.random.split(rng)
  input_ids, targets, loss_mask = masking.make_training_inputs(
      mask_rng, tokens, batch["label"], layout, s.min_mask_fraction, s.label_drop_rate)

  def loss_fn(params):
    logits = model.apply({"params": params}, input_ids, train=True,
                         rngs={"dropout": dropout_rng}, codebook_size=layout.codebook_size)
    loss = masking.masked_cross_entropy(logits, targets, loss_mask, s.label_smoothing,
                                        s.loss_reduction)
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


def setup(config: ml_collections.ConfigDict, layout: transformer_lib.TokenLayout, *,
          token_batches: tokens_lib.TokenBatches | None = None,
          tokenizer: api.Tokenizer | None = None) -> loop.Setup:
  """Stage II's transformer, loss, optimizer and batches, for the trainer skeleton: token
  maps from `token_batches` (precomputed), or training images coded by `tokenizer` (online)."""
  s = config.stage2
  model, optimizer = factory.build_transformer(config, layout), make_optimizer(s)
  if (token_batches is None) == (tokenizer is None):
    raise ValueError("stage2.setup takes token_batches (precomputed) or a tokenizer (online)")
  if tokenizer is None:
    batches, source = token_batches.iterate, f"{len(token_batches.tokens):,} token maps"
  else:
    batches = functools.partial(pipeline.train_batches, config, s.batch_size,
                                keys=("image", "label"))

    source = "training images tokenized online"

  def summary(state):
    if int(state.step) == 0:
      parameter_overview.log_parameter_overview(state.params)
    return (f"stage2: {factory.count_params(state.params):,} transformer parameters, "
            f"{source}, {factory.tokens_per_image(config)} tokens per image, "
            f"vocabulary {layout.vocab_size}"
            + (f"; parameters of {s.init_from}" if s.init_from and not int(state.step) else ""))

  rng = jax.random.key(config.seed)
  return loop.Setup(
      name="stage2",
      init=functools.partial(create_train_state, model=model, optimizer=optimizer,
                             sequence_length=factory.tokens_per_image(config) + 1),
      train_step=functools.partial(train_step, model=model, layout=layout,
                                   optimizer=optimizer, s=s,
                                   tokenizer=tokenizer and tokenizer.model),
      batches=batches, init_rng=jax.random.fold_in(rng, 2),
      step_rng=jax.random.fold_in(rng, 3), summary=summary,
      frozen=tokenizer.variables if tokenizer else (),
      start_from=s.init_from and functools.partial(start_from, s.init_from),
      run_info={"token_layout": dataclasses.asdict(layout)})


def start_from(source: str, state: Stage2State) -> Stage2State:
  """`state` with the transformer parameters of the newest Stage II checkpoint of the
  workdir `source` (in the shardings `state` has); the optimizer state stays fresh."""
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                          state.params)
  restored = checkpoints.restore_latest(workdir_lib.checkpoint_dir(source, "stage2"),
                                        {api.TRANSFORMER_PARAMS: abstract})
  return state.replace(params=restored[api.TRANSFORMER_PARAMS])


def token_layout(config) -> transformer_lib.TokenLayout:
  """The Stage II vocabulary of `config`: its codebook and its dataset's classes."""
  return factory.token_layout(config, pipeline.num_classes(config.dataset.name,
                                                           data_dir=config.dataset.data_dir))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Stage2State:
  """Trains Stage II into `workdir`/stage2 (resuming); precomputed tokens are extracted first."""
  layout = token_layout(config)
  load_tokenizer = lambda: api.Tokenizer.from_workdir(
      workdir_lib.stage1_workdir(config, workdir), config)
  if config.stage2.tokens == "online":
    return loop.train(setup(config, layout, tokenizer=load_tokenizer()), config, workdir)
  token_dir = workdir_lib.token_dir(workdir)
  if not tokens_lib.is_complete(token_dir):
    extract.extract_tokens(config, token_dir, load_tokenizer())
  tokens, labels = tokens_lib.load_all(token_dir)
  timing.mark("tokens")  # extracting the training split's tokens, or reading them
  batches = tokens_lib.TokenBatches(tokens, labels, global_batch_size=config.stage2.batch_size,
                                    seed=config.seed, process_index=jax.process_index(),
                                    process_count=jax.process_count())
  return loop.train(setup(config, layout, token_batches=batches), config, workdir)
