"""Stage II: a MaskGIT transformer on the frozen Stage I tokens.

First the EMA tokenizer encodes the training split once into token shards under
`workdir`/stage2/tokens (resumable). Then the transformer learns to predict masked tokens:
cosine masking with the FSQ paper's lower bound on the masked fraction, label-smoothed
loss on masked positions only, class labels dropped to MASK for classifier-free guidance,
AdamW with warmup, weight decay on kernels only, and gradient clipping.
"""

import functools
import json
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import parameter_overview

from fsq_repro import config_lib
from fsq_repro.data import pipeline, tokens as tokens_lib
from fsq_repro.models import transformer as transformer_lib
from fsq_repro.models.vqgan import count_params
from fsq_repro.train import checkpointing, distributed, loop, masking, reporting, stage1

SHARD_BATCHES = 50  # batches per token shard


def stage_dir(workdir: str) -> str:
  return os.path.join(workdir, "stage2")


def stage1_workdir(config, workdir: str) -> str:
  return config.stage1_workdir or workdir


def check_stage1(config, workdir: str) -> None:
  """Fails with one line unless a matching Stage I run exists (before any compilation)."""
  source = stage1_workdir(config, workdir)
  checkpoints = os.path.join(stage1.stage_dir(source), "checkpoints")
  if not checkpointing.finished_steps(checkpoints):
    raise FileNotFoundError(f"no Stage I checkpoint in {checkpoints}; run --mode=stage1 with "
                            f"--workdir={source} first, or set --config.stage1_workdir")
  saved = os.path.join(stage1.stage_dir(source), "config.json")
  if not os.path.exists(saved):
    raise FileNotFoundError(f"{saved} is missing, so the Stage I run's quantizer is unknown; "
                            "rerun --mode=stage1 in that workdir")
  with open(saved) as f:
    trained = json.load(f)["config"]["quantizer"]
  ours = config.quantizer
  for field in ("kind", "codebook_size") + (("levels",) if ours.kind == "fsq" else ("codebook_dim",)):
    theirs, mine = trained[field], ours[field]
    if (list(theirs) if isinstance(theirs, (list, tuple)) else theirs) != \
        (list(mine) if isinstance(mine, (list, tuple)) else mine):
      raise ValueError(f"quantizer.{field}={mine} does not match the Stage I run in {source} "
                       f"({theirs}); use the Stage I config's quantizer arguments")


def token_layout(config) -> transformer_lib.TokenLayout:
  return transformer_lib.TokenLayout(
      codebook_size=config.quantizer.codebook_size,
      num_classes=pipeline.num_classes(config.dataset.name, data_dir=config.dataset.data_dir))


def tokens_per_image(config) -> int:
  side = config.dataset.image_size // 2**(len(config.model.channel_multipliers) - 1)
  return side * side


