"""`--mode=eval`: every number of Figure 3 / Figure 4 for one run, into results.json.

1. Reconstructions of the eval split by the EMA tokenizer: exact codebook usage (and the
   entropy of the code distribution), PSNR, and reconstruction FID against the training
   split's statistics.
2. Samples for every CFG alpha of `eval.cfg_sweep`: sampling FID, precision/recall
   against a reference set, Inception Score; the best alpha is the one with lowest FID.
3. Compression cost of the eval split's token maps under the Stage II model (M2T's
   deterministic schedule), and real range coding of a few maps.
Every FID names its feature network (`fid_features`). Reconstructions and the best-alpha
samples are saved as ADM .npz files under `workdir`/eval/ for the official suite.
"""

import hashlib
import json
import math
import os
import time

import jax
import numpy as np

from fsq_repro import api, files, parallel
from fsq_repro import workdir as workdir_lib
from fsq_repro.data import pipeline
from fsq_repro.eval import adm_npz, compression, features, fid, generate
from fsq_repro.eval import precision_recall as pr
from fsq_repro.eval.reconstruction import psnr
from fsq_repro.eval.usage import CodebookUsage
from fsq_repro.images import to_uint8
from fsq_repro.models import factory


def _split_batches(config, split, num_images, mesh):
  """Global eval batches of `split` (center crops), at most `num_images` real rows."""
  e = config.eval
  local_batch = parallel.per_process_batch_size(e.batch_size)
  seen = 0
  for batch in pipeline.create_split(config.dataset.name, split, batch_size=local_batch,
                                     image_size=config.dataset.image_size, train=False,
                                     seed=config.seed, data_dir=config.dataset.data_dir):
    if seen >= num_images:
      return
    yield parallel.global_batch(batch, mesh)
    seen += e.batch_size


def reference_statistics(config, network, mesh, cache_dir=None):
  """Training-split feature statistics and a reference image set, cached as an ADM .npz.

  The cache key holds the dataset, image size, split and feature network, so runs of a
  sweep share one computation.
  """
  cache_dir = cache_dir or files.cache_dir()
  # The source names the weights (file, accuracy), so retrained weights get new statistics.
  weights_id = hashlib.sha1(network.source.encode()).hexdigest()[:10]
  key = f"{config.dataset.name}-{config.dataset.train_split}-{config.dataset.image_size}px-" \
        f"{network.name}-{weights_id}-{config.eval.num_reference_images}"
  path = os.path.join(cache_dir, "reference", key.replace("/", "_").replace(":", "_") + ".npz")
  if os.path.exists(path):
    stats = adm_npz.load_reference_stats(path)
    images = adm_npz.load_images(path)
    return stats, images, path
  total = pipeline.num_examples(config.dataset.name, config.dataset.train_split,
                                data_dir=config.dataset.data_dir)
  pool_stats, spatial_stats, _ = features.compute_statistics(
      network, _split_batches(config, config.dataset.train_split, total, mesh))
  images = []
  for batch in _split_batches(config, config.dataset.train_split,
                              config.eval.num_reference_images, mesh):
    keep = parallel.host_array(batch["mask"])
    images.append(to_uint8(parallel.host_array(batch["image"])[keep]))
  images = np.concatenate(images)[:config.eval.num_reference_images]
  mu, sigma = pool_stats.mean_and_covariance()
  mu_s, sigma_s = spatial_stats.mean_and_covariance()
  stats = {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s}
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    adm_npz.save_reference_batch(path, images, stats=stats, overwrite=True)
  return stats, images, path


def _fid_to_reference(stats: fid.FeatureStats, reference: dict) -> float:
  mu, sigma = stats.mean_and_covariance()
  return fid.frechet_distance(mu, sigma, reference["mu"], reference["sigma"])


def _image_batches(images: np.ndarray, batch_size: int):
  for start in range(0, len(images), batch_size):
    yield {"image": images[start:start + batch_size].astype(np.float32) / 255.0}


def reconstruct_split(config, tokenizer: api.Tokenizer, network, mesh):
  """Usage, PSNR, reconstruction feature stats, tokens and labels over the eval split."""
  e = config.eval
  usage = CodebookUsage(tokenizer.codebook_size)
  pool_stats = None
  psnrs, tokens, labels, recon_uint8 = [], [], [], []
  for batch in _split_batches(config, config.dataset.eval_split, e.num_images, mesh):
    recon, q_out = tokenizer.reconstruct(batch["image"])
    keep = parallel.host_array(batch["mask"])
    indices = parallel.host_array(q_out.indices)[keep]
    usage.update(indices)
    tokens.append(indices)
    labels.append(parallel.host_array(batch["label"])[keep])
    originals = parallel.host_array(batch["image"])[keep]
    recon = np.clip(parallel.host_array(recon)[keep], 0.0, 1.0)
    psnrs.append(psnr(originals, recon)[0])
    recon_uint8.append(to_uint8(recon))
    out = next(features.iter_features(network, [{"image": recon}]))
    if pool_stats is None:
      pool_stats = fid.FeatureStats.empty(out["pool"].shape[1])
    pool_stats.update(out["pool"])
  return {"usage": usage, "psnr": float(np.mean(np.concatenate(psnrs))),
          "pool_stats": pool_stats, "tokens": np.concatenate(tokens),
          "labels": np.concatenate(labels), "reconstructions": np.concatenate(recon_uint8)}


