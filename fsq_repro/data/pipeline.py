"""Input pipeline: a TFDS split read through Grain -> this process's rows of global batches.

The global batch at step s is a pure function of (dataset, split, seed, s), whatever the
number of processes that read it. Epoch e of a training split is a permutation of its
records seeded by (seed, e); step s takes positions [s B, (s + 1) B) of the epochs laid end
to end (B the global batch; an epoch holds floor(records / B) batches, the leftover records
of each permutation are dropped), and every random augmentation is keyed by (seed, epoch,
position in epoch). Process p of P materialises rows [p B/P, (p + 1) B/P) of every global
batch, reading only their records: the split is a random-access source (TFDS's ArrayRecord
data source), so a run resumed at step s starts there without reading anything before it,
and a run resumed on another number of processes continues the same batches. Evaluation
reads the split in order: step s holds positions [s B, (s + 1) B), the last global batch
padded with rows whose `mask` is False and `index` -1.

Grain builds the batches (`grain.MapDataset` over steps, read ahead by threads or, with
`num_workers`, worker processes); decoding and cropping are numpy (data/images.py). TFDS
prepares the data in ArrayRecord; a dataset prepared earlier as TFRecord gets an ArrayRecord
copy once (`_add_array_record`), the one place that still reads through tf.data.

MaskGIT never published its training input code; we use the usual recipe of its VQGAN
lineage. Train takes a random square crop whose side is the image's short side, resizes it
to `image_size` and flips it horizontally with probability 1/2 (the same as resizing the
short side, then random-cropping); eval resizes the short side and takes the center crop
(`crop="center"`), or crops as ADM's reference batches were made (`crop="adm"`,
data/adm_crop.py). Images are float32 in [0, 1].
"""

import dataclasses
import functools
import math
import os
import sys
import uuid
from typing import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grain  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

from fsq_repro import files, parallel  # pylint: disable=g-import-not-at-top
from fsq_repro.data import adm_crop  # pylint: disable=g-import-not-at-top
from fsq_repro.data import coco_panoptic  # pylint: disable=g-import-not-at-top
from fsq_repro.data import coltran_crop  # pylint: disable=g-import-not-at-top
from fsq_repro.data import embedded  # pylint: disable=g-import-not-at-top
from fsq_repro.data import image_folder  # pylint: disable=g-import-not-at-top
from fsq_repro.data import images  # pylint: disable=g-import-not-at-top

EMBEDDED_DATASET = embedded.FsqPhotoCrops.name  # "fsq_photo_crops"
FILE_FORMAT = "array_record"  # random access, what tfds.data_source reads
_IMAGENET_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
CROPS = ("center", "adm", "coltran", "nyu", "full")
# Datasets whose labels are maps, not classes: dataset -> (the record features they are read
# from, the maps a batch carries under their own keys, cropped alike with the image with
# nearest-neighbour resizes). COCO panoptic's maps are data/coco_panoptic.py's.
DENSE_LABELS = {"nyu_depth_v2": (("depth",), ("depth",)),
                "coco/2017_panoptic": (("panoptic_image", "panoptic_objects"),
                                       ("semantics", "instances"))}
# NYU depth's evaluation crop (big_vision's nyu_eval_crop): rows 54..479, columns 41..600.
NYU_EVAL_BOX = (54, 41, 426, 560, False)
# Training augmentation: "square" (a random short-side square, MaskGIT's lineage) or
# "inception" (random area 5-100% and aspect 3/4-4/3, UViM's); both flip.
TRAIN_CROPS = ("square", "inception")


