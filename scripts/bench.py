"""Training, sampling and evaluation throughput, with model FLOP utilisation, as JSON.

  python scripts/bench.py                    # demo, tradeoff_128 (128 px), maskgit_256 (256 px),
                                             # uvim_demo, uvim_colorization (512 px)
  python scripts/bench.py --configs=maskgit_256 --parts=stage2 --batch_size=8 --steps=3
  python scripts/bench.py --configs=tradeoff_128 --parts=bf16_losses --batch_size=4
  python scripts/bench.py --configs= --official_path=/path/to/maskgit   # side by side only
  python scripts/bench.py --configs= --input_sizes=128,256 --tfdata_pipeline=OLD_PIPELINE.py

Per config, on the default device(s), with the batch sharded over all of them:
- stage1, stage2: one jitted train step (the trainers' own `train_step`, state donated):
  seconds per step, images/s, model FLOPs per step from XLA's cost analysis of the compiled
  step (per device), achieved FLOP/s, and MFU = achieved / the matmul peak below;
  XLA's buffer sizes for the step (arguments + outputs + temporaries - aliased, per device).
  A step whose buffers exceed 3/4 of the free memory is compiled but not run ("skipped").
  For the UViM configs, stage1 is the label autoencoder's step and stage2 the task model's
  teacher-forced step on the frozen Stage I's codes (float32; models freshly initialised).
- sampling: MaskGIT decoding, 12 steps, then the Stage I decoder: images/s with CFG off
  (one transformer pass per step) and on (alpha 0.2, two passes), and with alpha 0 passed as
  a traced value (two passes: how alpha 0 ran before the conditional-only decoder).
- eval: images/s of the FID feature network (Inception-v3 at 299 px) and of the
  compression cost (12 transformer passes per image, M2T schedule).
The matmul peak is an N x N jnp.dot in the compute dtype on device 0, measured at the
start and the end of the run (the larger counts). On a CPU, which other processes may
share, each FLOP rate is also given per CPU second of this process (`flops_per_cpu_s`,
`mfu_per_cpu_second`), with the share of the cores the process got (`cpu_share`).
- bf16_losses (by name only): Stage I and Stage II trained a few steps (--bf16_steps) from
  the same synthetic weights on the same batches in float32 and in bfloat16 compute; each
  step's losses and their largest relative difference, against a stated tolerance.
- --official_path: the side-by-side table of our steps against google-research/maskgit's
  networks (scripts/bench_official.py), printed to stderr as markdown and kept in the JSON.
- --input_sizes: images/s of the Stage I training pipeline (Grain with 0, 1 and 2 worker
  processes, and the tf.data pipeline of an earlier commit with --tfdata_pipeline) on
  ImageNet-sized JPEGs (scripts/bench_input.py), printed to stderr as markdown.
- state_memory: bytes of the Stage I and Stage II train states (parameters, EMA, optimizer
  moments) that each of --fsdp_devices devices holds, replicated and with FSDP (the
  config's mesh.fsdp_min_size), from the shapes alone: no device needs to exist.
Paper configs run at --batch_size (default 8) for --steps steps; the demo at its own batch
sizes. Weights are synthetic (random, of the right shapes and scales): no checkpoint or
dataset is read, and timings do not depend on the values. Peak memory: the device's
peak_bytes_in_use where the backend reports it (GPU/TPU), else the process's peak resident
set size (CPU: host and device memory are one), read after each part. Each part's numbers
also go to stderr as one JSON line as soon as they are measured.
"""

