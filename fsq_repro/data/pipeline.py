"""Input pipeline: TFDS split -> per-process, deterministic, resumable batches.

The batch at step s is a pure function of (dataset, split, seed, s, process):
each epoch's order comes from a shuffle seeded by (seed, epoch), and every
random augmentation from stateless ops keyed by (seed, process, epoch,
position in epoch). A run resumed at `start_step` therefore yields exactly the
batches an uninterrupted run yields from that step on: whole epochs are skipped
by arithmetic, and within an epoch the skipped records are never decoded.

MaskGIT never published its training input code; we use the usual recipe of
its VQGAN lineage. Train takes a random square crop whose side is the image's
short side, resizes it to `image_size` and flips it horizontally with
probability 1/2 (the same as resizing the short side, then random-cropping);
eval resizes the short side and takes the center crop (`crop="center"`), or crops as ADM's
reference batches were made (`crop="adm"`, data/adm_crop.py). Images are float32 in [0, 1].
Every batch also carries `mask` (False marks padding, see `create_split`).
"""

import math
import os
from typing import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

from fsq_repro import files, parallel  # pylint: disable=g-import-not-at-top
from fsq_repro.data import adm_crop  # pylint: disable=g-import-not-at-top
from fsq_repro.data import embedded  # pylint: disable=g-import-not-at-top
from fsq_repro.data import image_folder  # pylint: disable=g-import-not-at-top

EMBEDDED_DATASET = embedded.FsqPhotoCrops.name  # "fsq_photo_crops"
# Records held for shuffling; for ImageNet (~110 kB per JPEG) about 1.8 GB.
SHUFFLE_BUFFER = 16_384
_IMAGENET_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