def sampling_metrics(config, generator, network, reference, reference_pool):
  """Sampling FID, precision, recall and IS for every alpha of the CFG sweep."""
  e = config.eval
  by_cfg, samples_by_cfg = {}, {}
  for alpha in e.cfg_sweep:
    start = time.time()
    images, labels = generate.sample_many(generator, num_images=e.num_sample_images,
                                          batch_size=config.sample.batch_size,
                                          cfg_alpha=alpha, seed=config.seed)
    outputs = list(features.iter_features(network, _image_batches(images, e.batch_size)))
    sample_pool = np.concatenate([out["pool"] for out in outputs])
    sample_spatial = np.concatenate([out["spatial"] for out in outputs])
    logits = np.concatenate([out["logits"] for out in outputs])
    pool_stats = fid.FeatureStats.empty(sample_pool.shape[1]).update(sample_pool)
    spatial_stats = fid.FeatureStats.empty(sample_spatial.shape[1]).update(sample_spatial)
    precision, recall = pr.precision_recall(reference_pool, sample_pool,
                                            mode=e.precision_recall)
    by_cfg[f"{alpha:g}"] = {"fid": _fid_to_reference(pool_stats, reference),
                            "sfid": fid.frechet_distance(*spatial_stats.mean_and_covariance(),
                                                         reference["mu_s"], reference["sigma_s"]),
                            "precision": float(precision), "recall": float(recall),
                            "inception_score": fid.inception_score(logits)}
    samples_by_cfg[f"{alpha:g}"] = (images, labels)
    print(f"eval: cfg {alpha:g} ({time.time() - start:.0f} s): sampling FID {by_cfg[f'{alpha:g}']['fid']:.3f} "
          f"({network.name}), precision {precision:.3f}, recall {recall:.3f}", flush=True)
  return by_cfg, samples_by_cfg


def compression_metrics(config, generator: api.Generator, tokens, labels):
  """Bits per token and per image of the eval token maps, and real range coding."""
  e = config.eval
  layout = generator.layout
  height, width = generator.grid
  logits_fn = generator.logits

  n = min(e.compression_num_images, len(tokens))
  flat = tokens[:n].reshape(n, -1)
  bits = []
  for start in range(0, n, e.batch_size):
    b, _ = compression.compression_cost(
        logits_fn, flat[start:start + e.batch_size], labels[start:start + e.batch_size],
        height=height, width=width, codebook_size=layout.codebook_size, mask_id=layout.mask_id)
    bits.append(b)
  bits = np.concatenate(bits)
  m = min(e.range_coding_images, n)
  coded = compression.range_code_tokens(
      logits_fn, flat[:m], labels[:m], height=height, width=width,
      codebook_size=layout.codebook_size, mask_id=layout.mask_id) if m else None
  return {"compression_cost_bits_per_token": float(bits.sum() / flat.size),
          "compression_cost_bits_per_image": float(bits.mean()),
          "uniform_bits_per_token": math.log2(layout.codebook_size),
          "compression_num_images": n,
          "range_coded_bits_per_token": coded and float(coded["real_bits_per_token"]),
          "range_coded_ideal_bits_per_token": coded and float(coded["ideal_bits_per_token"]),
          "range_coded_images": m}


def evaluate(config, workdir: str) -> dict:
  start = time.time()
  e = config.eval
  mesh = parallel.make_mesh()
  network = features.get_feature_network(
      e.feature_network, inception_weights=e.inception_weights,
      dataset_name=config.dataset.name, image_size=config.dataset.image_size,
      data_dir=config.dataset.data_dir)
  print(f"eval: FID features from {network.name} ({network.source})", flush=True)
  reference, reference_images, reference_path = reference_statistics(config, network, mesh)
  reference_pool = np.concatenate([out["pool"] for out in features.iter_features(
      network, _image_batches(reference_images, e.batch_size))])

  generator = api.Generator.from_workdir(workdir, config, mesh)
  recon = reconstruct_split(config, generator.tokenizer, network, mesh)
  recon_fid = _fid_to_reference(recon["pool_stats"], reference)
  print(f"eval: ({time.time() - start:.0f} s) reconstruction FID {recon_fid:.3f}, PSNR {recon['psnr']:.2f} dB, usage "
        f"{recon['usage'].usage:.4f} ({recon['usage'].codes_used} of "
        f"{generator.tokenizer.codebook_size} codes)", flush=True)

  by_cfg, samples_by_cfg = sampling_metrics(config, generator, network, reference,
                                            reference_pool)
  best = min(by_cfg, key=lambda a: by_cfg[a]["fid"])
  costs_start = time.time()
  costs = compression_metrics(config, generator, recon["tokens"], recon["labels"])
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
      "num_eval_images": int(recon["usage"].total // factory.tokens_per_image(config)),
      "num_sample_images": e.num_sample_images, "fid_features": network.name,
      "fid_features_source": network.source, "fid_reference": reference_path,
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
    directory = workdir_lib.eval_dir(workdir)
    os.makedirs(directory, exist_ok=True)
    adm_npz.save_samples(os.path.join(directory, "reconstructions.npz"),
                         recon["reconstructions"], recon["labels"], overwrite=True)
    images, labels = samples_by_cfg[best]
    adm_npz.save_samples(os.path.join(directory, f"samples_cfg{best}.npz"), images, labels,
                         overwrite=True)
    # results.json counts as complete only next to the config that computed it, so the old
    # config goes before the new results and the new config after them.
    config_path = os.path.join(directory, "config.json")
    if os.path.exists(config_path):
      os.remove(config_path)
    with files.atomic_write(workdir_lib.results_path(workdir)) as f:
      json.dump(results, f, indent=1)
    workdir_lib.write_run_config(directory, config)
    print(f"eval: wrote {workdir_lib.results_path(workdir)} in "
          f"{results['eval_seconds']:.0f} s", flush=True)
  return results