if __name__ == "__main__":  # before JAX allocates anything: see fsq_repro/hugepages.py
  from fsq_repro import hugepages  # pylint: disable=g-import-not-at-top
  hugepages.reexec()

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import functools
import tempfile
import json
import math
import os
import platform
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import bench_input
import bench_official
from fsq_repro import api, config_lib, parallel, tasks
from fsq_repro.data import tokens as tokens_lib
from fsq_repro.eval import compression, features
from fsq_repro.models import factory, inception, perceptual, resnet, weights
from fsq_repro.train import loop, stage1, stage2, uvim_stage1, uvim_stage2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("demo", "tradeoff_128", "maskgit_256", "uvim_demo", "uvim_colorization")
UVIM_PARTS = ("stage1", "stage2")  # what a UViM config has of PARTS
PARTS = ("stage1", "stage2", "sampling", "eval", "state_memory", "bf16_losses")
DEFAULT_PARTS = PARTS[:-1]  # bf16_losses trains the config twice: asked for by name
BF16_TOLERANCE = 0.02  # relative difference of each logged loss, bfloat16 against float32
COMPRESSION_STEPS = 12  # M2T schedule groups
CFG_ALPHA = 0.2


def load_config(name: str, dtype: str, batch_size: int | None):
  config = config_lib.load_config(os.path.join(ROOT, "configs", f"{name}.py"))
  if config.get("family") == "uvim":  # float32 only: UViM's models have no dtype field
    for section in (config.stage1, config.stage2, config.eval):
      section.batch_size = batch_size or section.batch_size
    return config
  config.model.dtype = config.stage2.dtype = dtype
  if batch_size:  # the paper's batches do not fit a CPU; the demo keeps its own
    for section in (config.stage1, config.stage2, config.sample, config.eval):
      section.batch_size = batch_size
  return config


def process_cpu_seconds() -> float:
  """CPU seconds of this process so far, all threads (user + system)."""
  times = os.times()
  return times.user + times.system


def matmul_peak(dtype, size: int, repeats: int = 10) -> dict:
  """FLOP/s of size x size x size matmuls on device 0: of the fastest of `repeats` (wall
  clock), and per CPU second of this process over all of them."""
  keys = jax.random.split(jax.random.key(0))
  a, b = (jax.random.normal(k, (size, size), jnp.float32).astype(dtype) for k in keys)
  dot = jax.jit(jnp.dot)
  jax.block_until_ready(dot(a, b))
  best, cpu_start, wall_start = math.inf, process_cpu_seconds(), time.perf_counter()
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(dot(a, b))
    best = min(best, time.perf_counter() - start)
  flops = 2 * size**3
  cpu, wall = process_cpu_seconds() - cpu_start, time.perf_counter() - wall_start
  return {"flops_per_s": flops / best, "flops_per_cpu_s": flops * repeats / cpu,
          "cpu_share": cpu / (wall * os.cpu_count())}


