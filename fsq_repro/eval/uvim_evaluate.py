"""UViM's evaluation job: <workdir>/results.json for a trained Stage I + Stage II.

For every evaluation image the task model samples the code tokens autoregressively (at
eval.temperature) and the frozen Stage I decodes them with the context: the task's
prediction. Scored beside it, on the same images: the Stage I oracle (the decoder of the
codes the encoder gives the true labels) and the task's model-free baseline (colorization:
the gray input). Codebook usage counts the oracle's codes over the evaluation images. A task
with a metric over the whole split (panoptic's PQ, `Task.dataset_metric`) scores the model's
and the oracle's predictions with it too, writing what it writes under <workdir>/eval.

Colorization's FID, eval.fid_protocol:
  "coltran"  ColTran's FID-5k, as big_vision's evaluator: the first eval.num_images
             validation images in TFDS read order, centre square, area resize to the model's
             size, colourised, area resize to eval.fid_size, uint8; against read-order images
             eval.reference_offset.. at eval.fid_size (eval/coltran.py).
  "split"    every eval-split image (the embedded demo), against the ground truth of the
             same images at the model's size.
Every FID names its feature network; the offline network's are not comparable with the
paper's Inception FIDs.
"""

import json
import os
import time

import jax
import numpy as np

from fsq_repro import api, files, parallel, tasks, timing
from fsq_repro import workdir as workdir_lib
from fsq_repro.data import pipeline
from fsq_repro.eval import coltran, features, fid
from fsq_repro.eval.usage import CodebookUsage
from fsq_repro.models import factory



def _eval_batches(config, *, image_size, record_indices=None, crop="center"):
  d, e = config.dataset, config.eval
  mesh = parallel.make_mesh()
  for batch in pipeline.create_split(
      d.name, d.eval_split, batch_size=parallel.per_process_batch_size(e.batch_size),
      image_size=image_size, train=False, drop_remainder=False, seed=config.seed,
      data_dir=d.data_dir, crop=crop, exclude_classes=tuple(d.exclude_classes),
      record_indices=record_indices):
    yield parallel.global_batch(batch, mesh)


def protocol_positions(config, task):
  """(positions of the evaluated images in the eval split or None for all, positions of
  the FID reference images or None for the evaluated images' own ground truth)."""
  d, e = config.dataset, config.eval
  if not task.fid or e.fid_protocol == "split":
    return None, None
  shard_lengths = pipeline.shard_lengths(d.name, d.eval_split, data_dir=d.data_dir)
  return coltran.coltran_positions(shard_lengths, e.num_images, e.reference_offset)


class _Scores:
  """Per-method means of the task's per-example scores, and FID statistics of pictures."""

  def __init__(self):
    self.sums, self.count, self.stats = {}, 0, {}

  def add(self, method, scores, mask, pictures_features=None):
    for name, values in scores.items():
      key = (method, name)
      self.sums[key] = self.sums.get(key, 0.0) + float(np.sum(values[mask]))
    if pictures_features is not None:
      if method not in self.stats:
        self.stats[method] = fid.FeatureStats.empty(pictures_features.shape[1])
      self.stats[method].update(pictures_features)

  def means(self, method):
    return {name: total / self.count for (m, name), total in self.sums.items() if m == method}


def _fid_pictures(config, pictures):
  """Pictures in [0, 1] as the FID protocol scores them (ColTran: area resize, uint8)."""
  if config.eval.fid_protocol == "coltran":
    return coltran.to_fid_size(np.asarray(pictures) * 2.0 - 1.0, config.eval.fid_size) / 255.0
  return pictures


