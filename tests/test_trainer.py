"""The trainers' steps on tiny configs: what each term and option does to the state.

Each test builds a stage's `Setup` (the objects the shared skeleton trains) and runs its
train step on random batches in this process: VQ codebook splitting inside the step, the
EMA ramp, LeCam, the perceptual term, the weight-decay mask, bfloat16 compute, token
extraction and the Stage II batches.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fsq_repro import api, checkpoints, parallel
from fsq_repro import workdir as workdir_lib
from fsq_repro.data import extract, pipeline
from fsq_repro.data import tokens as tokens_lib
from fsq_repro.models import factory, perceptual, resnet, weights
from fsq_repro.train import loop, stage1, stage2
from tiny_configs import tiny_config

IMAGES = np.random.default_rng(0).random((3, 8, 16, 16, 3), np.float32)  # 3 batches of 8


# The "rbg" generator compiles far faster than threefry on CPU (a random init of the tiny
# Stage I: 5 s against 18 s); these tests need no particular random numbers.
RNG = jax.random.key(0, impl="rbg")


def run_steps(setup, batches, steps=None):
  """(initial state, [state after each step], [metrics of each step]) on one device."""
  mesh = parallel.make_mesh()
  _, shardings = parallel.abstract_state(setup.init, RNG, mesh, tiny_config().mesh)
  state = jax.jit(setup.init, out_shardings=shardings)(RNG)
  initial = jax.device_get(state)
  step = loop.make_train_step(setup.train_step, shardings, mesh)
  states, metrics = [], []
  for i, batch in enumerate(batches[:steps]):
    state, m = step(state, batch, jax.random.fold_in(RNG, i + 1), setup.frozen)
    states.append(jax.device_get(state))
    metrics.append(jax.device_get(m))
  return initial, states, metrics


def image_batches(n=3):
  return [{"image": jnp.asarray(x)} for x in IMAGES[:n]]


# --- Stage I ---------------------------------------------------------------------------------
# Two runs of three steps serve the Stage I tests (each compile costs tens of seconds on a
# CPU): VQ with the GAN, LeCam and usage counting, once splitting every 2 steps and once never.


def stage1_config(split_every_steps):
  config = tiny_config("quantizer=vq,codebook_bits=6")
  config.stage1.lecam_weight = 0.3
  config.stage1.lecam_ema_decay = 0.9
  config.quantizer.split_every_steps = split_every_steps
  return config


@pytest.fixture(scope="module")
def plain_run():
  """(initial state, states, metrics) of 3 steps that count code usage but never split."""
  return run_steps(stage1.setup(stage1_config(1000)), image_batches())


@pytest.fixture(scope="module")
def split_run():
  """The same 3 steps, splitting the codebook every 2 steps."""
  return run_steps(stage1.setup(stage1_config(2)), image_batches())


def test_ema_ramps_up_as_tensorflow_does(plain_run):
  """ema_t = d_t ema_{t-1} + (1 - d_t) params_t with d_t = min(0.999, (1 + t) / (10 + t))."""
  initial, states, _ = plain_run
  previous = initial.ema_params
  for t, state in enumerate(states):
    decay = min(0.999, (1 + t) / (10 + t))  # 0.1, 2/11, 3/12
    expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, previous, state.g_params)
    for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    previous = state.ema_params


def test_vq_codebook_splitting_inside_the_step(plain_run, split_run):
  """Every `split_every_steps` steps the step re-seeds the codes unused since the last split
  next to used ones and resets the counts; in between it only counts."""
  _, plain, _ = plain_run
  _, states, _ = split_run
  counts = [s.quantizer_state["vq_usage"]["quantizer"]["counts"] for s in states]
  assert counts[0].sum() == 8 * 8 * 8  # step 1 counted every token of its batch
  np.testing.assert_array_equal(counts[1], np.zeros(64))  # step 2 split, then reset
  assert counts[2].sum() == 8 * 8 * 8
  # Before the split both runs are the same run.
  np.testing.assert_array_equal(states[0].g_params["quantizer"]["codebook"],
                                plain[0].g_params["quantizer"]["codebook"])
  # Step 2's split: codes that steps 1 and 2 left unused moved, the used ones did not.
  used = plain[1].quantizer_state["vq_usage"]["quantizer"]["counts"] > 0
  assert 0 < used.sum() < 64
  split = states[1].g_params["quantizer"]["codebook"]
  unsplit = plain[1].g_params["quantizer"]["codebook"]
  np.testing.assert_array_equal(split[used], unsplit[used])
  moved = split[~used]
  assert not np.any(np.all(np.isclose(moved, unsplit[~used]), axis=-1))
  nearest_used = np.min(np.linalg.norm(moved[:, None] - unsplit[used][None], axis=-1), axis=1)
  scale = np.linalg.norm(unsplit[used], axis=-1).mean()
  assert np.all(nearest_used < 0.1 * scale)  # each sits next to a used code


def test_lecam_enters_the_discriminator_loss_with_its_moving_averages(plain_run):
  _, states, metrics = plain_run
  ema_real, ema_fake = 0.0, 0.0
  for state, m in zip(states, metrics):
    ema_real = 0.9 * ema_real + 0.1 * m["real_logits"]
    ema_fake = 0.9 * ema_fake + 0.1 * m["fake_logits"]
    np.testing.assert_allclose(state.lecam_ema, (ema_real, ema_fake), rtol=1e-5, atol=1e-7)
    total = m["discriminator_gan_loss"] + 10.0 * m["r1_penalty"] + 0.3 * m["lecam_loss"]
    np.testing.assert_allclose(m["discriminator_loss"], total, rtol=1e-5)
    assert m["lecam_loss"] >= 0


def synthetic_perceptual_weights(kind, directory):
  """A weight file of random weights of the real names and shapes for perceptual loss `kind`."""
  rng = np.random.default_rng(1)
  if kind == "lpips":
    images = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
    abstract = jax.eval_shape(perceptual.LPIPS().init, jax.random.key(0), images, images)
    network = perceptual.NETWORK_NAME
  else:
    images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    abstract = jax.eval_shape(resnet.ResNet50().init, jax.random.key(0), images)
    network = "resnet50_magvit"
  def synthetic(path, a):  # kernels scaled by fan-in, so 50 layers neither vanish nor blow up
    name = jax.tree_util.keystr(path)
    if name.endswith(("['var']", "['scale']")):
      return np.ones(a.shape, np.float32)
    if name.startswith("['lin"):  # LPIPS's 1x1 "lin" layers weigh distances: positive
      return np.abs(rng.normal(0, 0.05, a.shape)).astype(np.float32)
    if name.endswith("['kernel']"):
      fan_in = int(np.prod(a.shape[:-1]))
      return (rng.normal(0, 1, a.shape) / np.sqrt(fan_in)).astype(np.float32)
    return rng.normal(0, 0.05, a.shape).astype(np.float32)

  params = jax.tree_util.tree_map_with_path(synthetic, abstract["params"])
  path = os.path.join(directory, f"{kind}.msgpack")
  weights.save_params(path, params, network=network, source="synthetic test weights")
  return path


@pytest.mark.slow  # compiles VGG16's or ResNet-50's gradient: minutes on two cores
@pytest.mark.parametrize("kind", ["resnet50", "lpips"])
def test_perceptual_loss_is_on_with_weights_and_weighted_into_the_generator_loss(tmp_path, kind):
  """The paper's recipe (resnet50) or LPIPS: the step adds perceptual_weight times the
  loss's distance between the step's reconstructions and images."""
  config = tiny_config()
  config.stage1.generator_weight = 0.0
  config.stage1.perceptual_loss = kind
  config.stage1.perceptual_weights = synthetic_perceptual_weights(kind, str(tmp_path))
  setup = stage1.setup(config)
  assert setup.run_info["perceptual_loss"].startswith(f"perceptual loss: {kind} (")
  initial, _, metrics = run_steps(setup, image_batches(1))
  m = metrics[0]
  np.testing.assert_allclose(m["generator_loss"], m["reconstruction_loss"]
                             + m["quantizer_loss"] + 0.1 * m["perceptual_loss"], rtol=1e-6)
  assert m["perceptual_loss"] > 0
  # The term is the distance of the step's reconstructions (by the parameters before the
  # update) from the images.
  autoencoder = factory.build_tokenizer(config)
  recon, _ = autoencoder.apply({"params": initial.g_params, **initial.quantizer_state},
                               IMAGES[0], train=True)
  loss = perceptual.load(kind, config.stage1.perceptual_weights)
  np.testing.assert_allclose(m["perceptual_loss"], loss.distance(loss.params, recon, IMAGES[0]),
                             rtol=1e-4)


@pytest.mark.slow  # one more Stage I compile
def test_bfloat16_stage1_step_keeps_float32_state_and_close_losses(plain_run):
  config = stage1_config(1000)
  config.model.dtype = "bfloat16"
  _, states, metrics = run_steps(stage1.setup(config), image_batches(1))
  assert all(leaf.dtype != jnp.bfloat16 for leaf in jax.tree.leaves(states[0]))
  float32_loss = plain_run[2][0]["reconstruction_loss"]
  assert np.isfinite(metrics[0]["reconstruction_loss"])
  np.testing.assert_allclose(metrics[0]["reconstruction_loss"], float32_loss, rtol=0.05)


# --- Stage II ---------------------------------------------------------------------------------


def stage2_setup(config, num_maps=32):
  s = config.stage2
  s.hidden_size, s.num_layers, s.num_heads, s.mlp_dim, s.batch_size = 16, 1, 2, 32, 8
  layout = factory.token_layout(config, num_classes=8)
  rng = np.random.default_rng(2)
  tokens = rng.integers(0, layout.codebook_size, (num_maps, factory.tokens_per_image(config)))
  labels = rng.integers(0, 8, (num_maps,))
  batches = tokens_lib.TokenBatches(tokens, labels, global_batch_size=8, seed=0)
  return stage2.setup(config, layout, token_batches=batches), batches


@pytest.mark.slow  # two Stage II compiles; test_transformer checks bfloat16 in the fast suite
def test_bfloat16_stage2_step_keeps_float32_state_and_close_losses():
  losses = {}
  for dtype in ("float32", "bfloat16"):
    config = tiny_config()
    config.stage2.dtype = dtype
    setup, batches = stage2_setup(config)
    _, states, metrics = run_steps(setup, [batches.batch(0)])
    assert all(leaf.dtype != jnp.bfloat16 for leaf in jax.tree.leaves(states[0]))
    losses[dtype] = float(metrics[0]["loss"])
  assert np.isfinite(losses["bfloat16"])
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.05)


def test_weight_decay_reaches_kernels_only():
  config = tiny_config()
  setup, _ = stage2_setup(config)
  params = jax.eval_shape(setup.init, setup.init_rng).params
  mask = jax.tree_util.tree_flatten_with_path(stage2.decay_mask(params))[0]
  decayed = sorted(jax.tree_util.keystr(path) for path, on in mask if on)
  kept = sorted(jax.tree_util.keystr(path) for path, on in mask if not on)
  assert decayed == sorted(
      [f"['layer_0']['attention']['{n}']['kernel']" for n in ("key", "out", "query", "value")]
      + ["['head_dense']['kernel']", "['layer_0']['mlp_in']['kernel']",
         "['layer_0']['mlp_out']['kernel']"])
  assert "['token_embedding']['embedding']" in kept and "['position_embedding']" in kept
  assert "['logits_bias']" in kept and "['layer_0']['attention_norm']['scale']" in kept

  # One AdamW step with zero gradients moves exactly the decayed leaves: p -> p (1 - lr wd).
  s = config.stage2
  s.warmup_steps, s.learning_rate, s.weight_decay = 0, 0.1, 0.5
  optimizer = stage2.make_optimizer(s)
  params = jax.tree.map(lambda a: jnp.ones(a.shape, a.dtype), params)

  @jax.jit
  def step_with_zero_gradients(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = optimizer.update(zeros, optimizer.init(params), params)
    return optax.apply_updates(params, updates)

  moved = step_with_zero_gradients(params)
  for (path, on), leaf in zip(mask, jax.tree.leaves(moved)):
    np.testing.assert_allclose(leaf, 1 - 0.1 * 0.5 if on else 1.0, rtol=1e-6,
                               err_msg=jax.tree_util.keystr(path))


def test_clip_by_global_norm_equals_optax():
  rng = np.random.default_rng(0)
  grads = {"a": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
           "b": {"c": jnp.asarray(rng.normal(size=(7,)), jnp.float32)}}
  norm = float(optax.global_norm(grads))
  for max_norm in (norm / 3, norm * 2):  # clipped, and not
    ours, _ = stage2.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    theirs, _ = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
      if max_norm > norm:
        np.testing.assert_array_equal(a, b)  # untouched, bit for bit
      else:
        np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(float(optax.global_norm(ours)), min(norm, max_norm), rtol=1e-6)
  zeros = jax.tree.map(jnp.zeros_like, grads)  # |g| = 0: no division by zero
  out, _ = stage2.clip_by_global_norm(1.0).update(zeros, optax.EmptyState())
  assert all(np.all(leaf == 0) for leaf in jax.tree.leaves(out))


def test_token_batches_cover_each_epoch_once_and_split_over_processes():
  tokens = np.arange(40 * 3).reshape(40, 3)
  labels = np.arange(40)
  full = tokens_lib.TokenBatches(tokens, labels, global_batch_size=8, seed=3)
  assert full.steps_per_epoch == 5
  for epoch in range(2):
    seen = np.concatenate([full.batch(epoch * 5 + i)["label"] for i in range(5)])
    np.testing.assert_array_equal(np.sort(seen), labels)  # a permutation of the examples
  assert not np.array_equal(full.batch(0)["label"], full.batch(5)["label"])  # reshuffled
  batch = full.batch(7)
  np.testing.assert_array_equal(batch["tokens"], tokens[batch["label"]])  # rows stay paired
  halves = [tokens_lib.TokenBatches(tokens, labels, global_batch_size=8, seed=3,
                                    process_index=i, process_count=2) for i in range(2)]
  for step in (0, 6):
    np.testing.assert_array_equal(
        np.concatenate([h.batch(step)["label"] for h in halves]), full.batch(step)["label"])
  resumed = full.iterate(6)
  for step in (6, 7, 8):
    np.testing.assert_array_equal(next(resumed)["label"], full.batch(step)["label"])
  other_seed = tokens_lib.TokenBatches(tokens, labels, global_batch_size=8, seed=4)
  assert not np.array_equal(other_seed.batch(0)["label"], full.batch(0)["label"])
  with pytest.raises(ValueError, match="exceeds the 40 extracted token maps"):
    tokens_lib.TokenBatches(tokens, labels, global_batch_size=64, seed=0)


class RecordingTokenizer:
  """Stands in for api.Tokenizer: codes = a hash of each 2x2 block's pixels, and a log."""
  codebook_size = 64

  def __init__(self):
    self.calls = 0

  def encode(self, images):
    self.calls += 1
    blocks = np.asarray(images).reshape(len(images), 8, 2, 8, 2, 3).sum(axis=(2, 4, 5))
    return jnp.asarray((blocks * 1000).astype(np.int64) % 64, jnp.int32)