def synthetic_state(abstract, seed: int = 0):
  """Arrays of `abstract`'s shapes and shardings: fan-in scaled normal weights, unit norm
  scales and variances, zero biases, optimizer moments and counters."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    shape, dtype = tuple(leaf.shape), leaf.dtype
    if not jnp.issubdtype(dtype, jnp.floating) or "opt_state" in name:
      value = np.zeros(shape, dtype)
    elif len(shape) < 2:
      value = np.full(shape, 1.0 if name.endswith(("['scale']", "['var']")) else 0.0, dtype)
    else:
      fan_in = math.prod(shape[:-1])
      value = (rng.standard_normal(shape, np.float32) / math.sqrt(fan_in)).astype(dtype)
    sharding = getattr(leaf, "sharding", None)
    return jax.device_put(value, sharding) if sharding is not None else jnp.asarray(value)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def time_steps(step, state, args, steps: int) -> tuple[float, float]:
  """(wall, process CPU) seconds per step of `state, metrics = step(state, *args)`: one
  warm-up step, then `steps` steps dispatched back to back (no host round trip), as the
  training loop runs them."""
  state, metrics = step(state, *args)
  jax.block_until_ready(metrics)
  cpu_start, start = process_cpu_seconds(), time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, *args)
  jax.block_until_ready((state, metrics))
  return (time.perf_counter() - start) / steps, (process_cpu_seconds() - cpu_start) / steps


def time_calls(fn, args, calls: int) -> float:
  """Seconds per call of fn(*args) after one warm-up call."""
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(calls):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / calls


def compiled_summary(compiled) -> dict:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  memory = compiled.memory_analysis()
  summary = {"flops_per_step_per_device": float(cost["flops"])}
  if memory is not None:
    summary["xla_buffer_bytes_per_device"] = int(
        memory.argument_size_in_bytes + memory.output_size_in_bytes
        + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  return summary


def available_bytes() -> int | None:
  """Memory free for one more program: the device's, or on a CPU the host's MemAvailable."""
  stats = jax.local_devices()[0].memory_stats()
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
  try:
    with open("/proc/meminfo") as f:
      fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) * 1024
  except (OSError, KeyError):
    return None


def train_step_report(step, state, args, *, batch_size: int, steps: int,
                      count_flops=None) -> dict:
  """Compiles and times `step`; `count_flops()`, if given, replaces its FLOP count."""
  start = time.perf_counter()
  compiled = step.lower(state, *args).compile()
  report = {"batch_size": batch_size, "compile_s": time.perf_counter() - start,
            **compiled_summary(compiled)}
  if count_flops is not None:
    report["flops_per_step_per_device"] = count_flops()
  free = available_bytes()
  needed = report.get("xla_buffer_bytes_per_device", 0)
  if free is not None and needed > 0.75 * free:  # leave room for the host and other users
    report["skipped"] = (f"needs {needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB available; "
                         "lower --batch_size")
    return report
  seconds, cpu_seconds = time_steps(compiled, state, args, steps)
  flops = report["flops_per_step_per_device"]
  report.update(step_s=seconds, images_per_s=batch_size / seconds,
                flops_per_s_per_device=flops / seconds)
  # How much of the CPU this process got (none measurable: a step shorter than the clock's tick)
  if jax.default_backend() == "cpu" and cpu_seconds > 0:
    report.update(flops_per_cpu_s=flops / cpu_seconds,
                  cpu_share=cpu_seconds / (seconds * os.cpu_count()))
  return report


def compiled_train_step(setup, abstract, shardings, mesh, args):
  return loop.make_train_step(setup.train_step, shardings, mesh).lower(abstract, *args).compile()


def synthetic_perceptual_loss(config):
  """The config's perceptual loss with synthetic weights of the real shapes, or None."""
  kind = config.stage1.perceptual_loss
  if kind == "none":
    return None
  if kind == "lpips":
    network, name = perceptual.LPIPS(), perceptual.NETWORK_NAME
    images = jnp.zeros((1, 64, 64, 3))
    abstract = jax.eval_shape(network.init, jax.random.key(0), images, images)
  else:
    network, name = resnet.ResNet50(), "resnet50_magvit"
    abstract = jax.eval_shape(network.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  with tempfile.TemporaryDirectory() as directory:
    path = os.path.join(directory, "weights.msgpack")
    weights.save_params(path, jax.device_get(synthetic_state(abstract["params"])),
                        network=name, source="synthetic (bench.py)")
    return perceptual.load(kind, path)


def bench_stage1(config, mesh, steps: int) -> dict:
  setup = stage1.setup(config, perceptual_loss=synthetic_perceptual_loss(config))
  abstract, shardings = parallel.abstract_state(setup.init, setup.init_rng, mesh, config.mesh)
  b, size = config.stage1.batch_size, config.dataset.image_size
  images = np.random.default_rng(1).random((b, size, size, 3), np.float32)
  batch = parallel.global_batch({"image": images}, mesh)
  args = (batch, jax.random.key(1), setup.frozen)

  def count_flops():
    # XLA's cost analysis counts a loop's body once, and on CPU the kernel gradients run as
    # a loop over the kernel taps: the same model's FLOPs are counted with XLA's own form.
    xla = config.copy_and_resolve_references()
    xla.model.kernel_gradient = "xla"
    compiled = compiled_train_step(stage1.setup(xla, synthetic_perceptual_loss(xla)), abstract,
                                   shardings, mesh, args)
    return compiled_summary(compiled)["flops_per_step_per_device"]

  report = train_step_report(loop.make_train_step(setup.train_step, shardings, mesh),
                             synthetic_state(abstract), args, batch_size=b, steps=steps,
                             count_flops=count_flops)
  return {"image_size": size, "perceptual_loss": config.stage1.perceptual_loss, **report}


def token_layout(config):
  """The vocabulary of the config's dataset, without reading the dataset: ImageNet's 1000
  classes for the paper configs, the embedded dataset's 8 for the demo."""
  return factory.token_layout(config, 8 if config.dataset.name == "fsq_photo_crops" else 1000)


def random_token_batches(config, layout, batch_size: int, seed: int) -> tokens_lib.TokenBatches:
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, layout.codebook_size, (batch_size, factory.tokens_per_image(config)))
  labels = rng.integers(0, layout.num_classes, (batch_size,))
  return tokens_lib.TokenBatches(tokens.astype(np.int32), labels.astype(np.int32),
                                 global_batch_size=batch_size, seed=seed)