def _hide_accelerators_from_tf() -> None:
  """Keeps TF on the CPU so it never takes GPU memory that JAX needs."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    # TF was initialised earlier in this process; its devices are fixed now.
    pass


_hide_accelerators_from_tf()


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
  if ("image" not in features or "label" not in features or
      not isinstance(features["label"], tfds.features.ClassLabel)):
    raise ValueError(f"dataset_name={dataset_name!r} lacks an 'image' feature "
                     "and a ClassLabel 'label' feature; pick an image dataset")
  return builder


def _prepared_builder(dataset_name: str, data_dir: str | None):
  builder = _builder(dataset_name, data_dir)
  if builder.is_prepared():
    return builder
  _check_manual_data(builder)
  with files.file_lock(os.path.join(builder.data_dir_root, builder.name + ".lock")):
    if not builder.is_prepared():
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
          try_download_gcs=False))
      return builder
  # Another process prepared it while we waited: load the info it wrote.
  return _builder(dataset_name, data_dir)


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


def num_classes(dataset_name: str, *, data_dir: str | None = None) -> int:
  """Number of label classes of `dataset_name` (needs no prepared data)."""
  return _builder(dataset_name, data_dir).info.features["label"].num_classes


def preprocess_image(image: tf.Tensor, image_size: int,
                     augment_seed: tf.Tensor | None) -> tf.Tensor:
  """uint8 [H, W, 3] -> float32 [image_size, image_size, 3] in [0, 1].

  With `augment_seed` (a stateless [2] seed): random short-side square crop and
  random horizontal flip. Without: center crop.
  """
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  side = tf.minimum(height, width)
  if augment_seed is None:
    top, left, flip = (height - side) // 2, (width - side) // 2, False
  else:
    top_seed, left_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(augment_seed, 3))
    top = tf.random.stateless_uniform(
        [], top_seed, minval=0, maxval=height - side + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform(
        [], left_seed, minval=0, maxval=width - side + 1, dtype=tf.int32)
    flip = tf.random.stateless_uniform([], flip_seed) < 0.5
  square = image[top:top + side, left:left + side]
  resized = tf.image.resize(square, [image_size, image_size], method="bicubic",
                            antialias=True)
  if augment_seed is not None:
    resized = tf.cond(flip, lambda: resized[:, ::-1], lambda: resized)
  return tf.clip_by_value(resized / 255.0, 0.0, 1.0)


def _epoch_seeds(seed: int, epoch: int, process_index: int) -> tuple[int, list]:
  """(shuffle seed, stateless augmentation key) of one epoch on one process."""
  shuffle_seed = np.random.SeedSequence([seed, epoch, 0]).generate_state(1)[0]
  augment_key = np.random.SeedSequence(
      [seed, epoch, 1, process_index]).generate_state(2)
  return int(shuffle_seed), [int(k) for k in augment_key]


CROPS = ("center", "adm")


def _epoch_dataset(builder, shard, *, shard_size: int, steps: int,
                   batch_size: int, image_size: int, train: bool, seed: int,
                   epoch: int, process_index: int,
                   skip: int, crop: str = "center", shard_offset: int = 0) -> tf.data.Dataset:
  """One epoch's batches from `skip` examples in: `steps` full batches. Without `train`,
  each example also carries `index`, its position in the split (-1 for padding)."""
  shuffle_seed, augment_key = _epoch_seeds(seed, epoch, process_index)
  records = builder.as_dataset(
      split=shard, shuffle_files=train,
      read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed,
                                  try_autocache=False),
      decoders={"image": tfds.decode.SkipDecoding()})
  records = records.map(lambda x: {"image": x["image"], "label": x["label"]})
  if train:
    # An op seed without a TF global seed is a fixed stream; we never set one.
    records = records.shuffle(min(shard_size, SHUFFLE_BUFFER),
                              seed=shuffle_seed)
  num_real = min(shard_size, steps * batch_size)

  def decode(index, record):
    example = {"label": tf.cast(record["label"], tf.int32), "mask": tf.constant(True)}
    if crop == "adm" and not train:
      example["image"] = _adm_crop(record["image"], image_size)
    else:
      image = tf.io.decode_image(record["image"], channels=3, expand_animations=False)
      augment_seed = None
      if train:
        augment_seed = tf.random.experimental.stateless_fold_in(
            tf.constant(augment_key, tf.int64), index)
      example["image"] = preprocess_image(image, image_size, augment_seed)
    if not train:
      example["index"] = index + shard_offset
    return example

  # Skip before decoding so that resuming costs only reading the records.
  examples = records.take(num_real).enumerate().skip(skip).map(
      decode, num_parallel_calls=tf.data.AUTOTUNE)
  num_padding = steps * batch_size - num_real
  if num_padding:
    fill = {"image": tf.zeros([image_size, image_size, 3], tf.float32),
            "label": tf.constant(0, tf.int32), "mask": tf.constant(False)}
    if not train:
      fill["index"] = tf.constant(-1, tf.int64)
    padding = tf.data.Dataset.from_tensors(fill).repeat(num_padding)
    examples = examples.concatenate(padding.skip(max(0, skip - num_real)))
  return examples.batch(batch_size, drop_remainder=True).prefetch(
      tf.data.AUTOTUNE)


def _adm_crop(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
  """Encoded bytes -> float32 [image_size, image_size, 3] in [0, 1] by ADM's PIL crop."""
  pixels = tf.numpy_function(adm_crop.decode_and_crop, [encoded, image_size], tf.uint8,
                             stateful=False)
  pixels.set_shape([image_size, image_size, 3])
  return tf.cast(pixels, tf.float32) / 255.0


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


def _process_shards(builder, split: str, *, process_count: int,
                    drop_remainder: bool, batch_size: int):
  """Every process's slice of `split`, their sizes, and steps per epoch."""
  try:
    builder.info.splits[split]  # Parses slices such as 'train[:10%]' too.
  except (KeyError, ValueError) as e:
    raise ValueError(f"split={split!r} of {builder.name}: {e}") from e
  shards = [tfds.split_for_jax_process(split, process_index=i,
                                       process_count=process_count,
                                       drop_remainder=drop_remainder)
            for i in range(process_count)]
  sizes = [builder.info.splits[shard].num_examples for shard in shards]
  if drop_remainder:  # The shards then hold equally many examples.
    steps_per_epoch = min(sizes) // batch_size
  else:  # Every process pads up to the largest shard.
    steps_per_epoch = math.ceil(max(sizes) / batch_size)
  if steps_per_epoch == 0:
    raise ValueError(
        f"batch_size={batch_size} exceeds the {min(sizes)} examples per "
        f"process of {builder.name} {split}; lower it")
  return shards, sizes, steps_per_epoch


