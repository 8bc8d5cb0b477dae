"""Stage I -> Stage II -> samples -> results.json on tiny models, for both quantizers."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from fsq_repro import api
from fsq_repro.data import pipeline
from fsq_repro.eval import adm_npz, evaluate, features, fid, generate
from fsq_repro.images import to_uint8
from fsq_repro.models import factory
from fsq_repro.train import stage1, stage2
from test_precision_recall import adm_precision_recall
from tiny_configs import tiny_pipeline_config

RESULT_KEYS = {
    "quantizer", "levels", "codebook_size", "dataset", "image_size", "stage1_steps",
    "stage2_steps", "num_eval_images", "fid_features", "recon_fid", "psnr", "usage",
    "codes_used", "sampling_fid", "sampling_fid_by_cfg", "precision", "recall",
    "inception_score", "compression_cost_bits_per_token", "compression_cost_bits_per_image",
    "sampling_sfid"}


@pytest.mark.slow
@pytest.mark.parametrize("arg", ["quantizer=fsq,codebook_bits=6", "quantizer=vq,codebook_bits=6"])
def test_whole_pipeline(tmp_path, arg):
  config = tiny_pipeline_config(arg)
  config.eval.num_images = 90  # not a multiple of eval.batch_size=32: padding is not counted
  workdir = str(tmp_path)
  stage1.train_and_evaluate(config, workdir)
  stage2.train_and_evaluate(config, workdir)
  with open(tmp_path / "stage2" / "metrics.jsonl") as f:
    losses = [json.loads(line)["loss"] for line in f]
  assert losses[-1] < losses[0]  # the transformer learns the token statistics

  directory = generate.write_samples(config, workdir)
  with np.load(os.path.join(directory, "samples.npz")) as samples:  # as ADM reads them
    images, labels = samples["arr_0"], samples["arr_1"]
  assert images.shape == (16, 16, 16, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, np.arange(16) % 8)
  grid = np.asarray(Image.open(os.path.join(directory, "class_000.png")))
  assert grid.shape == (16, 2 * 16, 3)  # two samples of class 0

  results = evaluate.evaluate(config, workdir)
  assert RESULT_KEYS <= set(results)
  assert json.load(open(tmp_path / "results.json")) == json.loads(json.dumps(results))
  assert results["fid_features"].startswith("offline_cnn")
  assert set(results["sampling_fid_by_cfg"]) == {"0", "0.5"}
  assert results["sampling_fid"] == min(results["sampling_fid_by_cfg"].values())
  assert 0 <= results["precision"] <= 1 and 0 <= results["recall"] <= 1
  assert results["compression_cost_bits_per_token"] > 0
  assert results["range_coded_bits_per_token"] >= results["range_coded_ideal_bits_per_token"] - 0.5
  assert results["fid_reference_kind"] == "train_split"
  assert results["fid_reference"] == results["recon_fid_reference"]

  # The eval split's first 90 images, once each: in the usage count and the saved files.
  assert results["num_eval_images"] == 90
  eval_dir = tmp_path / "eval"
  with np.load(eval_dir / "originals.npz") as originals, \
       np.load(eval_dir / "reconstructions.npz") as reconstructions:
    assert originals["arr_0"].shape == reconstructions["arr_0"].shape == (90, 16, 16, 3)
    crops = next(pipeline.create_split(config.dataset.name, "validation[0:90]", batch_size=90,
                                       image_size=16, train=False))
    np.testing.assert_array_equal(originals["arr_0"], to_uint8(crops["image"]))
    np.testing.assert_array_equal(reconstructions["arr_1"], crops["label"])
  best = f"{results['best_cfg']:g}"
  assert sorted(os.listdir(eval_dir)) == sorted(  # eval.keep_samples="best"
      ["config.json", "originals.npz", "reconstructions.npz", f"samples_cfg{best}.npz"])

  # Usage equals a brute-force count of the codes of the evaluated images.
  tokenizer = api.Tokenizer.from_workdir(workdir)  # the config it saved
  assert results["num_eval_images"] == config.eval.num_images
  brute = set()
  batches = pipeline.create_split(config.dataset.name, "validation[0:90]", batch_size=32,
                                  image_size=16, train=False)
  for batch in batches:  # the same 90 images, in batches whose padding is masked
    indices = tokenizer.encode(batch["image"])
    brute |= set(np.asarray(indices)[batch["mask"]].ravel().tolist())
  assert results["codes_used"] == len(brute)
  assert results["usage"] == len(brute) / factory.codebook_size(config.quantizer)


@pytest.mark.slow
def test_sampling_metrics_against_an_adm_reference_batch(tmp_path):
  """With eval.reference_npz, sampling FID, sFID, precision and recall are computed against
  that batch: equal to ADM's formulas (and its evaluator's precision/recall code, transcribed)
  on the features of the saved samples and of the batch's images."""
  config = tiny_pipeline_config()
  workdir = str(tmp_path / "run")
  stage1.train_and_evaluate(config, workdir)
  stage2.train_and_evaluate(config, workdir)
  network = features.get_feature_network(
      "auto", dataset_name=config.dataset.name, image_size=16, data_dir=config.dataset.data_dir)

  def features_of(images):
    return next(features.iter_features(network, [{"image": images / 255.0}]))

  # An ADM-format reference batch: 48 training crops, the statistics of their features.
  crops = next(pipeline.create_split(config.dataset.name, "train[100:148]", batch_size=48,
                                     image_size=16, train=False))
  reference_images = to_uint8(crops["image"])
  reference = features_of(reference_images)
  stats = dict(zip(("mu", "sigma"), fid.FeatureStats.empty(reference["pool"].shape[1]).update(
      reference["pool"]).mean_and_covariance()))
  stats.update(zip(("mu_s", "sigma_s"), fid.FeatureStats.empty(
      reference["spatial"].shape[1]).update(reference["spatial"]).mean_and_covariance()))
  path = str(tmp_path / "VIRTUAL_test16_labeled.npz")
  adm_npz.save_reference_batch(path, reference_images, stats=stats)

  config.eval.reference_npz = path
  results = evaluate.evaluate(config, workdir)
  assert results["fid_reference"] == path
  assert results["fid_reference_kind"] == "adm_reference_batch"
  assert results["recon_fid_reference"] != path  # reconstruction FID: the training split
  with np.load(tmp_path / "run" / "eval" / f"samples_cfg{results['best_cfg']:g}.npz") as data:
    samples = features_of(data["arr_0"])
  for key, suffix in (("sampling_fid", ""), ("sampling_sfid", "_s")):
    name = "pool" if not suffix else "spatial"
    mu, sigma = fid.FeatureStats.empty(samples[name].shape[1]).update(
        samples[name]).mean_and_covariance()
    expected = fid.frechet_distance(mu, sigma, stats["mu" + suffix], stats["sigma" + suffix])
    np.testing.assert_allclose(results[key], expected, rtol=1e-6, err_msg=key)
  precision, recall = adm_precision_recall(reference["pool"], samples["pool"])
  assert results["precision_recall_mode"] == "adm"
  assert (results["precision"], results["recall"]) == (float(precision), float(recall))
