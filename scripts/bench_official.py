"""Our train steps against google-research/maskgit's networks, side by side in one process.

  python scripts/bench.py --official_path=/path/to/maskgit/checkout --parts=official

`--official_path` is a checkout of https://github.com/google-research/maskgit (the directory
holding the `maskgit` package); it is put on sys.path for this part only and is never a
dependency. Three workloads, at the same config on both sides:

- Stage II, the paper's 24 x 768 transformer at 65 tokens (128 px) and 257 tokens (256 px),
  training mode with dropout 0.1: theirs is maskgit/nets/maskgit_transformer.py's
  Transformer with maskgit/libml/losses.py's weighted_sequence_cross_entropy_loss on the
  image positions and optax's clip_by_global_norm + AdamW (MaskGIT's trainer is not public);
  both get the same masked inputs (train/masking.py). Ours is stage2's own train_step.
- Stage I, 128 px, batch 4, L2 + VQ (commitment 0.25, entropy 0.1), no discriminator and no
  perceptual loss: theirs is maskgit/nets/vqgan_tokenizer.py's VQVAE (encode, decode) under
  stage1's Adam; ours is stage1's own train_step (which also updates the EMA weights).

Every step is jitted with its state donated, on synthetic weights; rounds interleave the two
sides (one warm-up step each, then `steps` steps per side per round), and the best round
counts. MFU: the workload's FLOPs from XLA's cost analysis of the official compiled step
(standard convolutions and dense layers, which XLA counts in full), over each side's wall
time, against the run's matmul peak.
"""

import importlib
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from fsq_repro import config_lib, parallel
from fsq_repro.data import tokens as tokens_lib
from fsq_repro.models import factory
from fsq_repro.train import loop, masking, stage1, stage2


def import_official(path: str):
  """The official modules from the checkout at `path`, or a SystemExit saying what is wrong."""
  sys.path.insert(0, path)
  try:
    return {name: importlib.import_module(f"maskgit.{name}")
            for name in ("nets.maskgit_transformer", "nets.vqgan_tokenizer", "libml.losses")}
  except ImportError as e:
    raise SystemExit(f"error: --official_path={path} has no importable maskgit package ({e}); "
                     "pass a checkout of github.com/google-research/maskgit") from None
  finally:
    sys.path.remove(path)


def _jit_official(step):
  return jax.jit(step, donate_argnums=(0,))


def official_stage2(official, config, layout, batch, synthetic_state):
  """(step, state, args) of the official transformer's training step on `batch`."""
  s = config.stage2
  model = official["nets.maskgit_transformer"].Transformer(
      vocab_size=layout.vocab_size, hidden_size=s.hidden_size, num_hidden_layers=s.num_layers,
      num_attention_heads=s.num_heads, intermediate_size=s.mlp_dim,
      hidden_dropout_prob=s.dropout_rate, attention_probs_dropout_prob=s.dropout_rate,
      max_position_embeddings=factory.tokens_per_image(config) + 1)
  loss_lib = official["libml.losses"]
  schedule = optax.join_schedules(
      [optax.linear_schedule(0.0, s.learning_rate, max(s.warmup_steps, 1)),
       optax.constant_schedule(s.learning_rate)], [s.warmup_steps])
  optimizer = optax.chain(optax.clip_by_global_norm(s.grad_clip_norm),
                          optax.adamw(schedule, b1=s.adam_b1, b2=s.adam_b2,
                                      weight_decay=s.weight_decay, mask=stage2.decay_mask))

  def step(state, batch, rng):
    params, opt_state = state
    mask_rng, dropout_rng = jax.random.split(rng)
    input_ids, targets, loss_mask = masking.make_training_inputs(
        mask_rng, batch["tokens"], batch["label"], layout, s.min_mask_fraction,
        s.label_drop_rate)

    def loss_fn(params):
      logits = model.apply({"params": params}, input_ids, deterministic=False,
                           rngs={"dropout": dropout_rng})
      return loss_lib.weighted_sequence_cross_entropy_loss(
          labels=targets, logits=logits[:, 1:], weights=loss_mask.astype(jnp.float32),
          label_smoothing=s.label_smoothing)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  ids = jnp.zeros((1, factory.tokens_per_image(config) + 1), jnp.int32)
  params = synthetic_state(jax.eval_shape(model.init, jax.random.key(0), ids)["params"])
  return _jit_official(step), (params, optimizer.init(params)), (batch, jax.random.key(2))


def official_stage1(official, config, images, synthetic_state):
  """(step, state, args) of the official VQVAE's training step: L2 + its VQ losses."""
  q, m = config.quantizer, config.model
  vqvae = ml_collections.ConfigDict({"vqvae": dict(
      quantizer="vq", codebook_size=int(q.codebook_size), commitment_cost=q.commitment_cost,
      entropy_loss_ratio=q.entropy_loss_weight, entropy_temperature=q.entropy_temperature,
      entropy_loss_type="softmax", filters=m.filters, num_res_blocks=m.num_res_blocks,
      channel_multipliers=list(m.channel_multipliers), embedding_dim=q.codebook_dim,
      conv_downsample=False, activation_fn="swish", norm_type="GN")})
  tokenizer = official["nets.vqgan_tokenizer"]
  model = tokenizer.VQVAE(config=vqvae, train=True)
  optimizer = stage1.make_optimizer(config.stage1)

  def reconstruct(params, images):
    quantized, result = model.apply({"params": params}, {"image": images},
                                    method=tokenizer.VQVAE.encode)
    return model.apply({"params": params}, quantized, method=tokenizer.VQVAE.decode), result

  def step(state, images):
    params, opt_state = state

    def loss_fn(params):
      recon, result = reconstruct(params, images)
      return jnp.mean((recon - images) ** 2) + result["quantizer_loss"]

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  # VQVAE.__call__ passes encode's (quantized, dict) to the decoder; init through both parts.
  abstract = jax.eval_shape(lambda rng: model.init(rng, images, method=lambda mod, x: mod.decode(
      mod.encode({"image": x})[0])), jax.random.key(0))
  params = synthetic_state(abstract["params"])
  return _jit_official(step), (params, optimizer.init(params)), (images,)


