"""An offline feature network for FID when the Inception weights are absent.

A small CNN classifier trained, with a fixed seed, on the labels of the dataset
being evaluated (by default the embedded `fsq_photo_crops`). Like Inception's
pool_3 / mixed_6 / logits it gives a global-average-pooled feature vector, a
flattened intermediate feature map (for sFID) and class logits (for an
Inception Score analogue). FIDs in its feature space are comparable only with
FIDs from the same network, which is why its name carries the architecture and
recipe version, the dataset and the image size.

Trained parameters are cached under $FSQ_CACHE_DIR (default
~/.cache/fsq_repro) as a weight file plus a JSON record of the recipe and the
validation accuracy; processes sharing the cache train at most once.
"""

import dataclasses
import json
import os
import re
import time
from typing import Any

from absl import logging
from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fsq_repro import files
from fsq_repro.data import pipeline
from fsq_repro.models import weights

# Bump the version whenever the architecture or the training recipe changes:
# it names the network, so FIDs from different networks are never mixed.
ARCHITECTURE = "offline_cnn_v2"  # v2: trained on the Grain pipeline's batches
WIDTHS = (32, 64, 128)  # Channels of the three conv blocks; pool is 128-d.
# sFID's features: block 2's output average-pooled over 4x4 windows, all 64
# channels (2x2x64 = 256-d at 32 px). Keeping a few channels at full
# resolution, as ADM does with Inception, gave FIDs that swung widely between
# training seeds of a net this small.
SPATIAL_POOL = 4
DEFAULT_STEPS = 400
BATCH_SIZE = 64
LEARNING_RATE = 2e-3
# Label smoothing keeps the train images' features from drifting away from
# unseen images' (an over-confident classifier memorises its training set):
# with 0.1 the train-vs-validation FID drops ~8x and validation accuracy rises
# from ~86% to ~93-95%.
LABEL_SMOOTHING = 0.1
EVAL_BATCH_SIZE = 256


