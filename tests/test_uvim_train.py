"""UViM's task, config checks, both trainers and the evaluation job, on tiny models.

Stage I, Stage II and evaluation run a few steps on the embedded crops and on imagenet2012
mocked by tfds.testing.mock_data (tfds_mock.py), the real TFDS loading path.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import uvim_colorization, uvim_depth, uvim_panoptic
from fsq_repro import api, tasks, uvim_config
from fsq_repro import workdir as workdir_lib
from fsq_repro.eval import features, panoptic, uvim_evaluate
from fsq_repro.tasks import colorization
from fsq_repro.train import uvim_stage1, uvim_stage2
from scripts import sweep, uvim_table
import tfds_mock
import tiny_configs


def test_colorization_labels_are_rgb_with_tf_grayscale_context_and_psnr_in_db():
  import tensorflow as tf  # the reference for rgb_to_grayscale
  rgb = np.random.default_rng(0).uniform(0, 1, (2, 4, 4, 3)).astype(np.float32)
  example = colorization.prepare({"image": jnp.asarray(rgb)})
  np.testing.assert_allclose(example["labels"]["color"], rgb * 2 - 1, atol=1e-6)
  expected = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(rgb * 2 - 1)).numpy()
  np.testing.assert_allclose(example["context"], expected, atol=1e-6)
  np.testing.assert_array_equal(example["image"], example["context"])
  # A picture off by 0.1 everywhere (in [0, 1]): MSE 0.01, PSNR 20 dB.
  truth = {"color": jnp.full((1, 4, 4, 3), -0.5)}
  off = {"color": jnp.full((1, 4, 4, 3), -0.3)}
  np.testing.assert_allclose(colorization.scores(off, {"labels": truth})["psnr"], [20.0],
                             rtol=1e-5)
  clipped = colorization.predict({"color": jnp.array([-3.0, 0.5, 2.0])})["color"]
  np.testing.assert_array_equal(clipped, [-1.0, 0.5, 1.0])
  assert tasks.get("colorization") is colorization.TASK
  with pytest.raises(ValueError, match="task.name='depthh' is unknown"):
    tasks.get("depthh")


def test_config_arguments_and_the_zero_code_check():
  c = uvim_colorization.get_config("quantizer=vq,splitting=0,context=0,seed=2")
  assert (c.quantizer.kind, c.quantizer.codebook_size, c.quantizer.splitting) == \
      ("uvim_vq", 4096, False)
  assert not c.model.encoder_context and not c.model.decoder_context and c.stage2.seed == 2
  fsq = uvim_colorization.get_config("quantizer=fsq")
  assert tuple(fsq.quantizer.levels) == (7, 5, 5, 5, 5) and fsq.model.dropped_code == "flag"
  uvim_config.validate(fsq, num_devices=1, stage="stage1")
  fsq.model.dropped_code = "zero"
  with pytest.raises(ValueError, match=r"model.dropped_code='zero' with quantizer.levels="
                     r"\(7, 5, 5, 5, 5\): all levels are odd.*use model.dropped_code='flag'"):
    uvim_config.validate(fsq, num_devices=1, stage="stage1")
  fsq.quantizer.levels = (8, 5, 5, 5)  # an even level: no code is the zero vector
  uvim_config.validate(fsq, num_devices=1, stage="stage1")
  c.model.dropped_code = "zero"  # UViM's VQ: unit-norm codewords are never zero
  uvim_config.validate(c, num_devices=1, stage="stage1")
  c.model.code_len = 200
  with pytest.raises(ValueError, match="model.code_len=200 .* a square"):
    uvim_config.validate(c, num_devices=1, stage="stage1")
  with pytest.raises(ValueError, match="stage1.batch_size=1024 is not divisible by the 3"):
    uvim_config.validate(fsq, num_devices=3, stage="stage1")
  with pytest.raises(ValueError, match="quantizer='lfq' is unknown"):
    uvim_colorization.get_config("quantizer=lfq")


def test_sweep_has_three_stage2_seeds_per_row_sharing_each_rows_stage1(tmp_path):
  runs = sweep.load_sweep("configs/uvim_colorization.py")
  assert [r["name"] for r in runs] == [f"{q}_seed{s}" for q in ("vq", "fsq") for s in (0, 1, 2)]
  steps = sweep.sweep_steps(runs, "configs/uvim_colorization.py", str(tmp_path), [])
  by_run = {}
  for step in steps:
    by_run.setdefault(step.run, []).append(step)
  assert [s.stage for s in by_run["vq_seed0"]] == ["stage1", "stage2", "eval"]
  assert [s.stage for s in by_run["vq_seed2"]] == ["stage2", "eval"]
  assert f"--config.stage1_workdir={tmp_path / 'vq_seed0'}" in by_run["vq_seed2"][0].argv
  assert {s.group for s in by_run["vq_seed2"]} == {"vq_seed0"}
  # Side by side, a row's seeds run after its Stage I on the same worker.
  order, runners = [], [lambda argv, i=i: order.append((i, argv)) or 0 for i in range(2)]
  sweep.run_side_by_side(steps, runners, log=lambda message: None)
  worker = {}
  for index, argv in order:
    name = os.path.basename(next(a for a in argv if a.startswith("--workdir="))[10:])
    worker.setdefault(name.split("_")[0], set()).add(index)
  assert all(len(workers) == 1 for workers in worker.values())
  assert len(sweep.load_sweep("configs/uvim_demo.py")) == 4
  depth = sweep.load_sweep("configs/uvim_depth.py")  # Table 2's three depth rows, 3 seeds each
  assert [r["name"] for r in depth if "stage1_from" not in r] == \
      ["vq_seed0", "fsq_seed0", "vq_no_splitting_seed0"] and len(depth) == 9


def test_encoder_learns_at_a_tenth_of_the_rate_and_decay_is_not_scaled():
  params = {"encoder": {"kernel": jnp.ones((2, 2))}, "decoder": {"kernel": jnp.ones((2, 2))}}
  grads = jax.tree.map(jnp.ones_like, params)

  def update(multiplier, weight_decay):
    optimizer = uvim_stage1.make_optimizer(
        _stage(weight_decay), multiplier and uvim_stage2.encoder_lr_multiplier(multiplier))
    return optimizer.update(grads, optimizer.init(params), params)[0]

  plain, scaled = update(None, 0.0), update(0.1, 0.0)
  np.testing.assert_allclose(scaled["encoder"]["kernel"], 0.1 * plain["encoder"]["kernel"],
                             rtol=1e-6)
  np.testing.assert_array_equal(scaled["decoder"]["kernel"], plain["decoder"]["kernel"])
  decayed_plain, decayed = update(None, 0.5), update(0.1, 0.5)
  decay = decayed_plain["encoder"]["kernel"] - plain["encoder"]["kernel"]  # -schedule * wd
  np.testing.assert_allclose(decayed["encoder"]["kernel"],
                             0.1 * plain["encoder"]["kernel"] + decay, rtol=1e-6)


def _stage(weight_decay):
  import ml_collections
  return ml_collections.ConfigDict(dict(learning_rate=0.01, weight_decay=weight_decay,
                                        num_train_steps=10, warmup_steps=0, grad_clip_norm=0,
                                        beta2_cap=0.95))


def _train_and_evaluate(config, workdir):
  state1 = uvim_stage1.train_and_evaluate(config, workdir)
  state2 = uvim_stage2.train_and_evaluate(config, workdir)
  results = uvim_evaluate.evaluate(config, workdir)
  with open(workdir_lib.results_path(workdir)) as f:
    assert json.load(f) == results
  return state1, state2, results


@pytest.mark.parametrize("arg", ["quantizer=fsq", "quantizer=vq"])
def test_both_stages_and_evaluation_run_on_the_embedded_crops(tmp_path, monkeypatch, arg):
  config = tiny_configs.tiny_uvim_config(arg)
  # A stand-in for the offline FID network (which make demo-uvim and the slow CLI tests use):
  # training it would double this test's time.
  monkeypatch.setattr(features, "get_feature_network", lambda *a, **k: _tiny_network())
  state1, state2, results = _train_and_evaluate(config, str(tmp_path))
  assert int(state1.step) == 3 and int(state2.step) == 3
  if config.quantizer.kind == "uvim_vq":  # the EMA dictionary moved in training
    assert float(jnp.sum(state1.vq_state["vq_state"]["quantizer"]["counts"])) != 64.0
  # 1024 validation crops less the 128 of the gray photo.
  assert results["num_eval_images"] == 896 and results["task"] == "colorization"
  for key in ("psnr", "oracle_psnr", "baseline_psnr", "fid", "oracle_fid", "baseline_fid"):
    assert np.isfinite(results[key]), key
  assert 0 < results["usage"] <= 1 and results["codes_used"] >= 1
  assert results["fid_features"] == "test_projection" and results["fid_protocol"] == "split"
  with np.load(tmp_path / "eval" / "figure.npz") as figure:
    assert set(figure.files) == {"input", "truth", "model", "oracle", "baseline"}
    assert figure["model"].shape == (3, 16, 16, 3)
  # The predictor restores what was trained: its codes decode to the saved predictions' shape.
  predictor = api.TaskPredictor.from_workdir(str(tmp_path))
  image = jnp.zeros((2, 16, 16, 3))
  codes = predictor.sample_codes(image, jax.random.key(0), temperature=1e-7)
  assert codes.shape == (2, 4) and int(codes.max()) < predictor.coder.codebook_size


def _tiny_network():
  """A fixed random projection of 4x4-pooled pictures, standing in for Inception."""
  projection = np.random.default_rng(0).normal(size=(48, 16)).astype(np.float32)

  def network(images):
    b, h, w, _ = images.shape
    pooled = images.reshape(b, 4, h // 4, 4, w // 4, 3).mean((2, 4)).reshape(b, 48)
    return {"pool": pooled @ projection, "spatial": pooled, "logits": pooled[:, :10]}
  return features.FeatureNetwork("test_projection", "a fixed random projection", network)


def test_stages_run_on_mock_imagenet_with_coltrans_read_order(tmp_path, monkeypatch):
  config = tiny_configs.tiny_uvim_config("quantizer=vq", base=uvim_colorization.get_config)
  config.dataset.train_split = "train[8:]"
  e = config.eval
  e.num_images, e.reference_offset, e.fid_size, e.batch_size = 20, 20, 8, 8
  monkeypatch.setattr(features, "get_feature_network", lambda *a, **k: _tiny_network())
  read, eval_batches = [], uvim_evaluate._eval_batches

  def recording(config, **kwargs):
    read.append((kwargs["image_size"], kwargs["crop"], list(kwargs["record_indices"])))
    return eval_batches(config, **kwargs)

  monkeypatch.setattr(uvim_evaluate, "_eval_batches", recording)
  with tfds_mock.mock_dataset("imagenet2012", {"train": 48, "validation": 40}, shards=2):
    _, _, results = _train_and_evaluate(config, str(tmp_path))
  # Two shards of 20: TFDS reads blocks of 16 from each in turn (0..15, 20..35, 16..19,
  # 36..39), so the evaluated images are positions 0..15 and 20..23 (not validation[:20])
  # and the reference the next 20 read.
  assert read == [(16, "coltran", [*range(16), *range(20, 24)]),
                  (8, "coltran", [*range(24, 36), *range(16, 20), *range(36, 40)])]
  assert results["num_eval_images"] == 20 and results["fid_protocol"] == "coltran"
  assert results["fid_reference"] == "validation read-order images 20..39 at 8 px"
  assert np.isfinite(results["fid"]) and results["fid_features"] == "test_projection"


@pytest.mark.slow  # 480 x 640 images and 256-channel labels: over a minute
def test_depth_stages_run_on_mock_nyu_with_the_eval_crop_and_per_image_rmse(tmp_path,
                                                                            monkeypatch):
  config = tiny_configs.tiny_uvim_config("quantizer=fsq", base=uvim_depth.get_config)
  config.eval.batch_size = 4
  batches, eval_batches = [], uvim_evaluate._eval_batches

  def recording(config, **kwargs):
    for batch in eval_batches(config, **kwargs):
      batches.append(jax.tree.map(np.asarray, batch))
      yield batch

  monkeypatch.setattr(uvim_evaluate, "_eval_batches", recording)
  workdir = tmp_path / "sweep" / "fsq_seed0"
  with tfds_mock.mock_dataset("nyu_depth_v2", {"train": 16, "validation": 6}, shards=2):
    _, _, results = _train_and_evaluate(config, str(workdir))
  assert results["task"] == "depth" and results["num_eval_images"] == 6
  assert "fid" not in results and results["baseline"] is None
  # The evaluation crop's ground truth, unresized; the model's input at 16 px.
  assert batches[0]["depth_full"].shape == (4, 426, 560)
  assert batches[0]["depth"].shape == (4, 16, 16) and batches[0]["image"].shape == (4, 16, 16, 3)
  for key in ("rmse", "abs_rel", "log10", "delta1", "oracle_rmse"):
    assert np.isfinite(results[key]), key
  # Figure 6 (input, ground truth, the row's prediction) from the saved predictions.
  with np.load(workdir / "eval" / "figure.npz") as figure:
    assert set(figure) == {"input", "truth", "model", "oracle"}
    assert figure["model"].shape == (3, 16, 16, 3)
  assert uvim_table.main([f"--sweep={tmp_path / 'sweep'}", f"--out={tmp_path / 'out'}"]) == 0
  assert (tmp_path / "out" / "figure6.png").stat().st_size > 0
  assert "not comparable: the paper: nyu_depth_v2, 654 images at 512 px; this: nyu_depth_v2, " \
      "6 at 16 px" in (tmp_path / "out" / "table2.md").read_text()


@pytest.mark.slow  # a synthetic-label smoke run of both stages, PQ and the table: about a minute
def test_panoptic_stages_pq_and_table2_run_on_mock_coco(tmp_path):
  root = tmp_path / "sweep"
  config = tiny_configs.tiny_uvim_config("quantizer=vq,context=0", base=uvim_panoptic.get_config)
  config.dataset.train_split = "train[4:]"
  config.eval.batch_size = 4
  with tfds_mock.mock_dataset("coco/2017_panoptic", {"train": 20, "validation": 6}, shards=2):
    _, _, results = _train_and_evaluate(config, str(root / "vq_no_context_seed0"))
  assert results["task"] == "panoptic" and results["num_eval_images"] == 6
  assert not results["context"] and "fid" not in results
  for key in ("pq", "sq", "rq", "pq_things", "pq_stuff", "oracle_pq", "pixel_accuracy",
              "oracle_pixel_accuracy"):
    assert 0 <= results[key] <= 1, key
  # The written COCO panoptic files score as the evaluation did (what pq_compute reads).
  folder = root / "vq_no_context_seed0" / "eval" / "panoptic"
  from_files = panoptic.pq_from_files(str(folder / "ground_truth.json"),
                                      str(folder / "ground_truth"),
                                      str(folder / "predictions.json"),
                                      str(folder / "predictions"))
  assert from_files["All"]["pq"] == pytest.approx(results["pq"])
  assert len(list((folder / "predictions").glob("*.png"))) == 6
  # Table 2 from these results: the smoke run's numbers are marked as not the paper's.
  assert uvim_table.main([f"--sweep={root}", f"--out={tmp_path / 'out'}"]) == 0
  table = (tmp_path / "out" / "table2.md").read_text()
  assert "| VQ without context | 1 |" in table
  assert ("PQ 39.0, usage 99% (not comparable: the paper: coco/2017_panoptic, 5000 images at "
          "512 px; this: coco/2017_panoptic, 6 at 16 px)") in table