def stage2_setup(config, seed: int = 2):
  layout = token_layout(config)
  batches = random_token_batches(config, layout, config.stage2.batch_size, seed)
  return stage2.setup(config, layout, token_batches=batches), batches


def bench_stage2(config, mesh, steps: int) -> dict:
  """The step on precomputed token maps, and with online tokens: the frozen tokenizer codes
  the batch's images inside the step (stage2.tokens="online", the paper configs')."""
  setup, batches = stage2_setup(config)
  abstract, shardings = parallel.abstract_state(setup.init, setup.init_rng, mesh, config.mesh)
  batch = batches.batch(0)
  b = config.stage2.batch_size
  report = {"tokens_per_image": factory.tokens_per_image(config)}
  report["precomputed"] = train_step_report(
      loop.make_train_step(setup.train_step, shardings, mesh), synthetic_state(abstract),
      (parallel.global_batch(batch, mesh), jax.random.key(2), ()), batch_size=b, steps=steps)
  tokenizer = synthetic_generator(config, mesh).tokenizer
  online = stage2.setup(config, token_layout(config), tokenizer=tokenizer)
  size = config.dataset.image_size
  images = np.random.default_rng(3).random((b, size, size, 3), np.float32)
  image_batch = parallel.global_batch({"image": images, "label": batch["label"]}, mesh)
  report["online"] = train_step_report(
      loop.make_train_step(online.train_step, shardings, mesh), synthetic_state(abstract),
      (image_batch, jax.random.key(2), online.frozen), batch_size=b, steps=steps)
  if "step_s" in report["online"] and "step_s" in report["precomputed"]:
    report["online_over_precomputed_step_s"] = (report["online"]["step_s"]
                                                / report["precomputed"]["step_s"])
  return report


def bench_uvim_stage1(config, mesh, steps: int) -> dict:
  """UViM's Stage I step (label autoencoder, the task's loss, the EMA-VQ update)."""
  setup = uvim_stage1.setup(config)
  _, shardings = parallel.abstract_state(setup.init, setup.init_rng, mesh, config.mesh)
  b, size = config.stage1.batch_size, config.dataset.image_size
  images = np.random.default_rng(1).random((b, size, size, 3), np.float32)
  state = jax.jit(setup.init, out_shardings=shardings)(setup.init_rng)
  report = train_step_report(
      loop.make_train_step(setup.train_step, shardings, mesh), state,
      (parallel.global_batch({"image": images}, mesh), jax.random.key(1), ()),
      batch_size=b, steps=steps)
  return {"image_size": size, "quantizer": config.quantizer.kind,
          "code_len": config.model.code_len, **report}


