"""Tests of the ColTran FID-5k protocol helpers against TF / TFDS themselves."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

from fsq_repro.data import coltran_crop  # pylint: disable=g-import-not-at-top
from fsq_repro.eval import coltran  # pylint: disable=g-import-not-at-top

# Unequal shards, more of them than the default cycle (16), some longer than a
# block (16), some ending exactly on a block boundary (16, 32, 48, 64).
SHARD_LENGTHS = [40, 17, 32, 5, 48, 33, 16, 1, 20, 31, 64, 9, 16, 47, 2, 30,
                 18, 25]


class ColtranTestIds(tfds.core.GeneratorBasedBuilder):
  """A split of integer ids, to see the order in which TFDS reads it."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({"id": np.int64}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"validation": self._generate_examples()}

  def _generate_examples(self):
    for i in range(sum(SHARD_LENGTHS)):
      yield i, {"id": i}


def _tf_interleave(lengths, cycle_length, block_length):
  """Shards of consecutive ids, interleaved as TFDS's reader.py does."""
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
  shards = tf.data.Dataset.from_tensor_slices(
      (starts, np.asarray(lengths, np.int64)))
  ds = shards.interleave(
      lambda start, n: tf.data.Dataset.range(start, start + n),
      cycle_length=cycle_length, block_length=block_length,
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return [int(x) for x in ds.as_numpy_iterator()]


def test_read_order_hand_worked():
  # Shards A = 0..4, B = 5..7, C = 8..11; two slots, blocks of two:
  # A0 A1 | B5 B6 | A2 A3 | B7, B ends: slot 1 freed | A4, A ends: slot 0 freed
  # | slot 1 opens C: C8 C9 | slot 0: no shard left | C10 C11.
  np.testing.assert_array_equal(
      coltran.tfds_read_order([5, 3, 4], cycle_length=2, block_length=2),
      [0, 1, 5, 6, 2, 3, 7, 4, 8, 9, 10, 11])
  # A = 0..1 ends on a block boundary, so tf.data finds it empty only on its
  # next turn, which yields nothing; C opens in slot 0 only after B has ended:
  # A0 A1 | B2 B3 | (A empty) | B4, B ends | C5 C6 | (no shard) | C7 C8.
  np.testing.assert_array_equal(
      coltran.tfds_read_order([2, 3, 4], cycle_length=2, block_length=2),
      np.arange(9))
  # Defaults (16, 16): shards of at most 16 are read whole, one after another;
  # 20 splits into 16 + 4 around the second shard's block.
  np.testing.assert_array_equal(coltran.tfds_read_order([5, 3]), np.arange(8))
  np.testing.assert_array_equal(
      coltran.tfds_read_order([20, 3]),
      list(range(16)) + [20, 21, 22] + [16, 17, 18, 19])


def test_read_order_skips_empty_shards_like_tfds():
  # TFDS drops empty shards from its file instructions (shard_utils.py).
  np.testing.assert_array_equal(
      coltran.tfds_read_order([4, 1, 0, 3, 2], cycle_length=2, block_length=2),
      coltran.tfds_read_order([4, 1, 3, 2], cycle_length=2, block_length=2))
  assert coltran.tfds_read_order([0, 0]).size == 0
  with pytest.raises(ValueError, match="cycle_length"):
    coltran.tfds_read_order([3], cycle_length=0)


@pytest.mark.parametrize("cycle_length,block_length", [(2, 2), (3, 1), (4, 5),
                                                       (16, 16), (1, 16)])
def test_read_order_matches_tf_data_interleave(cycle_length, block_length):
  lengths = np.random.default_rng(cycle_length * 10 + block_length).integers(
      1, 40, size=21)
  assert list(coltran.tfds_read_order(lengths, cycle_length, block_length)) == (
      _tf_interleave(lengths, cycle_length, block_length))


def test_read_order_matches_the_tfds_reader(tmp_path, monkeypatch):
  # Forces SHARD_LENGTHS on the writer, which would otherwise write one shard.
  boundaries = list(np.cumsum(SHARD_LENGTHS))
  monkeypatch.setattr(
      "tensorflow_datasets.core.utils.shard_utils.get_shard_boundaries",
      lambda num_examples, num_shards: boundaries)
  builder = ColtranTestIds(data_dir=str(tmp_path), file_format="tfrecord")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      num_shards=len(SHARD_LENGTHS)))
  split = builder.info.splits["validation"]
  assert list(split.shard_lengths) == SHARD_LENGTHS

  def ids(read_config):
    return np.array([int(x["id"]) for x in builder.as_dataset(
        "validation", shuffle_files=False, read_config=read_config)])

  # One shard at a time: the ids by split-global position (shards end to end).
  by_position = ids(tfds.ReadConfig(interleave_cycle_length=1))
  assert sorted(by_position) == list(range(sum(SHARD_LENGTHS)))
  np.testing.assert_array_equal(
      ids(tfds.ReadConfig()),
      by_position[coltran.tfds_read_order(split.shard_lengths)])
  np.testing.assert_array_equal(
      ids(tfds.ReadConfig(interleave_cycle_length=3,
                          interleave_block_length=4)),
      by_position[coltran.tfds_read_order(split.shard_lengths, 3, 4)])