def _check_positive(**values) -> None:
  for name, value in values.items():
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f"{name}={value!r} must be a positive int")


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
) -> Iterator[dict[str, np.ndarray]]:
  """This process's batches of `split`: {'image', 'label', 'mask'} numpy dicts.

  Args:
    dataset_name: a TFDS name with 'image' and 'label' features, e.g.
      'fsq_photo_crops' (embedded, prepared on first use), 'imagenet2012', or
      'image_folder:<dir>' (class subfolders of JPEG/PNG files, image_folder.py).
    split: a TFDS split string; each process reads its own even slice of it.
    batch_size: examples per batch on this process.
    image_size: output height and width.
    train: shuffle every epoch and augment (random crop + flip), or not.
    seed: non-negative int; with `start_step` it fixes every batch.
    start_step: index of the first batch yielded (resume from a checkpoint).
    data_dir: TFDS data dir; default `files.data_dir()`.
    process_index, process_count: this process's slice; default from JAX.
    drop_remainder: True: an epoch is floor(examples per process / batch)
      full batches (the leftover examples differ from epoch to epoch when
      training). False: an epoch covers every example once and all processes
      yield the same number of batches, the last ones padded with zero images
      whose `mask` is False. Default: `train`.
    num_epochs: epochs counted from step 0 (None: forever when training,
      1 otherwise).
    crop: without `train`, "center" (crop, then TF bicubic) or "adm" (ADM's
      reference-batch preprocessing, data/adm_crop.py).

  Returns:
    An iterator of dicts: 'image' float32 [B, image_size, image_size, 3] in
    [0, 1], 'label' int32 [B], 'mask' bool [B]; without `train` also 'index'
    int64 [B], each example's position in `split` (-1 for padding).
  """
  _check_positive(batch_size=batch_size, image_size=image_size)
  if not isinstance(seed, int) or seed < 0:
    raise ValueError(f"seed={seed!r} must be a non-negative int")
  if not isinstance(start_step, int) or start_step < 0:
    raise ValueError(f"start_step={start_step!r} must be a non-negative int")
  if num_epochs is not None:
    _check_positive(num_epochs=num_epochs)
  if crop not in CROPS:
    raise ValueError(f"crop={crop!r} must be one of {CROPS}")
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

  builder = _prepared_builder(dataset_name, data_dir)
  shards, sizes, steps_per_epoch = _process_shards(
      builder, split, process_count=process_count,
      drop_remainder=drop_remainder, batch_size=batch_size)

  def make_epoch(epoch: int, skip: int) -> tf.data.Dataset:
    return _epoch_dataset(
        builder, shards[process_index], shard_size=sizes[process_index],
        steps=steps_per_epoch, batch_size=batch_size, image_size=image_size,
        train=train, seed=seed, epoch=epoch, process_index=process_index,
        skip=skip, crop=crop, shard_offset=sum(sizes[:process_index]))

  def batches():
    epoch, step_in_epoch = divmod(start_step, steps_per_epoch)
    while num_epochs is None or epoch < num_epochs:
      epoch_batches = make_epoch(epoch, step_in_epoch * batch_size)
      yield from epoch_batches.as_numpy_iterator()
      epoch, step_in_epoch = epoch + 1, 0

  return batches()


def train_batches(config, global_batch_size: int, start_step: int, keys=("image",)):
  """This process's augmented training batches of config.dataset from `start_step`, holding
  only `keys` (what the Stage I and the online Stage II train steps read)."""
  for batch in create_split(
      config.dataset.name, config.dataset.train_split,
      batch_size=parallel.per_process_batch_size(global_batch_size),
      image_size=config.dataset.image_size, train=True, seed=config.seed,
      start_step=start_step, data_dir=config.dataset.data_dir):
    yield {key: batch[key] for key in keys}