def bench_uvim_stage2(config, mesh, steps: int) -> dict:
  """UViM's Stage II step: the frozen Stage I codes the batch, teacher forcing."""
  task = tasks.get(config.task.name)
  model = factory.build_label_autoencoder(config, task.labels)
  example = uvim_stage1.example_shapes(config, task)
  coder = api.LabelCoder(config, task, model, jax.jit(functools.partial(
      model.init, train=False))(jax.random.key(0), example["labels"], example["context"]))
  setup = uvim_stage2.setup(config, coder)
  _, shardings = parallel.abstract_state(setup.init, setup.init_rng, mesh, config.mesh)
  b, size = config.stage2.batch_size, config.dataset.image_size
  images = np.random.default_rng(3).random((b, size, size, 3), np.float32)
  state = jax.jit(setup.init, out_shardings=shardings)(setup.init_rng)
  return {"tokens_per_image": config.model.code_len, "teacher_forcing": train_step_report(
      loop.make_train_step(setup.train_step, shardings, mesh), state,
      (parallel.global_batch({"image": images}, mesh), jax.random.key(2), setup.frozen),
      batch_size=b, steps=steps)}


def synthetic_generator(config, mesh) -> api.Generator:
  """A Generator (and its Tokenizer) of the config's networks with synthetic weights."""
  tokenizer_model = factory.build_tokenizer(config)
  size = config.dataset.image_size
  variables = jax.eval_shape(functools.partial(tokenizer_model.init, train=False),
                             jax.random.key(0), jnp.zeros((1, size, size, 3), jnp.float32))
  tokenizer = api.Tokenizer(config, tokenizer_model, synthetic_state(variables))
  layout = token_layout(config)
  model = factory.build_transformer(config, layout)
  ids = jnp.zeros((1, factory.tokens_per_image(config) + 1), jnp.int32)
  params = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), ids)
  return api.Generator(config, tokenizer, model, synthetic_state(params["params"]), layout,
                       mesh)


def bench_sampling(config, mesh, calls: int) -> dict:
  generator = synthetic_generator(config, mesh)
  b = config.sample.batch_size
  labels = np.arange(b, dtype=np.int32) % generator.layout.num_classes
  report = {"batch_size": b, "steps": config.sample.num_steps}
  # cfg 0 runs one transformer pass per decoding step, cfg > 0 two.
  for name, cfg in (("no_cfg", 0.0), ("cfg", CFG_ALPHA)):
    seconds = time_calls(lambda: generator.sample(labels, cfg, seed=3), (), calls)
    report[f"{name}_images_per_s"] = b / seconds
  # cfg 0 as a traced value, as sampling and evaluation ran it before Generator compiled the
  # conditional-only decoder: both passes, the unconditional one weighted by 0.
  global_labels = parallel.global_batch({"label": labels}, mesh)["label"]
  traced = lambda: generator._sample(generator.params, generator.tokenizer.variables,  # pylint: disable=protected-access
                                     global_labels, jax.random.key(3), jnp.float32(0.0))
  report["no_cfg_traced_images_per_s"] = b / time_calls(traced, (), calls)
  return report


def bench_eval(config, mesh, calls: int) -> dict:
  b, size = config.eval.batch_size, config.dataset.image_size
  images = parallel.global_batch(
      {"image": np.random.default_rng(4).random((b, size, size, 3), np.float32)},
      mesh)["image"]
  network = inception.InceptionV3()
  abstract = jax.eval_shape(network.init, jax.random.key(0), images[:1])
  inception_params = synthetic_state(abstract["params"])
  fid_features = jax.jit(lambda p, x: network.apply(
      {"params": p}, features.to_uint8_levels(x))["pool_3"])
  report = {"batch_size": b, "fid_feature_network": f"{inception.NETWORK_NAME} "
            "(random weights, same FLOPs)",
            "fid_features_images_per_s": b / time_calls(
                fid_features, (inception_params, images), calls)}

  generator = synthetic_generator(config, mesh)
  height, width = generator.grid
  groups = compression.group_schedule(height, width, COMPRESSION_STEPS)
  batch = random_token_batches(config, generator.layout, b, seed=5).batch(0)

  def cost_bits():  # as evaluation runs it: one jitted transformer call per group
    return compression.compression_cost_bits(generator.logits, batch["tokens"], batch["label"],
                                             groups, num_steps=COMPRESSION_STEPS,
                                             mask_id=generator.mask_id)

  report["compression_cost_images_per_s"] = b / time_calls(cost_bits, (), calls)
  return report