def test_extraction_encodes_training_batches_in_order_and_resumes(tmp_path):
  config = tiny_config()
  config.dataset.train_split = "train[:10%]"  # 409 crops: 6 batches of 64, one shard
  config.stage2.batch_size = 64
  directory = str(tmp_path / "tokens")
  tokenizer = RecordingTokenizer()
  extract.extract_tokens(config, directory, tokenizer, log=lambda line: None)
  assert tokens_lib.is_complete(directory) and tokenizer.calls == 6
  tokens, labels = tokens_lib.load_all(directory)
  assert tokens.shape == (6 * 64, 8, 8) and labels.shape == (6 * 64,)
  # The same crops and flips as Stage I's batches at steps 0..5.
  batches = pipeline.create_split(config.dataset.name, config.dataset.train_split,
                                  batch_size=64, image_size=16, train=True, seed=config.seed)
  for step, batch in zip(range(6), batches):
    np.testing.assert_array_equal(tokens[step * 64:(step + 1) * 64],
                                  RecordingTokenizer().encode(batch["image"]))
    np.testing.assert_array_equal(labels[step * 64:(step + 1) * 64], batch["label"])
  # A shard already written is kept: the rerun encodes nothing.
  again = RecordingTokenizer()
  extract.extract_tokens(config, directory, again, log=lambda line: None)
  assert again.calls == 0