def _hide_accelerators_from_tf() -> None:
  """Keeps TF on the CPU so it never takes GPU memory that JAX needs."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    # TF was initialised earlier in this process; its devices are fixed now.
    pass


_hide_accelerators_from_tf()


def dense_dataset(dataset_name: str) -> str | None:
  """The DENSE_LABELS entry of `dataset_name` (any version, config or slice), or None."""
  name = dataset_name.split(":")[0]
  for key in (name, name.split("/")[0]):
    if key in DENSE_LABELS:
      return key
  return None


def dense_maps(dataset_name: str) -> tuple[str, ...]:
  """The label maps batches of `dataset_name` carry: () for class-labelled datasets."""
  key = dense_dataset(dataset_name)
  return DENSE_LABELS[key][1] if key else ()


def _read_maps(dense: str, record: dict) -> dict[str, np.ndarray]:
  """A record's full-size label maps (float32 depth in metres; COCO's int label maps)."""
  if dense == "coco/2017_panoptic":
    return coco_panoptic.label_maps(record)
  return {key: np.asarray(record[key], np.float32) for key in DENSE_LABELS[dense][1]}


def _finish_maps(dense: str, maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Label maps after the crop: COCO's instance ids renumbered canonically."""
  if dense == "coco/2017_panoptic":
    return {**maps, "instances": coco_panoptic.canonical_instances(maps["instances"])}
  return maps


def _builder(dataset_name: str, data_dir: str | None):
  """The TFDS builder of a known image/label dataset (maybe not prepared)."""
  if image_folder.is_image_folder(dataset_name):  # a user's folder: see image_folder.py
    return image_folder.builder(dataset_name, data_dir or files.data_dir())
  base_name = dataset_name.split("/")[0].split(":")[0]
  if base_name not in tfds.list_builders(with_community_datasets=False):
    raise ValueError(
        f"dataset_name={dataset_name!r} is not a TFDS dataset; use "
        f"{EMBEDDED_DATASET!r} (embedded, offline), 'imagenet2012', 'cifar10', "
        "another name from tfds.list_builders(), or 'image_folder:<dir>'")
  builder = tfds.builder(dataset_name, data_dir=data_dir or files.data_dir())
  features = builder.info.features
  dense = dense_dataset(dataset_name)
  if dense:
    if "image" not in features or not set(DENSE_LABELS[dense][0]) <= set(features):
      raise ValueError(f"dataset_name={dataset_name!r} lacks 'image' or the features of its "
                       f"label maps {DENSE_LABELS[dense][0]}")
  elif ("image" not in features or "label" not in features or
        not isinstance(features["label"], tfds.features.ClassLabel)):
    raise ValueError(f"dataset_name={dataset_name!r} lacks an 'image' feature "
                     "and a ClassLabel 'label' feature; pick an image dataset")
  return builder


def _prepared_builder(dataset_name: str, data_dir: str | None):
  """The builder of `dataset_name`, prepared (once, under a file lock) with ArrayRecord files."""
  builder = _builder(dataset_name, data_dir)
  if builder.is_prepared() and _has_array_record(builder):
    return builder
  if not builder.is_prepared():
    _check_manual_data(builder)
  with files.file_lock(os.path.join(builder.data_dir_root, builder.name + ".lock")):
    builder = _builder(dataset_name, data_dir)  # another process may have prepared it
    if not builder.is_prepared():
      builder.download_and_prepare(file_format=FILE_FORMAT,
                                   download_config=tfds.download.DownloadConfig(
                                       try_download_gcs=False))
    elif not _has_array_record(builder):
      _add_array_record(builder)
  return _builder(dataset_name, data_dir)  # the info as written


def _has_array_record(builder) -> bool:
  proto = builder.info.as_proto  # as written: TFDS 4.9 reads alternative formats into it only
  return FILE_FORMAT in (proto.file_format, *proto.alternative_file_formats)