def ours_stage2(config, layout, batch, mesh, synthetic_state):
  setup = stage2.setup(config, layout, token_batches=_unused_batches(config, layout))
  abstract, shardings = parallel.abstract_state(setup.init, setup.init_rng, mesh, config.mesh)
  step = loop.make_train_step(setup.train_step, shardings, mesh)
  return step, synthetic_state(abstract), (parallel.global_batch(batch, mesh),
                                           jax.random.key(2), ())


def _unused_batches(config, layout):
  """A token source for the setup; the timed steps are given their batch directly."""
  n = factory.tokens_per_image(config)
  return tokens_lib.TokenBatches(np.zeros((1, n), np.int32), np.zeros((1,), np.int32),
                                 global_batch_size=1, seed=0)


def ours_stage1(config, images, mesh, synthetic_state):
  setup = stage1.setup(config, perceptual_loss=None)
  abstract, shardings = parallel.abstract_state(setup.init, setup.init_rng, mesh, config.mesh)
  step = loop.make_train_step(setup.train_step, shardings, mesh)
  batch = parallel.global_batch({"image": images}, mesh)
  return step, synthetic_state(abstract), (batch, jax.random.key(1), setup.frozen)


def stage1_config(root: str, batch_size: int):
  config = config_lib.load_config(f"{root}/configs/tradeoff_128.py:quantizer=vq,codebook_bits=10")
  config.stage1.batch_size = batch_size
  config.stage1.generator_weight = 0.0  # no GAN term: the discriminator is not stepped
  config.stage1.perceptual_loss = "none"
  return config


def flops_per_step(step, state, args) -> float:
  cost = step.lower(state, *args).compile().cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def interleaved_seconds(sides: dict, rounds: int, steps: int) -> dict:
  """Best seconds per step of each side's (step, state, args), rounds interleaving sides."""
  states = {}
  for name, (step, state, args) in sides.items():  # compile and warm up
    state, out = step(state, *args)
    jax.block_until_ready(out)
    states[name] = state
  best = {name: float("inf") for name in sides}
  for _ in range(rounds):
    for name, (step, _, args) in sides.items():
      state, start = states[name], time.perf_counter()
      for _ in range(steps):
        state, out = step(state, *args)
      jax.block_until_ready((state, out))
      best[name] = min(best[name], (time.perf_counter() - start) / steps)
      states[name] = state
  return best


def side_by_side(official_path: str, root: str, load_config, token_layout, synthetic_state,
                 mesh, *, batch_size: int, stage1_batch_size: int, rounds: int,
                 steps: int, peak_flops: float, progress) -> dict:
  """The table's rows: official and our seconds per step, their ratio, and MFU, per workload."""
  official = import_official(official_path)
  rows = []
  for name in ("tradeoff_128", "maskgit_256"):
    config = load_config(name, "float32", batch_size)
    layout = token_layout(config)
    n = factory.tokens_per_image(config)
    rng = np.random.default_rng(0)
    batch = {"tokens": rng.integers(0, layout.codebook_size, (batch_size, n)).astype(np.int32),
             "label": rng.integers(0, layout.num_classes, (batch_size,)).astype(np.int32)}
    s = config.stage2
    sides = {"official": official_stage2(official, config, layout,
                                         jax.tree.map(jnp.asarray, batch), synthetic_state),
             "ours": ours_stage2(config, layout, batch, mesh, synthetic_state)}
    rows.append(_row(f"Stage II, {s.num_layers} x {s.hidden_size}, {n + 1} tokens "
                     f"({config.dataset.image_size} px), batch {batch_size}", sides, rounds,
                     steps, peak_flops))
    progress(rows[-1])
  config = stage1_config(root, stage1_batch_size)
  size = config.dataset.image_size
  images = np.random.default_rng(1).random((stage1_batch_size, size, size, 3), np.float32)
  sides = {"official": official_stage1(official, config, jnp.asarray(images), synthetic_state),
           "ours": ours_stage1(config, images, mesh, synthetic_state)}
  rows.append(_row(f"Stage I, {size} px, batch {stage1_batch_size}, L2 + VQ, "
                   "no discriminator", sides, rounds, steps, peak_flops))
  progress(rows[-1])
  return {"rows": rows, "markdown": markdown(rows), "rounds": rounds, "steps_per_round": steps}


def _row(workload, sides, rounds, steps, peak_flops) -> dict:
  flops = flops_per_step(*sides["official"])
  seconds = interleaved_seconds(sides, rounds, steps)
  return {"workload": workload, "official_step_s": seconds["official"],
          "ours_step_s": seconds["ours"], "ours_over_official": seconds["ours"]
          / seconds["official"], "flops_per_step": flops,
          "official_mfu": flops / seconds["official"] / peak_flops,
          "ours_mfu": flops / seconds["ours"] / peak_flops}


def markdown(rows) -> str:
  lines = ["| workload | official s/step | ours s/step | ours / official | MFU official | "
           "MFU ours |", "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['workload']} | {r['official_step_s']:.2f} | {r['ours_step_s']:.2f} | "
                 f"{r['ours_over_official']:.3f} | {r['official_mfu']:.1%} | "
                 f"{r['ours_mfu']:.1%} |")
  return "\n".join(lines)