def test_token_shards_load_in_pass_order_whatever_the_process_count(tmp_path):
  """Shards written by two processes (each its half of every global batch of 4) load as the
  one process's extraction would: rows in pass order."""
  tokens = np.arange(16 * 2 * 2).reshape(16, 2, 2)
  labels = np.arange(16) % 5
  for process in range(2):
    rows = np.concatenate([step * 4 + process * 2 + np.arange(2) for step in range(4)])
    for shard, chunk in enumerate(np.split(rows, 2)):
      tokens_lib.write_shard(tokens_lib.shard_path(str(tmp_path), process, shard),
                             tokens[chunk], labels[chunk], chunk, codebook_size=64)
  tokens_lib.mark_complete(str(tmp_path))
  loaded_tokens, loaded_labels = tokens_lib.load_all(str(tmp_path))
  np.testing.assert_array_equal(loaded_tokens, tokens)
  np.testing.assert_array_equal(loaded_labels, labels)


@pytest.mark.slow  # both stages end to end
def test_stage2_job_extracts_through_the_tokenizer_and_api_loads_the_run(tmp_path):
  """train_and_evaluate: extraction through api.Tokenizer, then the loop, and the token
  layout saved for api.Generator."""
  config = tiny_config()
  config.stage1.num_train_steps = 1
  config.dataset.train_split = "train[:5%]"
  s = config.stage2
  s.hidden_size, s.num_layers, s.num_heads, s.mlp_dim = 16, 1, 2, 32
  s.batch_size, s.num_train_steps, s.warmup_steps, s.log_every_steps = 8, 2, 1, 1
  stage1.train_and_evaluate(config, str(tmp_path))
  stage2.train_and_evaluate(config, str(tmp_path))
  saved = workdir_lib.read_run_config(workdir_lib.stage_dir(str(tmp_path), "stage2"))
  assert saved["token_layout"] == {"codebook_size": 64, "num_classes": 8}
  tokens, _ = tokens_lib.load_all(workdir_lib.token_dir(str(tmp_path)))
  tokenizer = api.Tokenizer.from_workdir(str(tmp_path))
  first = next(pipeline.create_split(config.dataset.name, config.dataset.train_split,
                                     batch_size=8, image_size=16, train=True, seed=config.seed))
  np.testing.assert_array_equal(tokens[:8], tokenizer.encode(first["image"]))
  generator = api.Generator.from_workdir(str(tmp_path))
  assert generator.mask_id == 64 + 8
  logits = generator.logits(np.full((2, 64), generator.mask_id), np.array([0, 3]))
  assert logits.shape == (2, 64, 64) and logits.dtype == jnp.float32
  images = generator.sample(np.arange(2), cfg=0.0, seed=0)
  assert images.shape == (2, 16, 16, 3)
  np.testing.assert_array_equal(generator.sample(np.arange(2), cfg=0.0, seed=0), images)
  # cfg 0 takes the conditional-only program, which must give what a traced 0 gives.
  traced_zero = generator._sample(generator.params, generator.tokenizer.variables,  # pylint: disable=protected-access
                                  jnp.arange(2, dtype=jnp.int32), jax.random.key(0),
                                  jnp.float32(0.0))
  np.testing.assert_array_equal(traced_zero, images)