def evaluate(config, workdir: str) -> dict:
  start, e = time.time(), config.eval
  task = tasks.get(config.task.name)
  mesh = parallel.make_mesh()
  directory = workdir_lib.eval_dir(workdir)
  if jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
    config_path = os.path.join(directory, "config.json")
    if os.path.exists(config_path):  # results count as complete only beside their config
      os.remove(config_path)
  predictor = api.TaskPredictor.from_workdir(workdir, config, mesh)
  coder = predictor.coder
  network = None
  if task.fid:
    size = e.fid_size if e.fid_protocol == "coltran" else config.dataset.image_size
    network = features.get_feature_network(
        e.feature_network, inception_weights=e.inception_weights,
        dataset_name=config.dataset.name, image_size=size, data_dir=config.dataset.data_dir)
    print(f"eval: FID features from {network.name} ({network.source})", flush=True)
  timing.mark("setup")
  prepare = jax.jit(task.prepare)
  oracle = jax.jit(lambda labels, context: task.predict(coder.decode(
      coder.encode(labels, context), context)))
  scores_fn = jax.jit(task.scores)
  eval_positions, reference_positions = protocol_positions(config, task)
  usage = CodebookUsage(coder.codebook_size)
  scores, figure = _Scores(), {}
  split_metric = task.dataset_metric(config, directory) if task.dataset_metric else None
  crop = "coltran" if task.fid and e.fid_protocol == "coltran" else task.eval_crop
  # ColTran feeds x / 128 - 1 (eval/coltran.py), training's inputs are x / 127.5 - 1.
  scale = coltran.INPUT_SCALE if crop == "coltran" else 1.0
  rng = jax.random.key(config.stage2.seed)
  for i, batch in enumerate(_eval_batches(config, image_size=config.dataset.image_size,
                                          record_indices=eval_positions, crop=crop)):
    example = prepare({**batch, "image": batch["image"] * scale})
    mask = parallel.host_array(batch["mask"]).astype(bool)
    codes = coder.encode(example["labels"], example["context"])
    usage.update(parallel.host_array(codes)[mask])
    predictions = {"model": predictor.predict(example, jax.random.fold_in(rng, i),
                                              e.temperature),
                   "oracle": oracle(example["labels"], example["context"])}
    if task.baseline_prediction is not None:
      predictions["baseline"] = task.baseline_prediction(example)
    if split_metric is not None:
      split_metric.add(jax.tree.map(parallel.host_array, predictions),
                       parallel.host_array(batch["index"]))
    truth = {"picture": task.picture(task.predict(example["labels"]))}
    for method, prediction in predictions.items():
      pictures = parallel.host_array(task.picture(prediction))
      feats = None
      if network is not None:
        feats = next(features.iter_features(network, [{"image": _fid_pictures(config, pictures),
                                                       "mask": mask}]))["pool"]
      scores.add(method, jax.tree.map(parallel.host_array, scores_fn(prediction, example)),
                 mask, feats)
      if len(figure.get(method, ())) < e.figure_images:
        figure.setdefault(method, []).extend(pictures[mask][:e.figure_images])
    if network is not None and reference_positions is None:
      truth_pictures = parallel.host_array(truth["picture"])
      scores.add("truth", {}, mask, next(features.iter_features(
          network, [{"image": truth_pictures, "mask": mask}]))["pool"])
    if len(figure.get("truth", ())) < e.figure_images:
      figure.setdefault("truth", []).extend(parallel.host_array(truth["picture"])[mask]
                                            [:e.figure_images])
      figure.setdefault("input", []).extend(parallel.host_array(
          (example["image"] + 1.0) / 2.0)[mask][:e.figure_images])
    scores.count += int(mask.sum())
  timing.mark("predictions", count=scores.count)
  split_scores = split_metric.results() if split_metric is not None else {}

  fids = {}
  if network is not None:
    reference = scores.stats.get("truth")
    if reference_positions is not None:
      reference = fid.FeatureStats.empty(next(iter(scores.stats.values())).dim)
      for batch in _eval_batches(config, image_size=e.fid_size,
                                 record_indices=reference_positions, crop="coltran"):
        for out in features.iter_features(network, [batch]):
          reference.update(out["pool"])
    mu_r, sigma_r = reference.mean_and_covariance()
    for method in predictions:
      mu, sigma = scores.stats[method].mean_and_covariance()
      fids[method] = fid.frechet_distance(mu, sigma, mu_r, sigma_r)
    timing.mark("fid_reference")

  q = config.quantizer
  results = {
      "family": "uvim", "task": task.name, "quantizer": q.kind,
      "levels": list(q.levels) if q.kind == "fsq" else None,
      "codebook_size": factory.codebook_size(q),
      "splitting": bool(q.splitting) if q.kind == "uvim_vq" else None,
      "context": bool(config.model.encoder_context or config.model.decoder_context),
      "stage2_seed": config.stage2.seed, "dataset": config.dataset.name,
      "eval_split": config.dataset.eval_split, "image_size": config.dataset.image_size,
      "stage1_steps": config.stage1.num_train_steps,
      "stage2_steps": config.stage2.num_train_steps, "num_eval_images": scores.count,
      "temperature": e.temperature, "usage": usage.usage, "codes_used": usage.codes_used,
      "baseline": task.baseline,
      **{f"{name}" if method == "model" else f"{method}_{name}": value
         for method in predictions
         for name, value in {**scores.means(method), **split_scores.get(method, {})}.items()},
  }
  if network is not None:
    results.update({**{"fid" if m == "model" else f"{m}_fid": v for m, v in fids.items()},
                    "fid_features": network.name,
                    "fid_features_source": network.source, "fid_protocol": e.fid_protocol,
                    "fid_reference": ("the evaluated images' ground truth"
                                      if reference_positions is None else
                                      f"{config.dataset.eval_split} read-order images "
                                      f"{e.reference_offset}..{e.reference_offset + e.num_images - 1}"
                                      f" at {e.fid_size} px")})
  results["eval_seconds"] = time.time() - start
  if jax.process_index() == 0:
    np.savez(os.path.join(directory, "figure.npz"),
             **{name: np.stack(images[:e.figure_images]) for name, images in figure.items()})
    with files.atomic_write(workdir_lib.results_path(workdir)) as f:
      json.dump(results, f, indent=1)
    workdir_lib.write_run_config(directory, config)
    summary = ", ".join(f"{k} {results[k]:.4g}" for k in ("psnr", "fid", "rmse", "pq",
                                                          "oracle_psnr", "oracle_fid",
                                                          "oracle_rmse", "oracle_pq",
                                                          "baseline_psnr", "baseline_fid",
                                                          "usage")
                        if k in results)
    print(f"eval: {summary}; {usage.codes_used} codes used; wrote "
          f"{workdir_lib.results_path(workdir)} in {results['eval_seconds']:.0f} s", flush=True)
  return results