class OfflineClassifier(nn.Module):
  """Three blocks of a stride-2 and a stride-1 3x3 conv, each with a ReLU.

  Input: float images in [0, 1], NHWC, any size (32 px: 16, 8, 4 px blocks).
  Returns {'pool': (B, 128) spatial mean of block 3, 'spatial': block 2's
  output average-pooled over SPATIAL_POOL^2 windows, flattened in H, W, C
  order ((B, 256) at 32 px), 'logits': (B, num_classes)}.
  """

  num_classes: int

  @nn.compact
  def __call__(self, images):
    x = (jnp.asarray(images, jnp.float32) - 0.5) * 4.0  # About unit variance.
    for block, width in enumerate(WIDTHS):
      if block == 2:
        spatial = nn.avg_pool(x, (SPATIAL_POOL,) * 2, strides=(SPATIAL_POOL,) * 2)
        spatial = spatial.reshape(x.shape[0], -1)
      x = nn.relu(nn.Conv(width, (3, 3), strides=2, name=f"block{block + 1}_conv1")(x))
      x = nn.relu(nn.Conv(width, (3, 3), name=f"block{block + 1}_conv2")(x))
    pool = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, name="logits")(pool)
    return {"pool": pool, "spatial": spatial, "logits": logits}


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Everything that determines the trained parameters."""

  dataset_name: str = pipeline.EMBEDDED_DATASET
  image_size: int = 32
  steps: int = DEFAULT_STEPS
  seed: int = 0

  @property
  def network_name(self) -> str:
    """e.g. 'offline_cnn_v2_fsq_photo_crops_32px'; non-default steps/seed appended."""
    dataset = re.sub(r"[^A-Za-z0-9]+", "_", self.dataset_name).strip("_")
    name = f"{ARCHITECTURE}_{dataset}_{self.image_size}px"
    if (self.steps, self.seed) != (DEFAULT_STEPS, 0):
      name += f"_steps{self.steps}_seed{self.seed}"
    return name

  def check(self) -> None:
    for field in ("image_size", "steps"):
      value = getattr(self, field)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"{field}={value!r} must be a positive int")
    if not isinstance(self.seed, int) or self.seed < 0:
      raise ValueError(f"seed={self.seed!r} must be a non-negative int")


@dataclasses.dataclass(frozen=True)
class TrainedClassifier:
  """A trained OfflineClassifier with its provenance."""

  name: str
  params: Any
  num_classes: int
  validation_accuracy: float
  record: dict  # The JSON record next to the weight file.
  path: str  # The weight file.
  trained_now: bool  # False when the parameters came from the cache.

  @property
  def source(self) -> str:
    r = self.record
    return (f"trained on {r['dataset_name']} train labels "
            f"({r['steps']} Adam steps, seed {r['seed']}, {r['image_size']} px),"
            f" validation accuracy {self.validation_accuracy:.4f} on "
            f"{r['validation_examples']} images; weights {self.path}")


def train_offline_classifier(*, dataset_name: str = pipeline.EMBEDDED_DATASET,
                             image_size: int = 32, steps: int = DEFAULT_STEPS,
                             seed: int = 0, data_dir: str | None = None):
  """Trains OfflineClassifier on the train split's labels; returns its params.

  Adam with a cosine-decayed learning rate, label-smoothed cross-entropy,
  batches of BATCH_SIZE from the pipeline's train=True stream (shuffled,
  random short-side crops and flips). Every process reads the whole split, so
  every process trains the same network.
  """
  Recipe(dataset_name, image_size, steps, seed).check()
  num_classes = pipeline.num_classes(dataset_name, data_dir=data_dir)
  model = OfflineClassifier(num_classes)
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  params = model.init(jax.random.key(seed), images)["params"]
  optimizer = optax.adam(optax.cosine_decay_schedule(LEARNING_RATE, steps))

  @jax.jit
  def train_step(params, opt_state, images, labels):
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), LABEL_SMOOTHING)

    def loss_fn(params):
      logits = model.apply({"params": params}, images)["logits"]
      return optax.softmax_cross_entropy(logits, targets).mean()

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = optimizer.init(params)
  batches = pipeline.create_split(
      dataset_name, "train", batch_size=BATCH_SIZE, image_size=image_size,
      train=True, seed=seed, data_dir=data_dir, process_index=0,
      process_count=1)
  for _, batch in zip(range(steps), batches):
    params, opt_state = train_step(params, opt_state, batch["image"], batch["label"])
  return jax.tree.map(np.asarray, params)


def classification_accuracy(params, *, dataset_name: str = pipeline.EMBEDDED_DATASET,
                            split: str = "validation", image_size: int = 32,
                            data_dir: str | None = None) -> tuple[float, int]:
  """(top-1 accuracy, number of images) on `split`, center crops."""
  model = OfflineClassifier(pipeline.num_classes(dataset_name, data_dir=data_dir))
  predict = jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, x)["logits"], -1))
  correct = total = 0
  for batch in pipeline.create_split(
      dataset_name, split, batch_size=EVAL_BATCH_SIZE, image_size=image_size,
      train=False, data_dir=data_dir, process_index=0, process_count=1):
    hits = np.asarray(predict(params, batch["image"])) == batch["label"]
    correct += int(np.sum(hits & batch["mask"]))
    total += int(np.sum(batch["mask"]))
  return correct / total, total


def load_or_train(cache_dir: str | None = None, *,
                  dataset_name: str = pipeline.EMBEDDED_DATASET,
                  image_size: int = 32, steps: int = DEFAULT_STEPS, seed: int = 0,
                  data_dir: str | None = None) -> TrainedClassifier:
  """The cached classifier of this recipe; trains and caches it on first use.

  Cache entry: <cache_dir>/offline_features/<name>.msgpack (weights) and
  <name>.json (recipe, validation accuracy). An entry that is unreadable or
  does not match the recipe is logged and retrained. A file lock makes
  concurrent processes train once; files are written whole, then renamed.
  """
  recipe = Recipe(dataset_name, image_size, steps, seed)
  recipe.check()
  num_classes = pipeline.num_classes(dataset_name, data_dir=data_dir)
  directory = os.path.join(cache_dir or files.cache_dir(), "offline_features")
  path = os.path.join(directory, recipe.network_name + ".msgpack")
  with files.file_lock(path + ".lock"):  # one process trains, the others wait and load
    cached = _load_cached(path, recipe, num_classes)
    if cached is not None:
      return cached
    return _train_and_save(path, recipe, num_classes, data_dir)


def _expected_record(recipe: Recipe, num_classes: int) -> dict:
  return {"network": recipe.network_name, "architecture": ARCHITECTURE,
          **dataclasses.asdict(recipe), "num_classes": num_classes,
          "batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE,
          "label_smoothing": LABEL_SMOOTHING}


def _record_path(path: str) -> str:
  return os.path.splitext(path)[0] + ".json"


def _load_cached(path: str, recipe: Recipe, num_classes: int):
  """The cache entry at `path`, or None (logging why) if absent or unusable."""
  if not os.path.exists(path):
    return None
  try:
    with open(_record_path(path)) as f:
      record = json.load(f)
    expected = _expected_record(recipe, num_classes)
    different = sorted(k for k, v in expected.items() if record.get(k) != v)
    if different:
      raise ValueError(f"its record differs in {', '.join(different)}")
    params = weights.load_params(path, network=recipe.network_name)
    _check_param_shapes(params, recipe, num_classes)
    accuracy = float(record["validation_accuracy"])
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    logging.warning("retraining the offline feature network: cache entry %s is "
                    "unusable (%s)", path, e)
    return None
  return TrainedClassifier(recipe.network_name, params, num_classes, accuracy,
                           record, path, trained_now=False)


def _check_param_shapes(params, recipe: Recipe, num_classes: int) -> None:
  images = jax.ShapeDtypeStruct((1, recipe.image_size, recipe.image_size, 3), jnp.float32)
  variables = jax.eval_shape(OfflineClassifier(num_classes).init, jax.random.key(0), images)
  expected, found = ({k: v.shape for k, v in traverse_util.flatten_dict(tree, sep="/").items()}
                     for tree in (variables["params"], params))
  wrong = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
  if wrong:
    raise ValueError(f"its parameter shapes differ from the model's at {', '.join(wrong)}")


def _train_and_save(path: str, recipe: Recipe, num_classes: int, data_dir) -> TrainedClassifier:
  logging.info("training the offline feature network %s (%d steps); it is "
               "cached at %s", recipe.network_name, recipe.steps, path)
  start = time.time()
  params = train_offline_classifier(**dataclasses.asdict(recipe), data_dir=data_dir)
  train_seconds = time.time() - start
  accuracy, count = classification_accuracy(
      params, dataset_name=recipe.dataset_name, image_size=recipe.image_size,
      data_dir=data_dir)
  record = {**_expected_record(recipe, num_classes), "validation_accuracy": accuracy,
            "validation_examples": count, "train_seconds": round(train_seconds, 1)}
  weights.save_params(path, params, network=recipe.network_name, source=(
      f"fsq_repro {ARCHITECTURE} trained on {recipe.dataset_name} train labels, "
      f"validation accuracy {accuracy:.4f}"))
  # The record goes last: a crash before it leaves an entry that is retrained.
  with files.atomic_write(_record_path(path)) as f:
    json.dump(record, f, indent=2)
  classifier = TrainedClassifier(recipe.network_name, params, num_classes, accuracy,
                                 record, path, trained_now=True)
  logging.info("%s", classifier.source)
  return classifier
