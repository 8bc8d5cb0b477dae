"""A TFDS dataset mocked with `tfds.testing.mock_data`, for the real loading path.

`mock_dataset("imagenet2012", {"train": 48, "validation": 40})` makes tfds.builder() of that
name report those splits (in `shards` file shards each) as prepared, and its data source (the
`as_data_source_fn` hook of mock_data) serve JPEG-encoded random images of random sizes with
labels and file names. Everything of ours runs as on real data: builder lookup, split
parsing and slicing, shard lengths, ArrayRecord data sources with undecoded images.
"""

import contextlib
import io
from unittest import mock

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from fsq_repro.data import pipeline


def _split_info(dataset: str, name: str, size: int, shards: int):
  lengths = [len(part) for part in np.array_split(np.arange(size), shards)]
  template = tfds.core.ShardedFileTemplate(data_dir="/nonexistent", dataset_name=dataset,
                                           split=name, filetype_suffix="array_record")
  return tfds.core.SplitInfo(name=name, shard_lengths=lengths, num_bytes=0,
                             filename_template=template)


class FakeSource:
  """Random access to `size` examples; example i is the same on every read. With `depth`
  (nyu_depth_v2's features) 480 x 640 images and float16 depth maps in metres, zero (no
  signal) in a corner, else classes with a label."""

  def __init__(self, split: str, size: int, num_classes: int | None, depth: bool = False):
    self.split, self.size, self.num_classes, self.depth = split, size, num_classes, depth

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
    return FakeSource(split, size, features["label"].num_classes)

  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_data_source_fn=data_source), \
      mock.patch.object(tfds.core.DatasetInfo, "splits", new_callable=mock.PropertyMock,
                        return_value=splits), \
      mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True), \
      mock.patch.object(pipeline, "_has_array_record", return_value=True):
    yield
