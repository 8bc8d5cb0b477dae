"""Tests of the embedded dataset and the deterministic, resumable pipeline."""

import io
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top
import PIL.Image  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

from fsq_repro import files  # pylint: disable=g-import-not-at-top
from fsq_repro.data import embedded  # pylint: disable=g-import-not-at-top
from fsq_repro.data import images  # pylint: disable=g-import-not-at-top
from fsq_repro.data import pipeline  # pylint: disable=g-import-not-at-top

NUM_CLASSES = len(embedded.CLASS_NAMES)


class FsqTestRectangles(tfds.core.GeneratorBasedBuilder):
  """A tiny non-square TFDS dataset: pixel value = column, label = index % 3."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description="Test images whose pixels store the column.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(20, 36, 3)),
            "label": tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    columns = np.broadcast_to(np.arange(36, dtype=np.uint8)[None, :, None],
                              (20, 36, 3))
    for i in range(10):
      yield i, {"image": columns + np.uint8(100 + i), "label": i % 3}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  assert pipeline.num_examples(pipeline.EMBEDDED_DATASET, "train",
                               data_dir=path) > 0  # Prepares the dataset.
  return path


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


def _embedded_split(data_dir, split, **kwargs):
  args = dict(batch_size=16, image_size=32, train=True, seed=3,
              data_dir=data_dir, process_index=0, process_count=1)
  args.update(kwargs)
  return pipeline.create_split(pipeline.EMBEDDED_DATASET, split, **args)


def test_builder_prepares_versioned_splits_with_description(data_dir):
  builder = tfds.builder(pipeline.EMBEDDED_DATASET, data_dir=data_dir)
  assert builder.is_prepared()
  assert str(builder.info.version) == "1.0.0"
  assert "scikit-image" in builder.info.description
  assert pipeline.num_examples(pipeline.EMBEDDED_DATASET, "train",
                               data_dir=data_dir) == 512 * NUM_CLASSES
  assert pipeline.num_examples(pipeline.EMBEDDED_DATASET, "validation",
                               data_dir=data_dir) == 128 * NUM_CLASSES
  assert pipeline.num_classes(pipeline.EMBEDDED_DATASET,
                              data_dir=data_dir) == NUM_CLASSES


def test_batches_have_shapes_dtypes_and_range(data_dir):
  batch = next(_embedded_split(data_dir, "train"))
  assert batch["image"].shape == (16, 32, 32, 3)
  assert batch["image"].dtype == np.float32
  assert batch["label"].shape == (16,) and batch["label"].dtype == np.int32
  assert batch["mask"].all()
  assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  assert batch["image"].std() > 0.05  # Real photo content, not a constant.
  assert ((0 <= batch["label"]) & (batch["label"] < NUM_CLASSES)).all()


def test_validation_pass_holds_each_example_once_and_pads(data_dir):
  batches = list(_embedded_split(data_dir, "validation", batch_size=100,
                                 train=False))
  assert len(batches) == 11  # ceil(1024 / 100), the last one padded.
  masks = np.concatenate([b["mask"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])[masks]
  images = np.concatenate([b["image"] for b in batches])
  assert masks.sum() == 1024 and not masks[1024:].any()
  np.testing.assert_array_equal(np.bincount(labels), [128] * NUM_CLASSES)
  assert not images[~masks].any()


def test_train_and_validation_crops_come_from_disjoint_columns(data_dir):
  builder = tfds.builder(pipeline.EMBEDDED_DATASET, data_dir=data_dir)
  splits = {}
  for split in ("train", "validation"):
    source = builder.as_data_source(split)
    examples = [source[i] for i in range(len(source))]
    splits[split] = {key: np.stack([x[key] for x in examples]) for key in examples[0]}
  for split in splits.values():  # Each image is its recorded source box.
    for image, label, (top, left, bottom, right) in zip(
        split["image"], split["label"], split["source_box"]):
      photo = embedded.load_photo(embedded.CLASS_NAMES[label])
      np.testing.assert_array_equal(image, photo[top:bottom, left:right])
  for label in range(NUM_CLASSES):
    train, val = (s["source_box"][s["label"] == label] for s in splits.values())
    assert len(train) == 512 and len(val) == 128
    assert train[:, 3].max() <= val[:, 1].min()  # Train right <= val left.
    assert len({tuple(b) for b in val}) == len(val)  # No repeated crop.


def test_resume_across_epoch_boundary_matches_uninterrupted_run(data_dir):
  # 96 examples / batch 16 = 6 steps per epoch: resuming at step 4 runs on
  # into epoch 1; resuming at step 8 skips epoch 0 by arithmetic.
  full = _take(_embedded_split(data_dir, "train[:96]"), 12)
  for start_step in (4, 8):
    resumed = _take(_embedded_split(data_dir, "train[:96]",
                                    start_step=start_step), 12 - start_step)
    for expected, got in zip(full[start_step:], resumed):
      for key in expected:
        np.testing.assert_array_equal(expected[key], got[key])
  # Each epoch reshuffles the same 96 crops and redraws every flip (a crop's
  # random square is the whole 40x40 crop, so only the flip can change it).
  epoch0 = np.concatenate([b["image"] for b in full[:6]])
  epoch1 = np.concatenate([b["image"] for b in full[6:12]])
  assert not np.array_equal(epoch0, epoch1)
  flips = []
  for image in epoch1:
    same = (epoch0 == image).all((1, 2, 3))
    mirrored = (epoch0[:, :, ::-1] == image).all((1, 2, 3))
    assert same.sum() + mirrored.sum() >= 1
    flips.append(not same.any())
  assert 20 < sum(flips) < 76  # Binomial(96, 1/2), not a constant flip.
  other_seed = next(_embedded_split(data_dir, "train[:96]", seed=4))
  assert not np.array_equal(other_seed["image"], full[0]["image"])


def test_process_rows_are_disjoint_and_cover_the_split_in_order(data_dir):
  def rows(process_index, process_count):
    batches = list(_embedded_split(
        data_dir, "validation[:101]", batch_size=16 // process_count, train=False,
        process_index=process_index, process_count=process_count))
    return batches

  whole = rows(0, 1)
  halves = [rows(0, 2), rows(1, 2)]
  assert len(whole) == len(halves[0]) == len(halves[1]) == 7  # ceil(101 / 16) global batches
  for step, batch in enumerate(whole):  # Each global batch is [process 0's rows, process 1's].
    for key in batch:
      np.testing.assert_array_equal(
          batch[key], np.concatenate([halves[0][step][key], halves[1][step][key]]))
  index = np.concatenate([b["index"] for b in whole])
  np.testing.assert_array_equal(index[index >= 0], np.arange(101))  # split order, once each
  assert sum(int(b["mask"].sum()) for half in halves for b in half) == 101


def test_global_batches_do_not_depend_on_the_process_count(data_dir):
  # 96 examples / global batch 16 = 6 steps per epoch: steps 4-9 cross into epoch 1.
  def global_batches(process_count, start_step):
    per_process = [_embedded_split(data_dir, "train[:96]", batch_size=16 // process_count,
                                   start_step=start_step, process_index=i,
                                   process_count=process_count)
                   for i in range(process_count)]
    return [np.concatenate([next(p)["image"] for p in per_process]) for _ in range(6)]

  one = global_batches(1, 4)
  for process_count, start_step in ((2, 4), (4, 4), (4, 0)):
    got = global_batches(process_count, start_step)
    offset = 4 - start_step
    for expected, batch in zip(one[:6 - offset], got[offset:]):
      np.testing.assert_array_equal(expected, batch)


def test_worker_processes_build_the_same_batches(data_dir):
  threads = _take(_embedded_split(data_dir, "train[:96]", start_step=5), 3)
  workers = _take(_embedded_split(data_dir, "train[:96]", start_step=5, num_workers=2), 3)
  for expected, got in zip(threads, workers):
    for key in expected:
      np.testing.assert_array_equal(expected[key], got[key])


def test_tfrecord_dataset_gets_an_array_record_copy_with_the_same_records(tmp_path):
  builder = tfds.builder("fsq_test_rectangles", data_dir=str(tmp_path), file_format="tfrecord")
  builder.download_and_prepare()
  in_tfrecord_order = [int(x["label"]) * 1000 + int(x["image"][0, 0, 0]) for x in
                       builder.as_dataset(split="train", shuffle_files=False)]
  batch = next(pipeline.create_split(
      "fsq_test_rectangles", "train", batch_size=10, image_size=20, train=False,
      data_dir=str(tmp_path), process_index=0, process_count=1))
  # Centre crop of pixel = 100 + example + column: its first column is 100 + example + 8.
  got = [int(label) * 1000 + int(round(v * 255)) - 8 for label, v in
         zip(batch["label"], batch["image"][:, 0, 0, 0])]
  assert got == in_tfrecord_order
  info = tfds.builder("fsq_test_rectangles", data_dir=str(tmp_path)).info.as_proto
  assert (info.file_format, list(info.alternative_file_formats)) == ("tfrecord", ["array_record"])


def test_training_shards_yield_equal_step_counts(data_dir):
  steps = [len(list(_embedded_split(data_dir, "train[:101]", batch_size=10,
                                    num_epochs=1, process_index=i,
                                    process_count=2))) for i in range(2)]
  assert steps == [5, 5]  # 101 // 2 = 50 per process, remainder dropped.


def test_other_tfds_dataset_eval_is_center_crop(tmp_path):
  batch = next(pipeline.create_split(
      "fsq_test_rectangles", "train", batch_size=10, image_size=20,
      train=False, data_dir=str(tmp_path), process_index=0, process_count=1))
  labels = batch["label"]
  np.testing.assert_array_equal(np.sort(labels), np.sort(np.arange(10) % 3))
  # Pixel = 100 + example + column; the center 20 of 36 columns start at 8.
  offsets = batch["image"][:, 0, 0, 0] * 255 - 100 - 8
  expected = (offsets[:, None] + 100 + 8 + np.arange(20)[None, :]) / 255
  np.testing.assert_allclose(batch["image"][:, 0, :, 0], expected, atol=1e-5)


def test_train_preprocess_is_a_random_window_maybe_flipped():
  image = np.random.default_rng(0).integers(0, 256, (4, 9, 3), np.uint8)
  windows = {}
  for seed in range(40):
    out = images.random_crop(image, 4, np.random.default_rng(seed))
    matches = [(left, flip) for left in range(6) for flip in (False, True)
               if np.allclose(out * 255, image[:, left:left + 4][
                   :, ::-1 if flip else 1], atol=1e-3)]
    assert len(matches) == 1
    windows[matches[0]] = windows.get(matches[0], 0) + 1
  assert {flip for _, flip in windows} == {False, True}
  assert len({left for left, _ in windows}) >= 4


@pytest.mark.parametrize("input_size,output_size", [(40, 32), (300, 128), (37, 64), (64, 64)])
def test_resize_computes_tf_antialiased_bicubic(input_size, output_size):
  square = np.random.default_rng(input_size).integers(0, 256, (input_size, input_size, 3),
                                                      np.uint8)
  expected = tf.image.resize(square, [output_size] * 2, method="bicubic", antialias=True)
  np.testing.assert_allclose(images.resize(square, output_size), expected.numpy(), atol=1e-3)


def test_decode_is_tf_decode_with_the_accurate_jpeg_transform():
  photo = embedded.load_photo("chelsea")
  for fmt in ("PNG", "JPEG"):
    encoded = io.BytesIO()
    PIL.Image.fromarray(photo).save(encoded, fmt, quality=90)
    expected = tf.io.decode_jpeg(encoded.getvalue(), channels=3, dct_method="INTEGER_ACCURATE") \
        if fmt == "JPEG" else tf.io.decode_png(encoded.getvalue(), channels=3)
    np.testing.assert_array_equal(images.decode(encoded.getvalue()), expected.numpy())
  gray = io.BytesIO()
  PIL.Image.fromarray(photo[..., 0]).save(gray, "PNG")
  np.testing.assert_array_equal(images.decode(gray.getvalue()),
                                np.repeat(photo[..., :1], 3, axis=-1))


def test_unknown_dataset_raises_clear_error():
  with pytest.raises(ValueError, match="dataset_name='no_such_set'"):
    pipeline.create_split("no_such_set", "train", batch_size=2, image_size=8,
                          train=True)


def test_imagenet_without_manual_data_raises_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError,
                     match=r"ILSVRC2012_img_train\.tar.*downloads/manual"):
    pipeline.create_split("imagenet2012", "train", batch_size=2, image_size=8,
                          train=True, data_dir=str(tmp_path),
                          process_index=0, process_count=1)


def test_bad_arguments_raise_value_errors(data_dir):
  with pytest.raises(ValueError, match="batch_size"):
    _embedded_split(data_dir, "train", batch_size=0)
  with pytest.raises(ValueError, match="batch_size=200 exceeds"):
    _embedded_split(data_dir, "train[:100]", batch_size=200)
  with pytest.raises(ValueError, match="process_index=2"):
    _embedded_split(data_dir, "train", process_index=2, process_count=2)
  with pytest.raises(ValueError, match="split='test'"):
    _embedded_split(data_dir, "test")


def test_atomic_writes_of_one_path_at_once_both_finish(tmp_path):
  path = str(tmp_path / "reference.npz")
  # Two writers interleaved, as two runs side by side computing the same cached reference.
  with files.atomic_write(path, "wb") as first, files.atomic_write(path, "wb") as second:
    first.write(b"a" * 10)
    second.write(b"b" * 10)
  with open(path, "rb") as f:
    assert f.read() in (b"a" * 10, b"b" * 10)  # one whole copy
  assert os.listdir(tmp_path) == ["reference.npz"]  # no temporary file left
  with pytest.raises(RuntimeError):
    with files.atomic_write(path, "wb") as f:
      f.write(b"partial")
      raise RuntimeError("killed")
  with open(path, "rb") as f:
    assert f.read() in (b"a" * 10, b"b" * 10)  # a failed write leaves the old file
  assert os.listdir(tmp_path) == ["reference.npz"]


def test_inception_crop_draws_area_and_aspect_in_range_and_flips():
  from fsq_repro.data import images as images_lib
  image = np.tile(np.arange(200, dtype=np.uint8)[None, :, None], (100, 1, 3))  # a ramp in x
  crops = [images_lib.inception_crop(image, 16, np.random.default_rng(i)) for i in range(40)]
  assert all(c.shape == (16, 16, 3) and 0 <= c.min() and c.max() <= 1 for c in crops)
  slopes = [np.sign(c[8, -1, 0] - c[8, 0, 0]) for c in crops]
  assert 5 < slopes.count(-1) < 35  # flipped about half the time
  # A crop's horizontal extent in the ramp: at most the image, at least the smallest box.
  spans = [abs(c[8, -1, 0] - c[8, 0, 0]) * 255 for c in crops]
  assert max(spans) <= 200 and min(spans) >= 0.5 * np.sqrt(0.05 * 100 * 200 * 0.75)
  np.testing.assert_array_equal(crops[0], images_lib.inception_crop(
      image, 16, np.random.default_rng(0)))  # a function of the generator's state
  # No draw of 60% area fits a 1 x 100 strip at aspect 3/4..4/3: the whole image is used.
  strip = np.tile(np.arange(100, dtype=np.uint8)[None, :, None], (1, 1, 3))
  whole = images_lib.inception_crop(strip, 4, np.random.default_rng(1), area=(0.6, 1.0))
  assert abs(whole[0, 0, 0] - whole[0, -1, 0]) * 255 > 60


def test_depth_maps_are_cropped_with_their_images_and_the_nyu_eval_crop_keeps_full_truth():
  import tfds_mock
  with tfds_mock.mock_dataset("nyu_depth_v2", {"train": 4, "validation": 2}, shards=1):
    raw = pipeline.records("nyu_depth_v2", "validation")[0]
    (batch,) = list(pipeline.create_split("nyu_depth_v2", "validation", batch_size=2,
                                          image_size=16, train=False, crop="nyu"))
    train = next(pipeline.create_split("nyu_depth_v2", "train", batch_size=2, image_size=16,
                                       train=True, train_crop="inception", seed=3))
  depth = np.asarray(raw["depth"], np.float32)
  np.testing.assert_array_equal(batch["depth_full"][0], depth[54:480, 41:601])
  assert batch["depth"].shape == (2, 16, 16) and batch["image"].shape == (2, 16, 16, 3)
  # Nearest neighbours of the crop: every resized value is one of the crop's own.
  assert set(np.unique(batch["depth"][0])) <= set(np.unique(depth[54:480, 41:601]))
  # In training, the same box and flip for both: depth grows with the row in the mock, so
  # each resized depth column increases downwards whatever the crop and the flip.
  column = train["depth"][0][:, 8]
  assert np.all(np.diff(column[column > 0]) >= 0) and train["image"].shape == (2, 16, 16, 3)