def bench_bf16_losses(name: str, batch_size: int | None, steps: int) -> dict:
  """Stage I and Stage II trained `steps` steps in float32 from synthetic weights, each step
  also taken in bfloat16 compute from the same state (parameters and optimizer state float32
  in both, quantizers in float32): the bfloat16 step's losses against the float32 step's,
  whose largest relative difference must be within BF16_TOLERANCE. Also the losses of a
  run trained in bfloat16 throughout from the same start ("bfloat16_run"): reported, not held
  to the tolerance, since two runs drift apart as soon as an update differs."""
  mesh = parallel.make_mesh()
  report = {"steps": steps, "tolerance": BF16_TOLERANCE}
  setups, batches = {}, {}
  for dtype in ("float32", "bfloat16"):
    config = load_config(name, dtype, batch_size)
    setups[dtype] = {"stage1": stage1.setup(config, synthetic_perceptual_loss(config)),
                     "stage2": stage2_setup(config)[0]}
  b, size = config.stage1.batch_size, config.dataset.image_size
  image_rng = np.random.default_rng(1)
  batches["stage1"] = [{"image": image_rng.random((b, size, size, 3), np.float32)}
                       for _ in range(steps)]
  token_batches = stage2_setup(config)[1]
  batches["stage2"] = [token_batches.batch(i) for i in range(steps)]
  for stage, keys in (("stage1", ("generator_loss", "reconstruction_loss", "quantizer_loss",
                                  "perceptual_loss")), ("stage2", ("loss",))):
    losses = _bf16_step_losses({d: s[stage] for d, s in setups.items()}, config, mesh,
                               batches[stage], keys)
    worst = max(abs(bf - f32) / max(abs(f32), 1e-12)
                for key in losses["float32"]
                for f32, bf in zip(losses["float32"][key], losses["bfloat16"][key]))
    report[stage] = {**losses, "max_relative_difference": worst,
                     "within_tolerance": worst <= BF16_TOLERANCE}
  return report


def _bf16_step_losses(setups, config, mesh, batches, keys) -> dict:
  """{"float32", "bfloat16", "bfloat16_run"}: {loss key: [value per step]}."""
  setup = setups["float32"]
  abstract, shardings = parallel.abstract_state(setup.init, setup.init_rng, mesh, config.mesh)
  steps = {dtype: loop.make_train_step(s.train_step, shardings, mesh)
           for dtype, s in setups.items()}
  state = synthetic_state(abstract)
  run_state = jax.tree.map(jnp.copy, state)
  logged = {kind: {key: [] for key in keys} for kind in ("float32", "bfloat16", "bfloat16_run")}
  for i, batch in enumerate(batches):
    args = (parallel.global_batch(batch, mesh), jax.random.fold_in(setup.step_rng, i),
            setup.frozen)
    _, bf16 = steps["bfloat16"](jax.tree.map(jnp.copy, state), *args)  # the step is donated
    run_state, bf16_run = steps["bfloat16"](run_state, *args)
    state, f32 = steps["float32"](state, *args)
    for kind, metrics in (("float32", f32), ("bfloat16", bf16), ("bfloat16_run", bf16_run)):
      for key in keys:
        if key in metrics:
          logged[kind][key].append(float(metrics[key]))
  return {kind: {k: v for k, v in values.items() if v} for kind, values in logged.items()}


