"""A TFDS dataset mocked with `tfds.testing.mock_data`, for the real loading path.

`mock_dataset("imagenet2012", {"train": 48, "validation": 40})` makes tfds.builder() of that
name report those splits (in `shards` file shards each) as prepared, and its data source (the
`as_data_source_fn` hook of mock_data) serve JPEG-encoded random images of random sizes with
labels and file names (nyu_depth_v2: depth maps; coco/2017_panoptic: panoptic PNGs and their
segments). Everything of ours runs as on real data: builder lookup, split
parsing and slicing, shard lengths, ArrayRecord data sources with undecoded images.
"""

import contextlib
import io
from unittest import mock

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from fsq_repro.data import pipeline
from fsq_repro.eval import panoptic


def _split_info(dataset: str, name: str, size: int, shards: int):
  lengths = [len(part) for part in np.array_split(np.arange(size), shards)]
  template = tfds.core.ShardedFileTemplate(data_dir="/nonexistent", dataset_name=dataset,
                                           split=name, filetype_suffix="array_record")
  return tfds.core.SplitInfo(name=name, shard_lengths=lengths, num_bytes=0,
                             filename_template=template)


def panoptic_record(rng, height: int, width: int) -> dict:
  """A COCO panoptic record's label features: two stuff regions (sky above, ground below),
  two to four thing rectangles (one of them crowd in every other image), a void border."""
  ids = np.zeros((height, width), np.int64)
  ids[1:height // 2, 1:-1], ids[height // 2:-1, 1:-1] = 5000, 5001
  segments = [(5000, 80 + int(rng.integers(53)), False), (5001, 80 + int(rng.integers(53)), False)]
  for k in range(int(rng.integers(2, 5))):
    h, w = int(rng.integers(height // 6, height // 2)), int(rng.integers(width // 6, width // 2))
    top, left = int(rng.integers(1, height - h)), int(rng.integers(1, width - w))
    ids[top:top + h, left:left + w] = 70000 + 257 * k
    segments.append((70000 + 257 * k, int(rng.integers(80)), k == 1 and rng.random() < 0.5))
  present = [s for s in segments if (ids == s[0]).any()]
  buffer = io.BytesIO()
  PIL.Image.fromarray(panoptic.id_to_rgb(ids)).save(buffer, "PNG")
  return {"panoptic_image": buffer.getvalue(),
          "panoptic_objects": {
              "id": np.asarray([s[0] for s in present], np.int64),
              "label": np.asarray([s[1] for s in present], np.int64),
              "is_crowd": np.asarray([s[2] for s in present], bool),
              "area": np.asarray([(ids == s[0]).sum() for s in present], np.int64),
              "bbox": np.zeros((len(present), 4), np.float32)}}


class FakeSource:
  """Random access to `size` examples; example i is the same on every read. With `depth`
  (nyu_depth_v2's features) 480 x 640 images and float16 depth maps in metres, zero (no
  signal) in a corner; with `panoptic` (coco/2017_panoptic's) images of random sizes with
  `panoptic_record`'s segments; else classes with a label."""

  def __init__(self, split: str, size: int, num_classes: int | None, depth: bool = False,
               panoptic: bool = False):
    self.split, self.size, self.num_classes, self.depth = split, size, num_classes, depth
    self.panoptic = panoptic

  def __len__(self):
    return self.size

  def __getitem__(self, i):
    rng = np.random.default_rng([sum(map(ord, self.split)), i])
    height, width = (480, 640) if self.depth else rng.integers(24, 48, size=2)
    # Smooth colour fields (a gradient per channel), so that colour has structure.
    y, x = np.mgrid[:height, :width] / float(max(height, width))
    slopes = rng.uniform(-255, 255, (3, 2))
    image = np.stack([128 + a * y + b * x for a, b in slopes], -1)
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, "JPEG")
    example = {"image": buffer.getvalue()}
    if self.depth:
      depth = 1.0 + 8.0 * y + rng.uniform(0, 1)
      depth[:40, :40] = 0.0
      return {**example, "depth": depth.astype(np.float16)}
    if self.panoptic:
      return {**example, **panoptic_record(rng, height, width),
              "image/id": np.int64(1000 * sum(map(ord, self.split)) + i)}
    return {**example, "label": np.int64(i % self.num_classes),
            "file_name": f"{self.split}_{i:05d}.JPEG".encode()}

  def __getitems__(self, indices):
    return [self[int(i)] for i in indices]


@contextlib.contextmanager
def mock_dataset(name: str, split_sizes: dict[str, int], *, shards: int = 3):
  splits = tfds.core.SplitDict([_split_info(name, split, size, shards)
                                for split, size in split_sizes.items()])

  def data_source(builder, split, decoders=None, **kwargs):
    del decoders, kwargs
    size = builder.info.splits[split].num_examples
    features = builder.info.features
    if "depth" in features:
      return FakeSource(split, size, None, depth=True)
    if "panoptic_image" in features:
      return FakeSource(split, size, None, panoptic=True)
    return FakeSource(split, size, features["label"].num_classes)

  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_data_source_fn=data_source), \
      mock.patch.object(tfds.core.DatasetInfo, "splits", new_callable=mock.PropertyMock,
                        return_value=splits), \
      mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True), \
      mock.patch.object(pipeline, "_has_array_record", return_value=True):
    yield