def _add_array_record(builder) -> None:
  """Writes an ArrayRecord copy of a dataset prepared as TFRecord only (by an earlier version of
  this pipeline, or another tool), record for record and shard for shard, and records it in
  the dataset's info as an alternative format. Each shard is written to a temporary name
  and renamed, so an interrupted copy is redone, never read."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  for split_info in builder.info.splits.values():
    template = split_info.filename_template
    sources = template.sharded_filepaths(split_info.num_shards)
    targets = template.replace(filetype_suffix=FILE_FORMAT).sharded_filepaths(
        split_info.num_shards)
    for source, target in zip(sources, targets):
      temporary = f"{target}.{uuid.uuid4().hex}.tmp"
      writer = array_record_module.ArrayRecordWriter(temporary, "group_size:1")
      for record in tf.data.TFRecordDataset(os.fspath(source)).as_numpy_iterator():
        writer.write(record)
      writer.close()
      os.replace(temporary, target)
  builder.info.add_alternative_file_format(FILE_FORMAT)
  builder.info.write_to_directory(builder.data_dir)


def _check_manual_data(builder) -> None:
  """Fails early, in one line, when a manual-download dataset has no data."""
  if not builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    return
  manual_dir = os.path.join(builder.data_dir_root, "downloads", "manual")
  if builder.name == "imagenet2012":
    missing = [f for f in _IMAGENET_TARS
               if not os.path.exists(os.path.join(manual_dir, f))]
    if missing:
      raise FileNotFoundError(
          f"imagenet2012 is not prepared in {builder.data_dir_root} (missing "
          f"{', '.join(missing)}): download "
          f"{' and '.join(_IMAGENET_TARS)} from https://image-net.org into "
          f"{manual_dir} (the TFDS manual dir), or "
          "point data_dir / $FSQ_DATA_DIR at a prepared imagenet2012")
  elif not (os.path.isdir(manual_dir) and os.listdir(manual_dir)):
    raise FileNotFoundError(
        f"{builder.name} needs a manual download into {manual_dir}: "
        + " ".join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split()))


def num_examples(dataset_name: str, split: str, *,
                 data_dir: str | None = None) -> int:
  """Examples in `split` (any TFDS split string, e.g. 'train[:10%]')."""
  builder = _prepared_builder(dataset_name, data_dir)
  return builder.info.splits[split].num_examples


def shard_lengths(dataset_name: str, split: str, *, data_dir: str | None = None) -> list[int]:
  """Examples per file shard of the whole split `split`, in file order (TFDS read order)."""
  return list(_prepared_builder(dataset_name, data_dir).info.splits[split].shard_lengths)


def features(dataset_name: str, *, data_dir: str | None = None):
  """The TFDS features of `dataset_name` (needs no prepared data)."""
  return _builder(dataset_name, data_dir).info.features


def num_classes(dataset_name: str, *, data_dir: str | None = None) -> int:
  """Number of label classes of `dataset_name` (needs no prepared data)."""
  return _builder(dataset_name, data_dir).info.features["label"].num_classes


def records(dataset_name: str, split: str, *, data_dir: str | None = None):
  """`split` as a random-access sequence of {'image': encoded bytes, 'label': int, ...}."""
  builder = _prepared_builder(dataset_name, data_dir)
  try:
    builder.info.splits[split]  # Parses slices such as 'train[:10%]' too.
  except (KeyError, ValueError) as e:
    raise ValueError(f"split={split!r} of {builder.name}: {e}") from e
  if FILE_FORMAT not in {f.value for f in builder.info.available_file_formats()}:
    builder.info.add_alternative_file_format(FILE_FORMAT)  # the copy of _add_array_record
  encoded = {key: tfds.decode.SkipDecoding() for key in ("image", "panoptic_image")
             if key in builder.info.features}  # decoded in our pipeline (PIL)
  return builder.as_data_source(split, decoders=encoded, file_format=FILE_FORMAT)


@dataclasses.dataclass(frozen=True)
class Subset:
  """Some records of a random-access source, in a given order (UViM's colorization demo
  leaves out the embedded dataset's gray photos; ColTran's FID-5k reads chosen positions).
  Picklable, like the source."""
  source: object
  indices: np.ndarray  # the records' indices in `source`

  @classmethod
  def without_labels(cls, source, labels: tuple[int, ...]) -> "Subset":
    every = source.__getitems__(list(range(len(source))))
    kept = [i for i, record in enumerate(every) if int(record["label"]) not in labels]
    return cls(source, np.asarray(kept, np.int64))

  def __len__(self) -> int:
    return len(self.indices)

  def __getitems__(self, indices):
    return self.source.__getitems__([int(self.indices[i]) for i in indices])


def label_ids(dataset_name: str, names, *, data_dir: str | None = None) -> tuple[int, ...]:
  """The ClassLabel ids of the class `names`; ValueError names the field and the choices."""
  label = _builder(dataset_name, data_dir).info.features["label"]
  unknown = [name for name in names if name not in label.names]
  if unknown:
    raise ValueError(f"dataset.exclude_classes={tuple(names)!r}: {unknown} are not classes of "
                     f"{dataset_name}; use names from {label.names[:10]}")
  return tuple(label.str2int(name) for name in names)


def first_examples(dataset_name: str, split: str, num_examples: int, *,
                   data_dir: str | None = None) -> str:
  """The split string of the first `num_examples` examples of `split` (all, if it has fewer),
  e.g. ('validation', 1000) -> 'validation[0:1000]'; works on sliced and '+'-joined splits."""
  _check_positive(num_examples=num_examples)
  splits = _prepared_builder(dataset_name, data_dir).info.splits
  try:
    ranges = tfds.core.ReadInstruction.from_spec(split).to_absolute(splits)
  except (KeyError, ValueError, AssertionError) as e:
    raise ValueError(f"split={split!r} of {dataset_name}: {e}") from e
  parts, left = [], num_examples
  for r in ranges:
    start = r.from_ or 0
    end = splits[r.splitname].num_examples if r.to is None else r.to
    take = min(left, end - start)
    if take > 0:
      parts.append(f"{r.splitname}[{start}:{start + take}]")
      left -= take
  return "+".join(parts)


def _check_positive(**values) -> None:
  for name, value in values.items():
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f"{name}={value!r} must be a positive int")


@functools.lru_cache(maxsize=2)  # the epoch being read, and the next one
def _epoch_order(num_records: int, seed: int, epoch: int) -> np.ndarray:
  """The permutation of a training split's record indices that epoch `epoch` reads."""
  return np.random.default_rng([seed, epoch, 0]).permutation(num_records)