def bench_state_memory(config, num_devices: int) -> dict:
  """Train-state bytes per device on `num_devices` devices, replicated and with FSDP."""
  mesh = jax.sharding.AbstractMesh((num_devices,), (parallel.DATA_AXIS,),
                                   axis_types=(jax.sharding.AxisType.Auto,))
  report = {"devices": num_devices, "fsdp_min_size": config.mesh.fsdp_min_size}
  for fsdp in (False, True):
    config = config.copy_and_resolve_references()
    config.mesh.fsdp = fsdp
    name = "fsdp" if fsdp else "replicated"
    for stage, setup in (("stage1", stage1.setup(config, perceptual_loss=None)),
                         ("stage2", stage2_setup(config)[0])):
      abstract, _ = parallel.abstract_state(setup.init, setup.init_rng, mesh, config.mesh)
      report[f"{stage}_{name}_bytes_per_device"] = parallel.abstract_bytes_per_device(abstract)
  for stage in ("stage1", "stage2"):
    report[f"{stage}_fsdp_fraction"] = (report[f"{stage}_fsdp_bytes_per_device"]
                                        / report[f"{stage}_replicated_bytes_per_device"])
  return report


def host_description() -> str:
  """CPU model and core count (what a CPU backend's numbers depend on)."""
  try:
    with open("/proc/cpuinfo") as f:
      model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    model = platform.processor() or platform.machine()
  return f"{model}, {os.cpu_count()} cores"


def peak_memory() -> dict:
  stats = jax.local_devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    return {"bytes": int(stats["peak_bytes_in_use"]), "source": "device peak_bytes_in_use"}
  kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return {"bytes": int(kib) * 1024, "source": "process peak RSS (host and device memory)"}