def extract_tokens(config, workdir: str, log=print) -> str:
  """Encodes one pass of the training split (train-time crops and flips) into token shards."""
  directory = os.path.join(stage_dir(workdir), "tokens")
  if tokens_lib.is_complete(directory):
    return directory
  os.makedirs(directory, exist_ok=True)
  mesh = distributed.make_mesh()
  autoencoder, variables = stage1.load_tokenizer(config, stage1_workdir(config, workdir))
  encode = jax.jit(lambda v, x: autoencoder.apply(v, x, method="encode")[1].indices)
  s = config.stage2
  local_batch = distributed.per_process_batch_size(s.batch_size)
  total = pipeline.num_examples(config.dataset.name, config.dataset.train_split,
                                data_dir=config.dataset.data_dir)
  steps = total // s.batch_size
  num_shards = -(-steps // SHARD_BATCHES)
  process = jax.process_index()
  for shard in range(num_shards):
    path = tokens_lib.shard_path(directory, process, shard)
    if os.path.exists(path):
      continue  # written by an earlier, interrupted extraction
    first = shard * SHARD_BATCHES
    batches = pipeline.create_split(
        config.dataset.name, config.dataset.train_split, batch_size=local_batch,
        image_size=config.dataset.image_size, train=True, seed=config.seed, start_step=first,
        data_dir=config.dataset.data_dir)
    shard_tokens, shard_labels = [], []
    for _ in range(first, min(first + SHARD_BATCHES, steps)):
      batch = next(batches)
      images = distributed.global_batch({"image": batch["image"]}, mesh)["image"]
      shard_tokens.append(_local_rows(encode(variables, images)))
      shard_labels.append(batch["label"])
    tokens_lib.write_shard(path, np.concatenate(shard_tokens), np.concatenate(shard_labels),
                           config.quantizer.codebook_size)
    log(f"stage2: extracted token shard {shard + 1}/{num_shards}")
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("token extraction")
  if process == 0:
    tokens_lib.mark_complete(directory, num_shards=num_shards, steps=steps,
                             batch_size=s.batch_size)
  return directory


def _local_rows(array: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in order."""
  shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
  rows, seen = [], set()
  for shard in shards:
    start = shard.index[0].start or 0
    if start not in seen:  # replicas of the same rows on other local devices
      seen.add(start)
      rows.append(np.asarray(shard.data))
  return np.concatenate(rows)


def build_transformer(config, layout) -> transformer_lib.MaskGITTransformer:
  s = config.stage2
  return transformer_lib.MaskGITTransformer(
      vocab_size=layout.vocab_size, hidden_size=s.hidden_size, num_layers=s.num_layers,
      num_heads=s.num_heads, mlp_dim=s.mlp_dim, max_len=tokens_per_image(config) + 1,
      dropout_rate=s.dropout_rate, attention_dropout_rate=s.dropout_rate,
      dtype=stage1.DTYPES[s.dtype], remat=s.remat)


def make_optimizer(s: ml_collections.ConfigDict) -> optax.GradientTransformation:
  schedule = optax.join_schedules(
      [optax.linear_schedule(0.0, s.learning_rate, max(s.warmup_steps, 1)),
       optax.constant_schedule(s.learning_rate)], [s.warmup_steps])
  decay_kernels_only = lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: jax.tree_util.keystr(path).endswith("['kernel']"), params)
  return optax.chain(optax.clip_by_global_norm(s.grad_clip_norm),
                     optax.adamw(schedule, b1=s.adam_b1, b2=s.adam_b2,
                                 weight_decay=s.weight_decay, mask=decay_kernels_only))


@flax.struct.dataclass
class Stage2State:
  step: jax.Array
  params: Any
  opt_state: Any


def create_train_state(rng, *, model, optimizer, sequence_length) -> Stage2State:
  params = model.init(rng, jnp.zeros((1, sequence_length), jnp.int32), train=False)["params"]
  return Stage2State(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=optimizer.init(params))


def train_step(state: Stage2State, batch, rng, *, model, layout, optimizer, s):
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


def abstract_train_state(config, layout, mesh):
  model, optimizer = build_transformer(config, layout), make_optimizer(config.stage2)
  init = functools.partial(create_train_state, model=model, optimizer=optimizer,
                           sequence_length=tokens_per_image(config) + 1)
  abstract, shardings = distributed.abstract_state(init, jax.random.key(config.seed), mesh,
                                                   config.mesh)
  return model, optimizer, init, abstract, shardings


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Stage2State:
  """Extracts tokens if needed, then trains Stage II into `workdir`/stage2 (resuming)."""
  directory = stage_dir(workdir)
  s = config.stage2
  check_stage1(config, workdir)
  mesh = distributed.make_mesh()
  layout = token_layout(config)
  token_dir = extract_tokens(config, workdir)
  all_tokens, all_labels = tokens_lib.load_all(token_dir)
  batches = tokens_lib.TokenBatches(all_tokens, all_labels, global_batch_size=s.batch_size,
                                    seed=config.seed, process_index=jax.process_index(),
                                    process_count=jax.process_count())

  model, optimizer, init, abstract_state, shardings = abstract_train_state(config, layout, mesh)
  rng = jax.random.key(config.seed)
  checkpointer = checkpointing.Checkpointer(os.path.join(directory, "checkpoints"),
                                            every_steps=s.checkpoint_every_steps,
                                            keep=s.keep_checkpoints)
  state = checkpointer.restore_or_init(
      lambda: jax.jit(init, out_shardings=shardings)(jax.random.fold_in(rng, 2)), abstract_state)
  start_step = int(state.step)
  reporter = reporting.Reporter(directory, num_train_steps=s.num_train_steps,
                                start_step=start_step)
  if jax.process_index() == 0:
    config_lib.write_run_config(directory, config)
  if start_step == 0:
    parameter_overview.log_parameter_overview(state.params)
  reporter.text(f"stage2: {count_params(state.params):,} transformer parameters, "
                f"{len(all_tokens):,} token maps of {tokens_per_image(config)} tokens, "
                f"vocabulary {layout.vocab_size}; steps {start_step} -> {s.num_train_steps}")
  step_fn = jax.jit(functools.partial(train_step, model=model, layout=layout,
                                      optimizer=optimizer, s=s),
                    out_shardings=(shardings, distributed.replicated(mesh)), donate_argnums=0)
  global_batches = distributed.prefetch_to_device(batches.iterate(start_step), mesh)
  return loop.run(state, step_fn=step_fn, batches=global_batches,
                  rng=jax.random.fold_in(rng, 3), start_step=start_step,
                  num_steps=s.num_train_steps, log_every=s.log_every_steps,
                  checkpointer=checkpointer, reporter=reporter, name="stage2")


def load_transformer(config, workdir: str):
  """The trained Stage II transformer of `workdir`/stage2: (model, params, layout)."""
  directory = os.path.join(stage_dir(workdir), "checkpoints")
  if not checkpointing.finished_steps(directory):
    raise FileNotFoundError(f"no Stage II checkpoint in {directory}; run --mode=stage2 first")
  layout = token_layout(config)
  model, _, _, abstract_state, _ = abstract_train_state(config, layout, distributed.make_mesh())
  checkpointer = checkpointing.Checkpointer(directory, every_steps=1, keep=1)
  state = checkpointer.restore_or_init(None, abstract_state)
  checkpointer.close()
  return model, state.params, layout