def random_tokenizer(config):
  """An api.Tokenizer of the config's Stage I network with random weights."""
  model = factory.build_tokenizer(config)
  size = config.dataset.image_size
  variables = jax.jit(lambda x: model.init(RNG, x, train=False))(
      jnp.zeros((1, size, size, 3), jnp.float32))
  return api.Tokenizer(config, model, variables)


def test_online_tokens_train_as_the_same_tokens_precomputed():
  """stage2.tokens="online": the step codes the batch's images with the frozen tokenizer and
  trains exactly as on those codes given as token maps."""
  config = tiny_config()
  precomputed_setup, _ = stage2_setup(config)  # sets the tiny Stage II sizes on `config`
  tokenizer = random_tokenizer(config)
  images, labels = IMAGES[0], np.arange(8) % 8
  tokens = np.asarray(tokenizer.encode(images)).reshape(8, -1)
  layout = factory.token_layout(config, num_classes=8)
  online = stage2.setup(config, layout, tokenizer=tokenizer)
  precomputed = stage2.setup(
      config, layout, token_batches=tokens_lib.TokenBatches(tokens, labels, global_batch_size=8,
                                                            seed=0))
  del precomputed_setup
  _, online_states, online_metrics = run_steps(online, [{"image": images, "label": labels}])
  _, states, metrics = run_steps(precomputed, [{"tokens": tokens, "label": labels}])
  assert len(np.unique(tokens)) > 3
  for key in metrics[0]:
    np.testing.assert_allclose(online_metrics[0][key], metrics[0][key], rtol=1e-6, err_msg=key)
  for a, b in zip(jax.tree.leaves(online_states[0].params), jax.tree.leaves(states[0].params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_init_from_starts_from_another_runs_transformer(tmp_path):
  config = tiny_config()
  setup, _ = stage2_setup(config)
  fresh = jax.jit(setup.init)(RNG)
  source = jax.tree.map(lambda x: np.asarray(x) + 1.0, jax.device_get(fresh.params))
  checkpointer = checkpoints.Checkpointer(workdir_lib.checkpoint_dir(str(tmp_path), "stage2"),
                                          every_steps=1, keep=1)
  checkpointer.save(9, {"step": np.int32(9), "params": source}, force=True)
  checkpointer.close()
  config.stage2.init_from = str(tmp_path)
  setup, _ = stage2_setup(config)
  started = setup.start_from(jax.jit(setup.init)(RNG))
  for a, b in zip(jax.tree.leaves(started.params), jax.tree.leaves(source)):
    np.testing.assert_array_equal(a, b)
  assert int(started.step) == 0  # a new run, with a fresh optimizer
  for a, b in zip(jax.tree.leaves(started.opt_state), jax.tree.leaves(fresh.opt_state)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # Stage I, then three Stage II runs
def test_online_tokens_resume_bitwise(tmp_path):
  config = tiny_config()
  config.stage1.num_train_steps = 1
  config.dataset.train_split = "train[:5%]"
  s = config.stage2
  s.tokens = "online"
  s.hidden_size, s.num_layers, s.num_heads, s.mlp_dim = 16, 1, 2, 32
  s.batch_size, s.num_train_steps, s.warmup_steps, s.log_every_steps = 8, 4, 1, 1
  s.checkpoint_every_steps = 2
  stage1.train_and_evaluate(config, str(tmp_path / "straight"))
  straight = stage2.train_and_evaluate(config, str(tmp_path / "straight"))
  assert not os.path.exists(workdir_lib.token_dir(str(tmp_path / "straight")))  # no shards
  config.stage1_workdir = str(tmp_path / "straight")
  s.num_train_steps = 2
  stage2.train_and_evaluate(config, str(tmp_path / "resumed"))
  s.num_train_steps = 4
  resumed = stage2.train_and_evaluate(config, str(tmp_path / "resumed"))
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