def bench_config(name: str, args, mesh) -> dict:
  paper = not name.endswith("demo")
  config = load_config(name, args.dtype, args.batch_size if paper else None)
  steps = args.steps if paper else args.demo_steps
  calls = 1 if paper else 2
  runs = {"stage1": lambda: bench_stage1(config, mesh, steps),
          "stage2": lambda: bench_stage2(config, mesh, steps),
          "sampling": lambda: bench_sampling(config, mesh, calls),
          "eval": lambda: bench_eval(config, mesh, calls),
          "state_memory": lambda: bench_state_memory(config, args.fsdp_devices),
          "bf16_losses": lambda: bench_bf16_losses(name, args.batch_size if paper else None,
                                                   args.bf16_steps)}
  if config.get("family") == "uvim":
    runs = {"stage1": lambda: bench_uvim_stage1(config, mesh, steps),
            "stage2": lambda: bench_uvim_stage2(config, mesh, steps)}
  report = {"image_size": config.dataset.image_size, "dtype": args.dtype}
  for part in [p for p in args.parts if p in runs]:
    report[part] = runs[part]()
    report[part]["peak_memory_after"] = peak_memory()
    # Progress, and the numbers so far should the run be cut short.
    print(json.dumps({"config": name, "part": part, **report[part]}), file=sys.stderr,
          flush=True)
  return report


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default=",".join(CONFIGS),
                      help=f"comma-separated, from {CONFIGS}")
  parser.add_argument("--parts", default=",".join(DEFAULT_PARTS),
                      help=f"comma-separated, from {PARTS}")
  parser.add_argument("--bf16_steps", type=int, default=3,
                      help="training steps per dtype of the bf16_losses part")
  parser.add_argument("--batch_size", type=int, default=8,
                      help="global batch of the paper configs (every part)")
  parser.add_argument("--steps", type=int, default=3, help="timed steps, paper configs")
  parser.add_argument("--demo_steps", type=int, default=20, help="timed steps, demo config")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="compute dtype of both stages (parameters stay float32)")
  parser.add_argument("--fsdp_devices", type=int, default=8,
                      help="devices assumed by the state_memory part")
  parser.add_argument("--official_path", default=None,
                      help="a checkout of google-research/maskgit: adds the side-by-side "
                           "table of our steps against its networks (scripts/bench_official.py)")
  parser.add_argument("--official_rounds", type=int, default=3,
                      help="interleaved rounds of the side-by-side table (best counts)")
  parser.add_argument("--input_sizes", default="",
                      help="comma-separated image sizes: adds the input-pipeline throughput "
                           "table at each (scripts/bench_input.py)")
  parser.add_argument("--tfdata_pipeline", default=None,
                      help="an earlier fsq_repro/data/pipeline.py (tf.data) to time beside "
                           "the Grain pipeline, e.g. from `git show a453ad7:...`")
  parser.add_argument("--matmul_size", type=int, default=None,
                      help="N of the peak matmul; default 2048 on CPU, 8192 elsewhere")
  args = parser.parse_args()
  args.configs = [c for c in args.configs.split(",") if c]  # --configs= : side-by-side only
  args.parts = args.parts.split(",")
  args.input_sizes = [int(v) for v in args.input_sizes.split(",") if v]
  for value, allowed, flag in ((args.configs, CONFIGS, "--configs"),
                               (args.parts, PARTS, "--parts")):
    unknown = sorted(set(value) - set(allowed))
    if unknown:
      raise SystemExit(f"error: {flag}={','.join(unknown)} is unknown; use {allowed}")
  if args.batch_size % jax.device_count():
    raise SystemExit(f"error: --batch_size={args.batch_size} is not divisible by the "
                     f"{jax.device_count()} devices")

  dtype = jnp.dtype(args.dtype)
  size = args.matmul_size or (2048 if jax.default_backend() == "cpu" else 8192)
  mesh = parallel.make_mesh()
  first_peak = matmul_peak(dtype, size)
  results = {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
             "device_count": jax.device_count(), "host": host_description(),
             "jax": jax.__version__,
             "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}  # huge pages: hugepages.py
  configs = {}
  for name in args.configs:
    configs[name] = bench_config(name, args, mesh)
  if args.official_path:
    side = bench_official.side_by_side(
        args.official_path, ROOT, load_config, token_layout, synthetic_state, mesh,
        batch_size=args.batch_size, stage1_batch_size=4, rounds=args.official_rounds,
        steps=1, peak_flops=first_peak["flops_per_s"],
        progress=lambda row: print(json.dumps({"side_by_side": row}), file=sys.stderr,
                                   flush=True))
    print(side["markdown"], file=sys.stderr, flush=True)
  if args.input_sizes:
    results["input"] = bench_input.input_throughput(args.input_sizes, args.tfdata_pipeline)
    print(results["input"]["markdown"], file=sys.stderr, flush=True)
  last_peak = matmul_peak(dtype, size)
  # MFU against the best peak seen in this run; on a CPU also per CPU second of this
  # process, which takes out the time other processes held the cores.
  peak = {key: max(first_peak[key], last_peak[key]) for key in first_peak}
  for report in configs.values():
    step_reports = [report.get("stage1")] + [report.get("stage2", {}).get(kind)
                                             for kind in ("precomputed", "online",
                                                          "teacher_forcing")]
    for r in step_reports:
      if r is None or "skipped" in r:
        continue
      r["mfu"] = r["flops_per_s_per_device"] / peak["flops_per_s"]
      if "flops_per_cpu_s" in r:
        r["mfu_per_cpu_second"] = r["flops_per_cpu_s"] / peak["flops_per_cpu_s"]
  results["matmul_peak"] = {"flops_per_s_per_device": peak["flops_per_s"],
                            "dtype": args.dtype, "n": size, "start": first_peak,
                            "end": last_peak}
  results["configs"] = configs
  if args.official_path:
    results["side_by_side"] = side
  results["peak_memory"] = peak_memory()
  print(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
