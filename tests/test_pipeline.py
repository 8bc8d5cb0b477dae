"""Stage I -> Stage II -> samples -> results.json on tiny models, for both quantizers."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from fsq_repro import api
from fsq_repro.data import pipeline
from fsq_repro.eval import evaluate, generate
from fsq_repro.models import factory
from fsq_repro.train import stage1, stage2
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

  # Usage equals a brute-force count of the codes of the evaluated images.
  tokenizer = api.Tokenizer.from_workdir(workdir)  # the config it saved
  assert results["num_eval_images"] == config.eval.num_images
  brute = set()
  batches = pipeline.create_split(config.dataset.name, config.dataset.eval_split,
                                  batch_size=32, image_size=16, train=False)
  for _, batch in zip(range(config.eval.num_images // 32), batches):
    indices = tokenizer.encode(batch["image"])
    brute |= set(np.asarray(indices)[batch["mask"]].ravel().tolist())
  assert results["codes_used"] == len(brute)
  assert results["usage"] == len(brute) / factory.codebook_size(config.quantizer)