def test_coltran_positions():
  order = coltran.tfds_read_order(SHARD_LENGTHS)
  evaluated, reference = coltran.coltran_positions(
      SHARD_LENGTHS, num_images=100, reference_offset=200)
  np.testing.assert_array_equal(evaluated, order[:100])
  np.testing.assert_array_equal(reference, order[200:300])
  assert not set(evaluated) & set(reference)
  size = sum(SHARD_LENGTHS)
  with pytest.raises(ValueError, match=rf"eval.fid_images=100 .* has {size}$"):
    coltran.coltran_positions(SHARD_LENGTHS, num_images=100,
                              reference_offset=400)
  with pytest.raises(ValueError, match="eval.fid_images=300 overlaps"):
    coltran.coltran_positions(SHARD_LENGTHS, num_images=300,
                              reference_offset=200)


@pytest.mark.parametrize("shape", [(7, 4), (4, 7), (6, 3), (3, 6), (5, 5),
                                   (375, 500)])
def test_center_square_matches_tf(shape):
  image = np.random.default_rng(0).integers(0, 256, shape + (3,), np.uint8)
  side = min(shape)
  np.testing.assert_array_equal(
      coltran_crop.center_square(image),
      tf.image.resize_with_crop_or_pad(image, side, side).numpy())


@pytest.mark.parametrize("shape,size", [
    ((37, 53), 16), ((375, 375), 256), ((375, 375), 512), ((333, 333), 512),
    ((441, 441), 256), ((5, 5), 8), ((7, 3), (4, 5)), ((512, 512), 256),
    ((3, 11), (9, 2))])
def test_area_resize_matches_tf(shape, size):
  # Bit for bit: the same float32 weights and order of summation as TF.
  image = np.random.default_rng(1).integers(0, 256, shape + (3,), np.uint8)
  target = (size, size) if np.isscalar(size) else size
  expected = tf.image.resize(image, target, method="area", antialias=True)
  got = coltran_crop.area_resize(image, size)
  assert got.dtype == np.float32 and got.shape == target + (3,)
  np.testing.assert_array_equal(got, expected.numpy())


def _tf_preprocess(image, resolution):
  """big_vision's `_preprocess`, with TF."""
  side = min(image.shape[:2])
  image = tf.image.resize_with_crop_or_pad(image, side, side)
  image = tf.image.resize(image, method="area", antialias=True,
                          size=(resolution, resolution))
  return tf.cast(tf.round(image), tf.int32).numpy()


@pytest.mark.parametrize("shape,resolution", [
    ((500, 375), 512), ((375, 500), 256), ((333, 500), 512), ((500, 441), 256),
    ((37, 53), 16)])
def test_coltran_image_matches_tf_preprocess(shape, resolution):
  # Smooth integer content: many means land on or near .5, where any float
  # error would flip the rounding.
  rng = np.random.default_rng(2)
  image = np.clip(np.cumsum(rng.integers(-3, 4, shape + (3,)), axis=1) + 128,
                  0, 255).astype(np.uint8)
  got = coltran_crop.coltran_image(image, resolution)
  assert got.dtype == np.uint8 and got.shape == (resolution, resolution, 3)
  np.testing.assert_array_equal(got, _tf_preprocess(image, resolution))


def test_coltran_image_refuses_encoded_bytes():
  with pytest.raises(TypeError, match="decode_image"):
    coltran_crop.coltran_image(b"\xff\xd8", 16)


def test_to_fid_size_matches_tf():
  colorized = np.random.default_rng(3).uniform(
      -1, 1, (2, 512, 512, 3)).astype(np.float32)
  y = tf.image.resize(colorized, (256, 256), "area")
  expected = np.clip(np.round((y + 1.) * 128.), 0, 255)
  got = coltran.to_fid_size(colorized)
  assert got.dtype == np.uint8 and got.shape == (2, 256, 256, 3)
  np.testing.assert_array_equal(got, expected)


def test_scaled_pipeline_images_give_coltrans_normalised_gray_input():
  from fsq_repro.tasks import colorization
  image = np.random.default_rng(4).integers(0, 256, (2, 9, 7, 3), np.uint8)
  normalized = image / 128.0 - 1.0  # ColTran's _normalize
  example = colorization.prepare({"image": (image / 255.0 * coltran.INPUT_SCALE)
                                  .astype(np.float32)})
  np.testing.assert_allclose(example["labels"]["color"], normalized, atol=1e-6)
  expected = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(normalized))
  np.testing.assert_allclose(example["context"], expected.numpy(), rtol=0, atol=1e-6)
