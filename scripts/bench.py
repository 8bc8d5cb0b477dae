"""Training, sampling and evaluation throughput, with model FLOP utilisation, as JSON.

  python scripts/bench.py                    # demo, tradeoff_128 (128 px), maskgit_256 (256 px)
  python scripts/bench.py --configs=maskgit_256 --parts=stage2 --batch_size=8 --steps=3

Per config, on the default device(s), with the batch sharded over all of them:
- stage1, stage2: one jitted train step (the trainers' own `train_step`, state donated):
  seconds per step, images/s, model FLOPs per step from XLA's cost analysis of the compiled
  step (per device), achieved FLOP/s, and MFU = achieved / the matmul peak below;
  XLA's buffer sizes for the step (arguments + outputs + temporaries - aliased, per device).
  A step whose buffers exceed 3/4 of the free memory is compiled but not run ("skipped").
- sampling: MaskGIT decoding, 12 steps, then the Stage I decoder: images/s with CFG off
  (one transformer pass per step) and on (alpha 0.2, two passes).
- eval: images/s of the FID feature network (Inception-v3 at 299 px) and of the
  compression cost (12 transformer passes per image, M2T schedule).
The matmul peak is an N x N jnp.dot in the compute dtype on device 0, measured at the
start and the end of the run (the larger counts). On a CPU, which other processes may
share, each FLOP rate is also given per CPU second of this process (`flops_per_cpu_s`,
`mfu_per_cpu_second`), with the share of the cores the process got (`cpu_share`).
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

import argparse
import contextlib
import functools
import importlib.util
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

from fsq_repro import sampling
from fsq_repro.eval import compression, features
from fsq_repro.models import inception, perceptual, vqgan
from fsq_repro.models import transformer as transformer_lib
from fsq_repro.train import distributed, stage1, stage2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("demo", "tradeoff_128", "maskgit_256")
PARTS = ("stage1", "stage2", "sampling", "eval", "state_memory")
SAMPLING_STEPS = 12
CFG_ALPHA = 0.2


def load_config(name: str, dtype: str, batch_size: int | None):
  path = os.path.join(ROOT, "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
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
  if jax.default_backend() == "cpu":  # how much of the CPU this process got
    report.update(flops_per_cpu_s=flops / cpu_seconds,
                  cpu_share=cpu_seconds / (seconds * os.cpu_count()))
  return report


@contextlib.contextmanager
def xla_convolutions():
  """The VQGAN's convolutions left wholly to XLA while a program is traced.

  On CPU their kernel gradients run as a loop over the kernel taps, and XLA's cost analysis
  counts a loop's body once: the FLOPs of the same model are counted with XLA's own form.
  """
  fast = vqgan.conv_general_dilated
  vqgan.conv_general_dilated = jax.lax.conv_general_dilated
  try:
    yield
  finally:
    vqgan.conv_general_dilated = fast


def bench_stage1(config, mesh, steps: int) -> dict:
  ae, disc, optimizer, _, abstract, shardings = stage1.abstract_train_state(config, mesh)
  lpips_path = perceptual.find_perceptual_weights(config.stage1.perceptual_weights)
  lpips_params = perceptual.load_lpips_params(lpips_path) if lpips_path else {}
  loss_config = stage1.LossConfig.from_config(config, perceptual_on=bool(lpips_path))

  def make_step():  # a new jit, so that it traces again
    return jax.jit(
        functools.partial(stage1.train_step, autoencoder=ae, discriminator=disc,
                          lpips=perceptual.LPIPS(), optimizer=optimizer,
                          loss_config=loss_config),
        out_shardings=(shardings, distributed.replicated(mesh)), donate_argnums=0)

  b, size = config.stage1.batch_size, config.dataset.image_size
  images = np.random.default_rng(1).random((b, size, size, 3), np.float32)
  batch = distributed.global_batch({"image": images}, mesh)
  args = (batch, lpips_params, jax.random.key(1))

  def count_flops():
    with xla_convolutions():
      compiled = make_step().lower(abstract, *args).compile()
    return compiled_summary(compiled)["flops_per_step_per_device"]

  report = train_step_report(make_step(), synthetic_state(abstract), args, batch_size=b,
                             steps=steps, count_flops=count_flops)
  return {"image_size": size, "perceptual_loss": bool(lpips_path), **report}


def random_tokens(config, layout, batch_size: int, seed: int):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, layout.codebook_size, (batch_size, stage2.tokens_per_image(config)))
  labels = rng.integers(0, layout.num_classes, (batch_size,))
  return tokens.astype(np.int32), labels.astype(np.int32)


def bench_stage2(config, mesh, steps: int) -> dict:
  layout = stage2.token_layout(config)
  model, optimizer, _, abstract, shardings = stage2.abstract_train_state(config, layout, mesh)
  step = jax.jit(functools.partial(stage2.train_step, model=model, layout=layout,
                                   optimizer=optimizer, s=config.stage2),
                 out_shardings=(shardings, distributed.replicated(mesh)), donate_argnums=0)
  b = config.stage2.batch_size
  tokens, labels = random_tokens(config, layout, b, seed=2)
  batch = distributed.global_batch({"tokens": tokens, "label": labels}, mesh)
  report = train_step_report(step, synthetic_state(abstract), (batch, jax.random.key(2)),
                             batch_size=b, steps=steps)
  return {"tokens_per_image": stage2.tokens_per_image(config), **report}


def frozen_models(config, mesh):
  """Synthetic Stage I tokenizer variables and Stage II parameters, and the modules."""
  ae, *_, stage1_abstract, _ = stage1.abstract_train_state(config, mesh)
  stage1_state = synthetic_state(stage1_abstract)
  layout = stage2.token_layout(config)
  model, _, _, stage2_abstract, _ = stage2.abstract_train_state(config, layout, mesh)
  params = synthetic_state(stage2_abstract.params)
  ae_variables = {"params": stage1_state.ema_params, **stage1_state.quantizer_state}
  return ae, ae_variables, model, params, layout


def bench_sampling(config, mesh, calls: int) -> dict:
  ae, ae_variables, model, params, layout = frozen_models(config, mesh)
  side = int(math.isqrt(stage2.tokens_per_image(config)))
  b = config.sample.batch_size

  def sample_images(params, ae_variables, labels, rng, cfg_alpha):
    logits_fn = functools.partial(model.apply, {"params": params}, train=False)
    tokens = sampling.sample_tokens(logits_fn, rng, labels, num_tokens=side * side,
                                    layout=layout, num_steps=SAMPLING_STEPS,
                                    cfg_alpha=cfg_alpha)
    return ae.apply(ae_variables, tokens.reshape(-1, side, side), method="decode_indices")

  labels = distributed.global_batch(
      {"label": np.arange(b, dtype=np.int32) % layout.num_classes}, mesh)["label"]
  report = {"batch_size": b, "steps": SAMPLING_STEPS}
  for name, alpha in (("no_cfg", 0.0), ("cfg", jnp.float32(CFG_ALPHA))):
    # A Python 0.0 skips the unconditional pass; a traced alpha runs both passes.
    fn = jax.jit(functools.partial(sample_images, cfg_alpha=alpha) if name == "no_cfg"
                 else sample_images)
    args = (params, ae_variables, labels, jax.random.key(3)) + (() if name == "no_cfg"
                                                                 else (alpha,))
    seconds = time_calls(fn, args, calls)
    report[f"{name}_images_per_s"] = b / seconds
  return report


def bench_eval(config, mesh, calls: int) -> dict:
  b, size = config.eval.batch_size, config.dataset.image_size
  images = distributed.global_batch(
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

  _, _, model, params, layout = frozen_models(config, mesh)
  side = int(math.isqrt(stage2.tokens_per_image(config)))
  groups = compression.group_schedule(side, side, SAMPLING_STEPS)
  tokens, labels = random_tokens(config, layout, b, seed=5)
  batch = distributed.global_batch({"tokens": tokens, "label": labels}, mesh)

  def cost_bits(params, tokens, labels):
    logits_fn = lambda ids, y: transformer_lib.image_logits(
        model.apply({"params": params}, layout.build_input(ids, y), train=False), layout)
    return compression.compression_cost_bits(logits_fn, tokens, labels, groups,
                                             num_steps=SAMPLING_STEPS, mask_id=layout.mask_id)

  seconds = time_calls(jax.jit(cost_bits), (params, batch["tokens"], batch["label"]), calls)
  report["compression_cost_images_per_s"] = b / seconds
  return report


def bench_state_memory(config, num_devices: int) -> dict:
  """Train-state bytes per device on `num_devices` devices, replicated and with FSDP."""
  mesh = jax.sharding.AbstractMesh((num_devices,), (distributed.DATA_AXIS,),
                                   axis_types=(jax.sharding.AxisType.Auto,))
  report = {"devices": num_devices, "fsdp_min_size": config.mesh.fsdp_min_size}
  for fsdp in (False, True):
    config = config.copy_and_resolve_references()
    config.mesh.fsdp = fsdp
    abstract1 = stage1.abstract_train_state(config, mesh)[4]
    abstract2 = stage2.abstract_train_state(config, stage2.token_layout(config), mesh)[3]
    name = "fsdp" if fsdp else "replicated"
    report[f"stage1_{name}_bytes_per_device"] = distributed.abstract_bytes_per_device(abstract1)
    report[f"stage2_{name}_bytes_per_device"] = distributed.abstract_bytes_per_device(abstract2)
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
  paper = name != "demo"
  config = load_config(name, args.dtype, args.batch_size if paper else None)
  steps = args.steps if paper else args.demo_steps
  calls = 1 if paper else 2
  runs = {"stage1": lambda: bench_stage1(config, mesh, steps),
          "stage2": lambda: bench_stage2(config, mesh, steps),
          "sampling": lambda: bench_sampling(config, mesh, calls),
          "eval": lambda: bench_eval(config, mesh, calls),
          "state_memory": lambda: bench_state_memory(config, args.fsdp_devices)}
  report = {"image_size": config.dataset.image_size, "dtype": args.dtype}
  for part in args.parts:
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
  parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {PARTS}")
  parser.add_argument("--batch_size", type=int, default=8,
                      help="global batch of the paper configs (every part)")
  parser.add_argument("--steps", type=int, default=3, help="timed steps, paper configs")
  parser.add_argument("--demo_steps", type=int, default=20, help="timed steps, demo config")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="compute dtype of both stages (parameters stay float32)")
  parser.add_argument("--fsdp_devices", type=int, default=8,
                      help="devices assumed by the state_memory part")
  parser.add_argument("--matmul_size", type=int, default=None,
                      help="N of the peak matmul; default 2048 on CPU, 8192 elsewhere")
  args = parser.parse_args()
  args.configs, args.parts = args.configs.split(","), args.parts.split(",")
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
  mesh = distributed.make_mesh()
  first_peak = matmul_peak(dtype, size)
  results = {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
             "device_count": jax.device_count(), "host": host_description(),
             "jax": jax.__version__}
  configs = {}
  for name in args.configs:
    configs[name] = bench_config(name, args, mesh)
  last_peak = matmul_peak(dtype, size)
  # MFU against the best peak seen in this run; on a CPU also per CPU second of this
  # process, which takes out the time other processes held the cores.
  peak = {key: max(first_peak[key], last_peak[key]) for key in first_peak}
  for report in configs.values():
    for part in ("stage1", "stage2"):
      if part in report:
        r = report[part]
        if "skipped" in r:
          continue
        r["mfu"] = r["flops_per_s_per_device"] / peak["flops_per_s"]
        if "flops_per_cpu_s" in r:
          r["mfu_per_cpu_second"] = r["flops_per_cpu_s"] / peak["flops_per_cpu_s"]
  results["matmul_peak"] = {"flops_per_s_per_device": peak["flops_per_s"],
                            "dtype": args.dtype, "n": size, "start": first_peak,
                            "end": last_peak}
  results["configs"] = configs
  results["peak_memory"] = peak_memory()
  print(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
