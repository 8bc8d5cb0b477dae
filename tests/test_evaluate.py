"""Evaluation's parts that need no trained run: ADM's reference-image crop, streamed ADM
.npz files, exact eval-split rows, and the checks `--mode=eval` makes before compiling."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from fsq_repro import config_lib, parallel
from fsq_repro.data import adm_crop, pipeline
from fsq_repro.eval import adm_npz, evaluate
from fsq_repro.models import inception
from configs import demo


# --- ADM's center_crop_arr ---------------------------------------------------------------------


def adm_center_crop_arr(pil_image, image_size):
  """guided-diffusion's guided_diffusion/image_datasets.py:center_crop_arr, transcribed."""
  while min(*pil_image.size) >= 2 * image_size:
    pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
  scale = image_size / min(*pil_image.size)
  pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size),
                               resample=Image.BICUBIC)
  arr = np.array(pil_image)
  crop_y = (arr.shape[0] - image_size) // 2
  crop_x = (arr.shape[1] - image_size) // 2
  return arr[crop_y:crop_y + image_size, crop_x:crop_x + image_size]


def photo_like(height, width, seed):
  """Smooth gradients plus noise: what bicubic and box filters treat differently."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width]
  base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (height + width)], -1)
  return np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("height,width,size", [
    (375, 500, 32), (500, 333, 64), (64, 64, 32), (47, 33, 32), (1000, 520, 128), (31, 90, 32)])
def test_center_crop_arr_is_pixel_exact_to_adm(height, width, size):
  image = Image.fromarray(photo_like(height, width, seed=height * width))
  ours = adm_crop.center_crop_arr(image, size)
  assert ours.shape == (size, size, 3) and ours.dtype == np.uint8
  np.testing.assert_array_equal(ours, adm_center_crop_arr(image, size))


def test_center_crop_arr_halves_with_box_filtering_first():
  """8x8 of constant 2x2 blocks to 4 px: one BOX halving (8 >= 2 * 4) gives the block values,
  and the bicubic resize to 4x4 is then the identity."""
  blocks = np.arange(16, dtype=np.uint8).reshape(4, 4) * 15
  image = np.repeat(np.repeat(blocks, 2, 0), 2, 1)
  rgb = np.stack([image, image // 2, 255 - image], -1)
  out = adm_crop.center_crop_arr(Image.fromarray(rgb), 4)
  np.testing.assert_array_equal(out[..., 0], blocks)
  np.testing.assert_array_equal(out[..., 2], 255 - blocks)


def test_adm_crop_of_the_pipeline_decodes_with_pil_as_adm_does():
  """crop="adm" batches equal center_crop_arr of the PIL-decoded records, in split order,
  and differ from the default crop (which is why the reference uses this one)."""
  split = "validation[0:6]"
  adm = next(pipeline.create_split(pipeline.EMBEDDED_DATASET, split, batch_size=6,
                                   image_size=24, train=False, crop="adm"))
  center = next(pipeline.create_split(pipeline.EMBEDDED_DATASET, split, batch_size=6,
                                      image_size=24, train=False))
  records = pipeline.records(pipeline.EMBEDDED_DATASET, split)
  expected = [adm_center_crop_arr(Image.open(io.BytesIO(r["image"])).convert("RGB"), 24)
              for r in records]
  np.testing.assert_array_equal(np.round(adm["image"] * 255).astype(np.uint8), expected)
  np.testing.assert_array_equal(adm["index"], np.arange(6))
  assert np.abs(adm["image"] - center["image"]).max() > 1 / 255


# --- exact rows ---------------------------------------------------------------------------------


def test_first_examples_takes_exactly_n_of_any_split():
  name = pipeline.EMBEDDED_DATASET
  assert pipeline.first_examples(name, "validation", 100) == "validation[0:100]"
  assert pipeline.first_examples(name, "validation", 10**6) == "validation[0:1024]"
  assert pipeline.first_examples(name, "validation[10:20]+train[:5]", 15) == \
      "validation[10:20]+train[0:5]"
  assert pipeline.first_examples(name, "train[4000:]", 50) == "train[4000:4050]"


def test_eval_split_batches_hold_exactly_the_first_n_images_once():
  config = demo.get_config()
  config.eval.batch_size = 32
  batches = list(evaluate._split_batches(config, "validation", 100, parallel.make_mesh()))
  masks = np.concatenate([np.asarray(b["mask"]) for b in batches])
  indices = np.concatenate([np.asarray(b["index"]) for b in batches])
  assert len(batches) == 4 and masks.sum() == 100  # 4 x 32 rows, 28 of them padding
  np.testing.assert_array_equal(indices[masks], np.arange(100))
  assert (indices[~masks] == -1).all()


# --- streamed ADM .npz ----------------------------------------------------------------------------


def test_streamed_batch_reads_as_adm_reads_it(tmp_path):
  path = str(tmp_path / "batch.npz")
  images = np.random.default_rng(0).integers(0, 256, (10, 4, 5, 3), dtype=np.uint8)
  stats = {"mu": np.ones(2), "sigma": np.eye(2), "mu_s": np.zeros(3), "sigma_s": 2 * np.eye(3)}
  with adm_npz.writing(path, images.shape) as (writer, arrays):
    for start in (0, 3, 7):
      writer.add(images[start:start + {0: 3, 3: 4, 7: 3}[start]])
    arrays.update(arr_1=np.arange(10) % 3, **stats)
  with np.load(path) as data:  # ADM's evaluator: np.load, then arr_0 and the statistics
    np.testing.assert_array_equal(data["arr_0"], images)
    np.testing.assert_array_equal(data["arr_1"], np.arange(10) % 3)
    for key, value in stats.items():
      np.testing.assert_array_equal(data[key], value)
  read = list(adm_npz.iter_images(path, 4))
  assert [len(r) for r in read] == [4, 4, 2]
  np.testing.assert_array_equal(np.concatenate(read), images)
  assert adm_npz.image_shape(path) == (10, 4, 5, 3)
  assert adm_npz.stats_keys(path) == list(adm_npz.STATS_KEYS)


def test_an_unfinished_stream_leaves_no_file(tmp_path):
  path = str(tmp_path / "batch.npz")
  images = np.zeros((4, 2, 2, 3), np.uint8)
  with pytest.raises(ValueError, match="2 rows were added to arr_0"):
    with adm_npz.writing(path, images.shape) as (writer, _):
      writer.add(images[:2])
  with pytest.raises(ValueError, match="do not continue arr_0"):
    with adm_npz.writing(path, images.shape) as (writer, _):
      writer.add(np.zeros((5, 2, 2, 3), np.uint8))
  assert os.listdir(tmp_path) == []


# --- checks before compiling ----------------------------------------------------------------------


def eval_config(**fields):
  config = demo.get_config()
  for name, value in fields.items():
    config.eval[name] = value
  return config


def reference_batch(path, size=32, stats=True):
  images = np.zeros((3, size, size, 3), np.uint8)
  adm_npz.save_reference_batch(str(path), images, stats={
      "mu": np.zeros(4), "sigma": np.eye(4), "mu_s": np.zeros(2),
      "sigma_s": np.eye(2)} if stats else None)
  return str(path)


@pytest.mark.parametrize("make_fields,message", [
    (lambda tmp: {"reference_npz": str(tmp / "missing.npz")},
     "missing.npz' is not a file; download ADM's reference batch"),
    (lambda tmp: {"reference_npz": reference_batch(tmp / "images_only.npz", stats=False)},
     "lacks mu, mu_s, sigma, sigma_s: a reference batch holds ADM's statistics"),
    (lambda tmp: {"reference_npz": reference_batch(tmp / "r64.npz", size=64)},
     "holds 64x64 images but dataset.image_size=32; use the batch of 32 px"),
    (lambda tmp: {"keep_samples": "some"}, "eval.keep_samples='some' is unknown"),
], ids=["missing_reference", "stats_less_reference", "reference_size", "keep_samples"])
def test_bad_eval_config_fails_in_one_line(tmp_path, make_fields, message):
  with pytest.raises(ValueError, match=message) as error:
    config_lib.validate(eval_config(**make_fields(tmp_path)), num_devices=1, stage="eval")
  assert "\n" not in str(error.value)


def test_imagenet_eval_without_inception_weights_stops_before_compiling(monkeypatch):
  monkeypatch.delenv(inception.WEIGHTS_ENV_VAR, raising=False)
  config = eval_config()
  config.dataset.name = "imagenet2012"
  with pytest.raises(ValueError, match="needs the FID Inception weights"):
    config_lib.validate(config, num_devices=1, stage="eval")
  config.eval.feature_network = "offline"  # asked for by name: allowed, and named in results
  config_lib.validate(config, num_devices=1, stage="eval")


def test_a_good_reference_batch_passes(tmp_path):
  config = eval_config(reference_npz=reference_batch(tmp_path / "ok.npz"))
  config_lib.validate(config, num_devices=1, stage="eval")