@dataclasses.dataclass(frozen=True)
class GlobalBatches:
  """Step -> this process's rows of the global batch at that step (the module docstring).

  A picklable function of the step alone, so Grain may call it in any thread or worker
  process, for any step, in any order.
  """
  source: object  # random access: source[i] -> {'image': bytes, 'label': int}
  num_records: int
  global_batch_size: int
  steps_per_epoch: int
  first_row: int  # this process's rows of a global batch: [first_row, first_row + num_rows)
  num_rows: int
  image_size: int
  train: bool
  seed: int
  crop: str
  train_crop: str = "square"  # TRAIN_CROPS
  dense: str | None = None  # the DENSE_LABELS entry whose maps are cropped with the image

  def record_indices(self, step: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(epoch, positions in the epoch, record indices) of this process's rows at `step`;
    index -1 marks a padding row (a position past the split's end)."""
    epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
    positions = (step_in_epoch * self.global_batch_size + self.first_row +
                 np.arange(self.num_rows))
    real = positions < self.num_records
    order = _epoch_order(self.num_records, self.seed, epoch) if self.train else None
    indices = np.where(real, positions if order is None else
                       order[np.minimum(positions, self.num_records - 1)], -1)
    return epoch, positions, indices

  def _box(self, shape, epoch: int, position: int) -> tuple:
    if self.train:
      rng = np.random.default_rng([self.seed, epoch, 1, position])
      if self.train_crop == "inception":
        return images.inception_box(shape, rng)
      return images.square_box(shape, rng)
    if self.crop == "nyu":
      return NYU_EVAL_BOX
    if self.crop == "full":
      return 0, 0, shape[0], shape[1], False
    return images.centre_box(shape)

  def _example(self, record: dict, epoch: int, position: int) -> dict[str, np.ndarray]:
    """The row of one record: its image (and dense labels) cropped as the split's mode says."""
    if not self.train and self.crop == "adm":
      image = adm_crop.decode_and_crop(record["image"], self.image_size)
      return {"image": image.astype(np.float32) / 255.0}
    if not self.train and self.crop == "coltran":
      image = coltran_crop.decode_and_crop(record["image"], self.image_size)
      return {"image": image.astype(np.float32) / 255.0}
    image = images.decode(record["image"])
    box = self._box(image.shape, epoch, position)
    row = {"image": images.apply_box(image, box, self.image_size)}
    if self.dense is None:
      return row
    maps = _read_maps(self.dense, record)
    row.update(_finish_maps(self.dense, {
        key: images.apply_box_nearest(label, box, self.image_size)
        for key, label in maps.items()}))
    if not self.train and self.crop == "nyu":  # the evaluation's ground truth, unresized
      top, left, height, width, _ = box
      row.update({key + "_full": label[top:top + height, left:left + width]
                  for key, label in maps.items()})
    return {key: value.astype(np.float32) for key, value in row.items()}

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    epoch, positions, indices = self.record_indices(step)
    batch = {"label": np.zeros([self.num_rows], np.int32), "mask": indices >= 0}
    rows = np.flatnonzero(batch["mask"])
    for row, record in zip(rows, self.source.__getitems__(indices[rows].tolist())):
      for key, value in self._example(record, epoch, int(positions[row])).items():
        if key not in batch:  # zeros for padding rows
          batch[key] = np.zeros((self.num_rows, *value.shape), np.float32)
        batch[key][row] = value
      batch["label"][row] = record.get("label", 0)
    if "image" not in batch:  # no real row at all
      size = self.image_size
      batch["image"] = np.zeros([self.num_rows, size, size, 3], np.float32)
    if not self.train:
      batch["index"] = np.where(batch["mask"], positions, -1).astype(np.int64)
    return batch


def create_split(
    dataset_name: str,
    split: str,
    *,
    batch_size: int,
    image_size: int,
    train: bool,
    seed: int = 0,
    start_step: int = 0,
    data_dir: str | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    drop_remainder: bool | None = None,
    num_epochs: int | None = None,
    crop: str = "center",
    num_threads: int = 2,
    num_workers: int = 0,
    exclude_classes: tuple[str, ...] = (),
    record_indices=None,
    train_crop: str = "square",
) -> Iterator[dict[str, np.ndarray]]:
  """This process's rows of the global batches of `split`: {'image', 'label', 'mask'} numpy
  dicts, the global batch being `batch_size` x `process_count` rows.

  Args:
    dataset_name: a TFDS name with 'image' and 'label' features, e.g.
      'fsq_photo_crops' (embedded, prepared on first use), 'imagenet2012', or
      'image_folder:<dir>' (class subfolders of JPEG/PNG files, image_folder.py).
    split: a TFDS split string.
    batch_size: rows of every global batch on this process.
    image_size: output height and width.
    train: shuffle every epoch and augment (random crop + flip), or not.
    seed: non-negative int; with `start_step` it fixes every global batch.
    start_step: index of the first batch yielded (resume from a checkpoint).
    data_dir: TFDS data dir; default `files.data_dir()`.
    process_index, process_count: this process's rows; default from JAX.
    drop_remainder: True: an epoch is floor(examples / global batch) full global batches.
      False: an epoch covers every example once, the last global batch padded with zero
      images whose `mask` is False. Default: `train`.
    num_epochs: epochs counted from step 0 (None: forever when training, 1 otherwise).
    crop: without `train`, "center" (crop, then bicubic), "adm" (ADM's reference-batch
      preprocessing, data/adm_crop.py), "coltran" (ColTran's: the centre square, area
      resize; data/coltran_crop.py), "nyu" (NYU depth's evaluation crop, NYU_EVAL_BOX) or
      "full" (the whole image stretched to a square, UViM's COCO panoptic evaluation).
    num_threads: Grain threads building batches ahead of use (0: on demand).
    num_workers: Grain worker processes building them instead (0: none).
    exclude_classes: class names whose examples the split leaves out (read once, in order).
    record_indices: read only these positions of `split`, in this order (the batches'
      'index' counts positions in this list).
    train_crop: with `train`, one of TRAIN_CROPS.

  Returns:
    An iterator of dicts: 'image' float32 [B, image_size, image_size, 3] in [0, 1], 'label'
    int32 [B], 'mask' bool [B]; without `train` also 'index' int64 [B], each example's
    position in `split` (-1 for padding). Datasets of DENSE_LABELS have no 'label' (zeros)
    but their maps, e.g. 'depth' float32 [B, image_size, image_size], cropped like the image;
    with crop="nyu" also 'depth_full' [B, 426, 560], the evaluation crop unresized. COCO
    panoptic's are 'semantics' and 'instances' (integers, as float32; coco_panoptic.py).
  """
  _check_positive(batch_size=batch_size, image_size=image_size)
  for name, value in (("seed", seed), ("start_step", start_step),
                      ("num_threads", num_threads), ("num_workers", num_workers)):
    if not isinstance(value, int) or value < 0:
      raise ValueError(f"{name}={value!r} must be a non-negative int")
  if num_epochs is not None:
    _check_positive(num_epochs=num_epochs)
  if crop not in CROPS:
    raise ValueError(f"crop={crop!r} must be one of {CROPS}")
  if train_crop not in TRAIN_CROPS:
    raise ValueError(f"dataset.train_crop={train_crop!r} must be one of {TRAIN_CROPS}")
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must lie in "
                     f"[0, process_count={process_count})")
  drop_remainder = train if drop_remainder is None else drop_remainder
  if num_epochs is None and not train:
    num_epochs = 1

  source = records(dataset_name, split, data_dir=data_dir)
  if exclude_classes:
    source = Subset.without_labels(source, label_ids(dataset_name, exclude_classes,
                                                     data_dir=data_dir))
  if record_indices is not None:
    source = Subset(source, np.asarray(record_indices, np.int64))
  global_batch_size = batch_size * process_count
  num_records = len(source)
  steps_per_epoch = (num_records // global_batch_size if drop_remainder else
                     math.ceil(num_records / global_batch_size))
  if steps_per_epoch == 0:
    raise ValueError(
        f"batch_size={batch_size} exceeds the {num_records // process_count} examples per "
        f"process of {dataset_name} {split}; lower it")
  batches = GlobalBatches(
      source=source, num_records=num_records, global_batch_size=global_batch_size,
      steps_per_epoch=steps_per_epoch, first_row=process_index * batch_size,
      num_rows=batch_size, image_size=image_size, train=train, seed=seed, crop=crop,
      train_crop=train_crop, dense=dense_dataset(dataset_name))
  stop = sys.maxsize if num_epochs is None else num_epochs * steps_per_epoch
  steps = grain.MapDataset.range(start_step, max(start_step, stop)).map(batches)
  dataset = steps.to_iter_dataset(grain.ReadOptions(
      num_threads=num_threads, prefetch_buffer_size=max(1, 2 * num_threads)))
  if num_workers:
    if not flags.FLAGS.is_parsed():  # a script that is no absl app: Grain reads its flags
      flags.FLAGS.mark_as_parsed()
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(dataset)


def train_batches(config, global_batch_size: int, start_step: int, keys=("image",),
                  seed: int | None = None):
  """This process's rows of the augmented global training batches of config.dataset from
  `start_step`, holding only `keys` (what the Stage I and the online Stage II steps read);
  shuffled and augmented by `seed` (default config.seed)."""
  d = config.dataset
  for batch in create_split(
      d.name, d.train_split, batch_size=parallel.per_process_batch_size(global_batch_size),
      image_size=d.image_size, train=True, seed=config.seed if seed is None else seed,
      start_step=start_step,
      data_dir=d.data_dir, num_threads=d.num_threads, num_workers=d.num_workers,
      exclude_classes=tuple(d.get("exclude_classes", ())),
      train_crop=d.get("train_crop", "square")):
    yield {key: batch[key] for key in keys}
