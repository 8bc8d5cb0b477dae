"""The feature network behind FID, sFID, IS and precision/recall, and streaming stats.

Two networks share one interface: the FID Inception-v3, whose converted weights
every dataset but the embedded one requires, and the offline classifier trained
on the dataset's labels (fsq_repro.eval.offline_network), used on the embedded
dataset when the weights are absent or wherever it is asked for by name. Every
result records the network's `name` (results.json's `fid_features`): FIDs from
different networks are not comparable.
"""

import dataclasses
import functools
import os
from typing import Callable, Iterable, Iterator

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from fsq_repro.data import pipeline
from fsq_repro.eval import fid
from fsq_repro.models import inception
from fsq_repro.eval import offline_network as offline_lib
from fsq_repro import parallel

KINDS = ("auto", "inception", "offline")


@dataclasses.dataclass(frozen=True)
class FeatureNetwork:
  """A named, jitted feature function.

  features(images float [B, H, W, 3] in [0, 1]) -> {'pool': [B, D],
  'spatial': [B, S], 'logits': [B, K]} (float32). Images are first rounded to
  uint8 levels, as ADM evaluates saved uint8 images. Works on sharded global
  arrays like on local ones.
  """

  name: str  # "inception_v3_2015" or an offline network's name.
  source: str  # Where the weights came from, for logs and results.
  features: Callable[[jax.Array], dict[str, jax.Array]]


def to_uint8_levels(images: jax.Array) -> jax.Array:
  """Float [0, 1] images -> float32 round(clip(x, 0, 1) * 255), values 0..255."""
  return jnp.round(jnp.clip(jnp.asarray(images, jnp.float32), 0.0, 1.0) * 255.0)


def _bind_params(apply_fn, params):
  """jit(apply_fn)(params, images) as a function of the images alone.

  The parameters are an argument, not constants baked into the program, and
  uncommitted, so that jit copies them to wherever sharded images live.
  """
  return functools.partial(jax.jit(apply_fn), jax.device_put(params))


def inception_network(weights_path: str) -> FeatureNetwork:
  """The FID Inception-v3 with the converted weights at `weights_path`."""
  model = inception.InceptionV3()

  def features(params, images):
    outputs = model.apply({"params": params}, to_uint8_levels(images))
    return {"pool": outputs["pool_3"], "spatial": outputs["spatial"],
            "logits": outputs["logits"]}

  params = inception.load_inception_params(weights_path)
  return FeatureNetwork(inception.NETWORK_NAME, f"weights {weights_path}",
                        _bind_params(features, params))


def offline_network(classifier: offline_lib.TrainedClassifier) -> FeatureNetwork:
  """The trained offline classifier as a feature network."""
  model = offline_lib.OfflineClassifier(classifier.num_classes)

  def features(params, images):
    return model.apply({"params": params}, to_uint8_levels(images) / 255.0)

  return FeatureNetwork(classifier.name, classifier.source,
                        _bind_params(features, classifier.params))


def check_available(kind: str, inception_weights: str | None, dataset_name: str) -> None:
  """Raises ValueError (one line: the path, the conversion command) unless `kind` can be
  built for `dataset_name`: Inception needs its weights, and "auto" falls back to the
  offline classifier on the embedded dataset only."""
  if kind not in KINDS:
    raise ValueError(f"eval.feature_network={kind!r} is unknown; use one of {KINDS}")
  if kind == "offline":
    return
  if inception_weights and not os.path.isfile(inception_weights):
    where = f"eval.inception_weights={inception_weights!r} (not a file)"
  elif inception.find_inception_weights(inception_weights):
    return
  elif kind == "auto" and dataset_name == pipeline.EMBEDDED_DATASET:
    return
  else:
    where = f"${inception.WEIGHTS_ENV_VAR} (unset) or eval.inception_weights"
  raise ValueError(
      f"eval.feature_network={kind!r} on {dataset_name} needs the FID Inception weights at "
      f"{where}: convert them with `python scripts/convert_weights.py inception "
      "--torch=pt_inception-2015-12-05-6726825d.pth --out=inception_v3_2015.msgpack` and "
      "pass --config.eval.inception_weights=inception_v3_2015.msgpack, or set "
      "eval.feature_network=offline (FIDs then not comparable with the paper's)")


def get_feature_network(kind: str = "auto", *, inception_weights: str | None = None,
                        dataset_name: str = pipeline.EMBEDDED_DATASET,
                        image_size: int = 32, data_dir: str | None = None,
                        cache_dir: str | None = None,
                        offline_steps: int = offline_lib.DEFAULT_STEPS
                        ) -> FeatureNetwork:
  """The feature network of `kind`, logged in one line.

  Args:
    kind: "inception" (needs the converted weights), "offline" (the cached
      classifier of `dataset_name` at `image_size`, trained on first use) or
      "auto" (Inception when its weights are found, else offline on the
      embedded dataset; see `check_available`).
    inception_weights: the converted Inception weight file; default
      $FSQ_INCEPTION_WEIGHTS.
    dataset_name, image_size, data_dir: the offline network's training data.
    cache_dir: the offline network's cache; default $FSQ_CACHE_DIR or
      ~/.cache/fsq_repro.
    offline_steps: the offline network's training steps (a different count
      is a different network, and is named so).
  """
  check_available(kind, inception_weights, dataset_name)
  weights_path = None
  if kind != "offline":
    weights_path = inception.find_inception_weights(inception_weights)
  if weights_path is not None:
    network = inception_network(weights_path)
  else:
    network = offline_network(offline_lib.load_or_train(
        cache_dir, dataset_name=dataset_name, image_size=image_size,
        steps=offline_steps, data_dir=data_dir))
  logging.info("FID features: %s (%s)", network.name, network.source)
  return network


def iter_features(feature_network: FeatureNetwork,
                  batches: Iterable[dict]) -> Iterator[dict[str, np.ndarray]]:
  """Per batch, the features of the rows whose 'mask' is True (all if absent).

  Batches hold 'image' (and 'mask') as numpy arrays in one process, or as
  global jax.Arrays built from every process's data; then every process gets
  every row.
  """
  for batch in batches:
    outputs = jax.tree.map(parallel.host_array, feature_network.features(batch["image"]))
    if "mask" in batch:
      keep = parallel.host_array(batch["mask"]).astype(bool)
      outputs = {key: value[keep] for key, value in outputs.items()}
    yield outputs


def compute_statistics(
    feature_network: FeatureNetwork, batches: Iterable[dict]
) -> tuple[fid.FeatureStats, fid.FeatureStats, np.ndarray]:
  """Streams `batches` through the network.

  Returns (FeatureStats of 'pool', FeatureStats of 'spatial', logits float32
  [N, K]) over the unmasked rows, in batch order.
  """
  pool_stats = spatial_stats = None
  logits = []
  for outputs in iter_features(feature_network, batches):
    if pool_stats is None:
      pool_stats = fid.FeatureStats.empty(outputs["pool"].shape[1])
      spatial_stats = fid.FeatureStats.empty(outputs["spatial"].shape[1])
    pool_stats.update(outputs["pool"])
    spatial_stats.update(outputs["spatial"])
    logits.append(outputs["logits"])
  if pool_stats is None:
    raise ValueError("batches is empty; pass at least one batch of images")
  return pool_stats, spatial_stats, np.concatenate(logits)
