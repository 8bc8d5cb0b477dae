"""`--mode=eval`: every number of Figure 3 / Figure 4 for one run, into results.json.

1. Reconstructions of the eval split by the EMA tokenizer: exact codebook usage (and the
   entropy of the code distribution), PSNR, and reconstruction FID against the training
   split's statistics (our reference batch, `own_reference`).
2. Samples for every CFG alpha of `eval.cfg_sweep`: sampling FID, sFID, precision/recall
   and Inception Score against the reference batch: ADM's (`eval.reference_npz`, as the
   paper's numbers) or ours; the best alpha is the one with lowest FID.
3. Compression cost of the eval split's token maps under the Stage II model (M2T's
   deterministic schedule), and real range coding of `eval.range_coding_images` of them.

Every count is exact (padding rows never reach a metric) and the same on any number of
processes: each process reads its rows of a split's batches or generates its devices' rows,
every process gathers the batch's outputs, and only process 0 writes. Host memory holds a
few batches and the feature pools, whatever the image count: images stream into ADM .npz
files under `workdir`/eval/ (reconstructions, their originals, the kept samples).
Every FID names its feature network (`fid_features`) and its reference (`fid_reference`).
"""

import contextlib
import hashlib
import json
import math
import os
import time

import jax
import numpy as np

from fsq_repro import api, files, parallel, timing
from fsq_repro import workdir as workdir_lib
from fsq_repro.data import adm_crop, pipeline
from fsq_repro.eval import adm_npz, compression, features, fid, generate
from fsq_repro.eval import precision_recall as pr
from fsq_repro.eval.reconstruction import psnr
from fsq_repro.eval.usage import CodebookUsage
from fsq_repro.images import to_uint8
from fsq_repro.models import factory

KEEP_SAMPLES = ("best", "all", "none")


def check_config(config) -> None:
  """What `evaluate` needs that the config names: one ValueError line naming field and fix."""
  e, size = config.eval, config.dataset.image_size
  if e.keep_samples not in KEEP_SAMPLES:
    raise ValueError(f"eval.keep_samples={e.keep_samples!r} is unknown; use one of "
                     f"{KEEP_SAMPLES}")
  features.check_available(e.feature_network, e.inception_weights, config.dataset.name)
  if e.reference_npz:
    path = e.reference_npz
    if not os.path.isfile(path):
      raise ValueError(f"eval.reference_npz={path!r} is not a file; download ADM's reference "
                       "batch (VIRTUAL_imagenet256_labeled.npz, ...) or unset it")
    missing = sorted(set(adm_npz.STATS_KEYS) - set(adm_npz.stats_keys(path)))
    if missing:
      raise ValueError(f"eval.reference_npz={path!r} lacks {', '.join(missing)}: a reference "
                       "batch holds ADM's statistics; use VIRTUAL_imagenet*_labeled.npz, or "
                       "unset it to use the training split")
    shape = adm_npz.image_shape(path)
    if shape[1:3] != (size, size):
      raise ValueError(f"eval.reference_npz={path!r} holds {shape[1]}x{shape[2]} images but "
                       f"dataset.image_size={size}; use the batch of {size} px")


def _split_batches(config, split, num_images, mesh, crop="center"):
  """Global eval batches of the first `num_images` examples of `split`; padding rows (the
  last batches' fill) have mask False."""
  d = config.dataset
  split = pipeline.first_examples(d.name, split, num_images, data_dir=d.data_dir)
  for batch in pipeline.create_split(
      d.name, split, batch_size=parallel.per_process_batch_size(config.eval.batch_size),
      image_size=d.image_size, train=False, drop_remainder=False, seed=config.seed,
      data_dir=d.data_dir, crop=crop):
    yield parallel.global_batch(batch, mesh)


class _Discard:
  """Stands in for an npz writer on processes that write nothing."""
  rows = 0

  def add(self, images):
    self.rows += len(images)


def _writing(path, shape):
  """adm_npz.writing on process 0, a writer that drops everything elsewhere."""
  if path is None or jax.process_index() != 0:
    return contextlib.nullcontext((_Discard(), {}))
  return adm_npz.writing(path, shape, overwrite=True)


def _all_processes(flag: bool) -> bool:
  """True only if `flag` is true on every process (one decision for a collective path)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.asarray(flag))))


def _masked_features(network, batch):
  return next(features.iter_features(network, [batch]))


def _uint8_batches(images_iter, batch_size, mesh):
  """uint8 host images, `batch_size` at a time -> global batches padded to `batch_size`."""
  for images in images_iter:
    real = len(images)
    padded = np.zeros((batch_size, *images.shape[1:]), np.float32)
    padded[:real] = images / 255.0
    yield {"image": parallel.shard_global(padded, mesh),
           "mask": np.arange(batch_size) < real}


def own_reference_path(config, network, cache_dir=None) -> str:
  """Where our reference batch of the training split is cached. The key names the dataset,
  size, split, feature network (its weights) and the preprocessing, so a sweep's runs share
  it and any change makes a new one."""
  cache_dir = cache_dir or files.cache_dir()
  # The source names the weights (file, accuracy), so retrained weights get new statistics.
  weights_id = hashlib.sha1(network.source.encode()).hexdigest()[:10]
  d = config.dataset
  key = f"{d.name}-{d.train_split}-{d.image_size}px-{adm_crop.VERSION}-{network.name}-" \
        f"{weights_id}-{config.eval.num_reference_images}"
  return os.path.join(cache_dir, "reference", key.replace("/", "_").replace(":", "_") + ".npz")


def own_reference(config, network, mesh, cache_dir=None) -> str:
  """Our reference batch in ADM's format: statistics (pool_3 and spatial) of the whole
  training split and its first `eval.num_reference_images` images, all made with ADM's
  `center_crop_arr`. Computed once per key, then read from the cache. Returns its path."""
  path = own_reference_path(config, network, cache_dir)
  if _all_processes(os.path.exists(path)):
    return path
  d = config.dataset
  total = pipeline.num_examples(d.name, d.train_split, data_dir=d.data_dir)
  num_images = min(config.eval.num_reference_images, total)
  pool_stats = spatial_stats = None
  with _writing(path, (num_images, d.image_size, d.image_size, 3)) as (images_out, arrays):
    for batch in _split_batches(config, d.train_split, total, mesh, crop="adm"):
      out = _masked_features(network, batch)
      if pool_stats is None:
        pool_stats = fid.FeatureStats.empty(out["pool"].shape[1])
        spatial_stats = fid.FeatureStats.empty(out["spatial"].shape[1])
      pool_stats.update(out["pool"])
      spatial_stats.update(out["spatial"])
      if images_out.rows < num_images:
        keep = parallel.host_array(batch["mask"])
        images = to_uint8(parallel.host_array(batch["image"])[keep])
        images_out.add(images[:num_images - images_out.rows])
    mu, sigma = pool_stats.mean_and_covariance()
    mu_s, sigma_s = spatial_stats.mean_and_covariance()
    arrays.update(mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
  return path


def load_reference(path, network, mesh, batch_size, with_pool=True) -> dict:
  """An ADM reference batch's stored statistics and (`with_pool`) the pool features of its
  images, the precision/recall reference set, computed a batch at a time."""
  stats = adm_npz.load_reference_stats(path)
  if stats is None:
    raise ValueError(f"{path} holds no mu/sigma/mu_s/sigma_s; use an ADM reference batch "
                     "(VIRTUAL_imagenet*_labeled.npz) or unset eval.reference_npz")
  reference = {**stats, "path": path}
  if with_pool:
    reference["pool"] = np.concatenate([out["pool"] for out in features.iter_features(
        network, _uint8_batches(adm_npz.iter_images(path, batch_size), batch_size, mesh))])
  return reference


def fid_to_reference(stats: fid.FeatureStats, reference: dict, key: str = "") -> float:
  mu, sigma = stats.mean_and_covariance()
  return fid.frechet_distance(mu, sigma, reference["mu" + key], reference["sigma" + key])


def reconstruct_split(config, tokenizer: api.Tokenizer, network, mesh, directory=None):
  """Usage, PSNR, reconstruction feature stats, and the tokens and labels in split order,
  over the first `eval.num_images` of the eval split. With `directory`, the reconstructions
  and their originals stream into reconstructions.npz and originals.npz there."""
  d = config.dataset
  num_images = min(config.eval.num_images,
                   pipeline.num_examples(d.name, d.eval_split, data_dir=d.data_dir))
  shape = (num_images, d.image_size, d.image_size, 3)
  path = lambda name: directory and os.path.join(directory, name)
  usage = CodebookUsage(tokenizer.codebook_size)
  pool_stats = None
  psnrs, tokens, labels, indices = [], [], [], []
  with _writing(path("reconstructions.npz"), shape) as (recon_out, recon_arrays), \
       _writing(path("originals.npz"), shape) as (originals_out, originals_arrays):
    for batch in _split_batches(config, d.eval_split, num_images, mesh):
      recon, q_out = tokenizer.reconstruct(batch["image"])
      keep = parallel.host_array(batch["mask"])
      codes = parallel.host_array(q_out.indices)[keep]
      usage.update(codes)
      tokens.append(codes)
      labels.append(parallel.host_array(batch["label"])[keep])
      indices.append(parallel.host_array(batch["index"])[keep])
      # Features on the sharded batch: each process computes only its devices' rows.
      out = _masked_features(network, {"image": recon, "mask": batch["mask"]})
      originals = parallel.host_array(batch["image"])[keep]
      recon = np.clip(parallel.host_array(recon)[keep], 0.0, 1.0)
      psnrs.append(psnr(originals, recon)[0])
      recon_out.add(to_uint8(recon))
      originals_out.add(to_uint8(originals))
      if pool_stats is None:
        pool_stats = fid.FeatureStats.empty(out["pool"].shape[1])
      pool_stats.update(out["pool"])
    labels = np.concatenate(labels)
    recon_arrays["arr_1"] = originals_arrays["arr_1"] = labels
  order = np.argsort(np.concatenate(indices), kind="stable")  # split order on any process count
  return {"usage": usage, "psnr": float(np.mean(np.concatenate(psnrs))),
          "pool_stats": pool_stats, "tokens": np.concatenate(tokens)[order],
          "labels": labels[order], "num_images": len(labels)}


def _samples_path(directory, alpha):
  return os.path.join(directory, f"samples_cfg{alpha:g}.npz")


def sample_and_score(config, generator, network, reference, alpha, path=None) -> dict:
  """Sampling FID, sFID, precision, recall and IS of `eval.num_sample_images` samples at
  guidance `alpha`, scored as they are made (and streamed into the ADM npz `path`)."""
  e, size = config.eval, config.dataset.image_size
  labels = generate.balanced_labels(e.num_sample_images, generator.layout.num_classes)
  pool, spatial_stats, logits = [], None, []
  with _writing(path, (len(labels), size, size, 3)) as (images_out, arrays):
    for images, real in generate.iter_samples(generator, labels, config.sample.batch_size,
                                              alpha, config.seed):
      out = next(features.iter_features(network, [{
          "image": images, "mask": np.arange(images.shape[0]) < real}]))
      if spatial_stats is None:
        spatial_stats = fid.FeatureStats.empty(out["spatial"].shape[1])
      spatial_stats.update(out["spatial"])
      pool.append(out["pool"])
      logits.append(out["logits"])
      images_out.add(to_uint8(parallel.host_array(images)[:real]))
    arrays["arr_1"] = labels
  pool = np.concatenate(pool)
  precision, recall = pr.precision_recall(reference["pool"], pool, mode=e.precision_recall)
  pool_stats = fid.FeatureStats.empty(pool.shape[1]).update(pool)
  return {"fid": fid_to_reference(pool_stats, reference),
          "sfid": fid_to_reference(spatial_stats, reference, "_s"),
          "precision": float(precision), "recall": float(recall),
          "inception_score": fid.inception_score(np.concatenate(logits))}


def sampling_metrics(config, generator, network, reference, directory=None):
  """`sample_and_score` for every alpha of the CFG sweep. Per `eval.keep_samples`, the npz of
  the best alpha so far ("best"; at most two on disk at once), of every alpha ("all") or
  none stay in `directory`."""
  e = config.eval
  keep = e.keep_samples if directory else "none"
  by_cfg = {}
  for alpha in e.cfg_sweep:
    start = time.time()
    path = _samples_path(directory, alpha) if keep != "none" else None
    scores = by_cfg[f"{alpha:g}"] = sample_and_score(config, generator, network, reference,
                                                     alpha, path)
    print(f"eval: cfg {alpha:g} ({time.time() - start:.0f} s): sampling FID "
          f"{scores['fid']:.3f} ({network.name}), precision {scores['precision']:.3f}, "
          f"recall {scores['recall']:.3f}", flush=True)
    best = min(by_cfg, key=lambda a: by_cfg[a]["fid"])
    if keep == "best" and jax.process_index() == 0:
      for other in e.cfg_sweep:
        if f"{other:g}" != best and os.path.exists(_samples_path(directory, other)):
          os.remove(_samples_path(directory, other))
  return by_cfg


def compression_metrics(config, generator: api.Generator, tokens, labels):
  """Bits per token and per image of the first `eval.compression_num_images` eval token maps
  (ideal: -log2 p under M2T's schedule), and real range coding of the first
  `eval.range_coding_images` of those same maps, with the coder's overhead over ideal."""
  e = config.eval
  layout = generator.layout
  height, width = generator.grid
  n = min(e.compression_num_images, len(tokens))
  flat = tokens[:n].reshape(n, -1)
  bits = []
  for start in range(0, n, e.batch_size):
    b, _ = compression.compression_cost(
        generator.logits, flat[start:start + e.batch_size], labels[start:start + e.batch_size],
        height=height, width=width, codebook_size=layout.codebook_size, mask_id=layout.mask_id)
    bits.append(b)
  bits = np.concatenate(bits)
  results = {"compression_cost_bits_per_token": float(bits.sum() / flat.size),
             "compression_cost_bits_per_image": float(bits.mean()),
             "uniform_bits_per_token": math.log2(layout.codebook_size),
             "compression_num_images": n}
  m = min(e.range_coding_images, n)
  results["range_coded_images"] = m
  if not m:
    return results
  real, ideal = [], []
  for start in range(0, m, e.batch_size):
    stop = min(start + e.batch_size, m)
    coded = compression.range_code_tokens(
        generator.logits, flat[start:stop], labels[start:stop], height=height, width=width,
        codebook_size=layout.codebook_size, mask_id=layout.mask_id)
    real.append(coded["real_bits"])
    ideal.append(coded["ideal_bits"])
  real, ideal = np.concatenate(real), np.concatenate(ideal)
  tokens_per_image = height * width
  return {**results,
          "range_coded_bits_per_token": float(real.mean() / tokens_per_image),
          "range_coded_bits_per_image": float(real.mean()),
          "range_coded_ideal_bits_per_token": float(ideal.mean() / tokens_per_image),
          "range_coded_ideal_bits_per_image": float(ideal.mean()),
          "range_coding_overhead": float(real.sum() / ideal.sum() - 1.0)}


def evaluate(config, workdir: str) -> dict:
  start = time.time()
  e = config.eval
  mesh = parallel.make_mesh()
  directory = workdir_lib.eval_dir(workdir)
  if jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
    # results.json counts as complete only next to the config that computed it: the old
    # config goes before anything here changes, the new one after the new results.
    config_path = os.path.join(directory, "config.json")
    if os.path.exists(config_path):
      os.remove(config_path)
  network = features.get_feature_network(
      e.feature_network, inception_weights=e.inception_weights,
      dataset_name=config.dataset.name, image_size=config.dataset.image_size,
      data_dir=config.dataset.data_dir)
  print(f"eval: FID features from {network.name} ({network.source})", flush=True)
  timing.mark("feature_network")  # loaded, or (offline, first use) trained
  train_reference = load_reference(own_reference(config, network, mesh), network, mesh,
                                   e.batch_size, with_pool=not e.reference_npz)
  reference = train_reference
  if e.reference_npz:
    reference = load_reference(e.reference_npz, network, mesh, e.batch_size)
  print(f"eval: sampling metrics against {reference['path']}", flush=True)
  timing.mark("reference")  # its statistics (made on first use) and the features of its images

  generator = api.Generator.from_workdir(workdir, config, mesh)
  timing.mark("setup")  # both networks restored
  recon = reconstruct_split(config, generator.tokenizer, network, mesh, directory)
  timing.mark("reconstruction", count=recon["num_images"])
  recon_fid = fid_to_reference(recon["pool_stats"], train_reference)
  print(f"eval: ({time.time() - start:.0f} s) reconstruction FID {recon_fid:.3f}, PSNR "
        f"{recon['psnr']:.2f} dB, usage {recon['usage'].usage:.4f} "
        f"({recon['usage'].codes_used} of {generator.tokenizer.codebook_size} codes)",
        flush=True)

  by_cfg = sampling_metrics(config, generator, network, reference, directory)
  timing.mark("sampling", count=len(e.cfg_sweep) * e.num_sample_images)
  best = min(by_cfg, key=lambda a: by_cfg[a]["fid"])
  costs_start = time.time()
  costs = compression_metrics(config, generator, recon["tokens"], recon["labels"])
  timing.mark("compression")
  print(f"eval: compression cost {costs['compression_cost_bits_per_token']:.3f} bits/token "
        f"(uniform {costs['uniform_bits_per_token']:.3f}) in {time.time() - costs_start:.0f} s",
        flush=True)

  q = config.quantizer
  results = {
      "quantizer": q.kind, "levels": list(q.levels) if q.kind == "fsq" else None,
      "codebook_size": factory.codebook_size(q), "dataset": config.dataset.name,
      "image_size": config.dataset.image_size,
      "stage1_steps": config.stage1.num_train_steps,
      "stage2_steps": config.stage2.num_train_steps,
      "num_eval_images": recon["num_images"],
      "num_sample_images": e.num_sample_images, "fid_features": network.name,
      "fid_features_source": network.source,
      # Sampling metrics against ADM's batch when given; reconstruction FID always against
      # the training split, as the paper computes it.
      "fid_reference": reference["path"],
      "fid_reference_kind": "adm_reference_batch" if e.reference_npz else "train_split",
      "recon_fid_reference": train_reference["path"],
      "reference_preprocessing": adm_crop.VERSION,
      "recon_fid": recon_fid, "psnr": recon["psnr"], "usage": recon["usage"].usage,
      "codes_used": recon["usage"].codes_used,
      "code_entropy_bits_per_token": recon["usage"].entropy_bits,
      "sampling_fid": by_cfg[best]["fid"], "best_cfg": float(best),
      "sampling_fid_by_cfg": {a: v["fid"] for a, v in by_cfg.items()},
      "sampling_sfid": by_cfg[best]["sfid"],
      "precision": by_cfg[best]["precision"], "recall": by_cfg[best]["recall"],
      "precision_by_cfg": {a: v["precision"] for a, v in by_cfg.items()},
      "recall_by_cfg": {a: v["recall"] for a, v in by_cfg.items()},
      "precision_recall_mode": e.precision_recall,
      "inception_score": by_cfg[best]["inception_score"],
      **costs, "eval_seconds": time.time() - start,
  }
  if jax.process_index() == 0:
    with files.atomic_write(workdir_lib.results_path(workdir)) as f:
      json.dump(results, f, indent=1)
    workdir_lib.write_run_config(directory, config)
    print(f"eval: wrote {workdir_lib.results_path(workdir)} in "
          f"{results['eval_seconds']:.0f} s", flush=True)
  return results
