"""The offline feature network (training, cache) and the feature-network interface.

The interface and the cache are tested with a randomly initialised classifier (fast); one
short training run (TEST_STEPS instead of the recipe's DEFAULT_STEPS) in a temporary cache
serves the slow tests of training and of FID's response to degradation.
"""

import json
import logging
import os
import re
import subprocess
import sys

import flax
import jax
import numpy as np
import pytest
from scipy import ndimage

from fsq_repro import files
from fsq_repro.data import pipeline
from fsq_repro.eval import features
from fsq_repro.eval import fid
from fsq_repro.models import inception
from fsq_repro.eval import offline_network
from fsq_repro.models import weights

TEST_STEPS = 100  # ~73% validation accuracy; the 400-step recipe reaches ~94%.
DATASET = pipeline.EMBEDDED_DATASET


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  pipeline.num_examples(DATASET, "train", data_dir=path)  # Prepares it.
  return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def classifier(data_dir, cache_dir):
  """The offline network trained for TEST_STEPS steps (slow tests only)."""
  return offline_network.load_or_train(cache_dir, steps=TEST_STEPS, data_dir=data_dir)


@pytest.fixture(scope="module")
def network(classifier):
  return features.offline_network(classifier)


@pytest.fixture(scope="module")
def untrained():
  """A randomly initialised OfflineClassifier: for tests of the interface, not of training."""
  model = offline_network.OfflineClassifier(8)
  params = jax.jit(model.init)(jax.random.key(0, impl="rbg"),
                              np.zeros((1, 32, 32, 3), np.float32))["params"]
  record = dict(dataset_name=DATASET, steps=0, seed=0, image_size=32, validation_examples=0)
  return offline_network.TrainedClassifier("untrained_cnn", jax.device_get(params), 8, 0.0,
                                           record, "", trained_now=False)


def _images_and_labels(data_dir, split):
  batches = list(pipeline.create_split(DATASET, split, batch_size=256, image_size=32,
                                       train=False, data_dir=data_dir, process_index=0,
                                       process_count=1))
  return tuple(np.concatenate([batch[key][batch["mask"]] for batch in batches])
               for key in ("image", "label"))


def _batches(images, batch_size=256):
  return [{"image": images[i:i + batch_size]} for i in range(0, len(images), batch_size)]


# ---------------------------------------------------------------- training and the cache


@pytest.mark.slow  # trains the network
def test_short_training_beats_chance_and_records_its_accuracy(classifier, data_dir):
  assert classifier.trained_now
  assert classifier.name == f"offline_cnn_v2_fsq_photo_crops_32px_steps{TEST_STEPS}_seed0"
  assert classifier.validation_accuracy > 0.6  # Chance is 1/8.
  # Counted here from the predictions on the validation crops, not by the recorder.
  images, labels = _images_and_labels(data_dir, "validation")
  logits = offline_network.OfflineClassifier(8).apply({"params": classifier.params},
                                                     images)["logits"]
  accuracy = float(np.mean(np.argmax(np.asarray(logits), axis=-1) == labels))
  assert len(labels) == classifier.record["validation_examples"] == 1024
  assert accuracy == pytest.approx(classifier.validation_accuracy, abs=1e-6)
  with open(os.path.splitext(classifier.path)[0] + ".json") as f:
    record = json.load(f)
  assert record["validation_accuracy"] == pytest.approx(accuracy)
  assert record["steps"] == TEST_STEPS and record["network"] == classifier.name
  assert f"validation accuracy {accuracy:.4f}" in classifier.source


def test_classifier_outputs_for_32px_and_other_sizes(untrained):
  model = offline_network.OfflineClassifier(8)
  for size, spatial in ((32, 2 * 2 * 64), (48, 3 * 3 * 64)):
    outputs = model.apply({"params": untrained.params}, np.zeros((2, size, size, 3), np.float32))
    assert {k: v.shape for k, v in outputs.items()} == {
        "pool": (2, 128), "spatial": (2, spatial), "logits": (2, 8)}


@pytest.mark.slow  # trains the network
def test_second_call_reuses_the_cache(classifier, cache_dir, data_dir):
  modified = os.path.getmtime(classifier.path)
  again = offline_network.load_or_train(cache_dir, steps=TEST_STEPS, data_dir=data_dir)
  assert not again.trained_now
  assert os.path.getmtime(classifier.path) == modified
  assert again.validation_accuracy == classifier.validation_accuracy
  assert jax.tree.structure(again.params) == jax.tree.structure(classifier.params)
  for a, b in zip(jax.tree.leaves(classifier.params), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(a, b)


@pytest.fixture
def trainings(untrained, monkeypatch):
  """Replaces training by a recorder: for tests of the cache, not of the training."""
  calls = []

  def fake_training(**kwargs):
    calls.append(kwargs)
    return untrained.params

  monkeypatch.setattr(offline_network, "train_offline_classifier", fake_training)
  monkeypatch.setattr(offline_network, "classification_accuracy", lambda *a, **k: (0.5, 1024))
  return calls


def test_cache_dir_defaults_to_the_environment(tmp_path, monkeypatch, data_dir, trainings):
  monkeypatch.setenv(files.CACHE_ENV_VAR, str(tmp_path))
  trained = offline_network.load_or_train(steps=2, data_dir=data_dir)
  assert trained.path.startswith(str(tmp_path)) and os.path.isfile(trained.path)
  assert trainings == [dict(dataset_name=DATASET, image_size=32, steps=2, seed=0,
                            data_dir=data_dir)]


def test_unusable_cache_entries_are_retrained(tmp_path, data_dir, trainings, caplog):
  caplog.set_level(logging.WARNING)
  kwargs = dict(steps=2, data_dir=data_dir)
  first = offline_network.load_or_train(str(tmp_path), **kwargs)
  record_path = os.path.splitext(first.path)[0] + ".json"
  assert first.trained_now and len(trainings) == 1

  def corrupt_weights():
    with open(first.path, "wb") as f:
      f.write(b"not a weight file")

  def other_network():
    weights.save_params(first.path, first.params, network="some_other_net", source="test")

  def other_shapes():
    params = dict(first.params, logits={"kernel": np.zeros((128, 3)), "bias": np.zeros(3)})
    weights.save_params(first.path, params, network=first.name, source="test")

  def other_recipe():
    with open(record_path) as f:
      record = json.load(f)
    with open(record_path, "w") as f:
      json.dump({**record, "learning_rate": 1.0}, f)

  def missing_record():
    os.remove(record_path)

  for spoil, reason in ((corrupt_weights, "Unpack failed|extra data"),
                        (other_network, "some_other_net"),
                        (other_shapes, "parameter shapes"),
                        (other_recipe, "differs in learning_rate"),
                        (missing_record, "No such file")):
    spoil()
    caplog.clear()
    count = len(trainings)
    again = offline_network.load_or_train(str(tmp_path), **kwargs)
    assert again.trained_now and len(trainings) == count + 1, spoil.__name__
    assert any("unusable" in r.message and re.search(reason, r.message)
               for r in caplog.records), (spoil.__name__, caplog.text)
    reloaded = offline_network.load_or_train(str(tmp_path), **kwargs)
    assert not reloaded.trained_now and len(trainings) == count + 1
    assert reloaded.validation_accuracy == 0.5


def test_bad_recipe_is_rejected_in_one_line(tmp_path):
  with pytest.raises(ValueError, match="steps=0 must be a positive int"):
    offline_network.load_or_train(str(tmp_path), steps=0)
  with pytest.raises(ValueError, match="seed=-1"):
    offline_network.train_offline_classifier(seed=-1)


# ----------------------------------------------------------------- choosing the network


def test_auto_falls_back_to_the_offline_network(monkeypatch, tmp_path, data_dir, trainings,
                                                caplog):
  monkeypatch.delenv(inception.WEIGHTS_ENV_VAR, raising=False)
  caplog.set_level(logging.INFO, logger="absl")
  network = features.get_feature_network("auto", cache_dir=str(tmp_path), data_dir=data_dir,
                                         offline_steps=TEST_STEPS)
  name = f"offline_cnn_v2_fsq_photo_crops_32px_steps{TEST_STEPS}_seed0"
  assert network.name == name and len(trainings) == 1
  assert network.name.startswith(offline_network.ARCHITECTURE)
  lines = [r.message for r in caplog.records if r.message.startswith("FID features:")]
  assert len(lines) == 1 and name in lines[0] and "\n" not in lines[0]


def test_inception_without_weights_says_how_to_get_them(monkeypatch):
  monkeypatch.delenv(inception.WEIGHTS_ENV_VAR, raising=False)
  with pytest.raises(ValueError,
                     match=r"FSQ_INCEPTION_WEIGHTS.*scripts/convert_weights\.py inception"):
    features.get_feature_network("inception")


@pytest.mark.parametrize("kind", ["auto", "inception"])
def test_datasets_but_the_embedded_one_require_the_inception_weights(monkeypatch, kind):
  """No silent offline FIDs on ImageNet: "auto" falls back only on the embedded dataset."""
  monkeypatch.delenv(inception.WEIGHTS_ENV_VAR, raising=False)
  with pytest.raises(ValueError, match=f"eval.feature_network='{kind}' on imagenet2012 needs "
                     r"the FID Inception weights at \$FSQ_INCEPTION_WEIGHTS \(unset\).*"
                     r"convert_weights\.py inception.*eval\.feature_network=offline"):
    features.check_available(kind, None, "imagenet2012")
  with pytest.raises(ValueError, match="eval.inception_weights='/no/such.msgpack'"):
    features.check_available(kind, "/no/such.msgpack", "imagenet2012")
  features.check_available("offline", None, "imagenet2012")  # asked for by name
  if kind == "auto":
    features.check_available(kind, None, "fsq_photo_crops")  # the embedded dataset


def test_unknown_kind_is_rejected():
  with pytest.raises(ValueError, match="eval.feature_network='vgg' is unknown"):
    features.get_feature_network("vgg")


def test_auto_prefers_inception_when_its_weights_exist(tmp_path, monkeypatch):
  params = flax.traverse_util.unflatten_dict(
      {tuple(path.split("/")): np.zeros(shape, np.float32)
       for path, shape in inception.expected_param_shapes().items()})
  weights_path = str(tmp_path / "inception.msgpack")
  inception.save_inception_params(weights_path, params, source="zeros for a test")
  monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, weights_path)
  network = features.get_feature_network("auto", cache_dir=str(tmp_path / "unused"))
  assert network.name == inception.NETWORK_NAME
  assert weights_path in network.source
  assert not os.path.exists(tmp_path / "unused")  # The offline network was not trained.


# --------------------------------------------------------------------- features and FID


def test_images_are_rounded_to_uint8_levels():
  images = np.array([-0.2, 0.0, 0.3 / 255, 0.7 / 255, 0.5, 1.0, 1.3], np.float32)
  np.testing.assert_array_equal(features.to_uint8_levels(images), [0, 0, 0, 1, 128, 255, 255])


def test_compute_statistics_drops_masked_rows(untrained, data_dir):
  network = features.offline_network(untrained)
  images = _images_and_labels(data_dir, "validation")[0][:300]
  rng = np.random.default_rng(0)
  masks = rng.random(len(images)) < 0.7
  # Masked rows hold noise, whose features differ from every real image's.
  noisy = np.where(masks[:, None, None, None], images, rng.random(images.shape, np.float32))
  batches = [{"image": noisy[i:i + 128], "mask": masks[i:i + 128]} for i in range(0, 300, 128)]
  pool, spatial, logits = features.compute_statistics(network, batches)

  kept = {k: np.asarray(v, np.float64) for k, v in network.features(images[masks]).items()}
  assert pool.count == spatial.count == masks.sum() == len(logits)
  for stats, name in ((pool, "pool"), (spatial, "spatial")):
    mean, cov = stats.mean_and_covariance()
    np.testing.assert_allclose(mean, kept[name].mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(cov, np.cov(kept[name], rowvar=False), rtol=1e-3, atol=1e-6)
  np.testing.assert_allclose(logits, kept["logits"], rtol=1e-4, atol=1e-5)


# Dead ReLU units make some covariances singular; sqrtm warns and is still exact.
@pytest.mark.slow  # trains the network
@pytest.mark.filterwarnings("ignore:Matrix is singular")
def test_fid_reacts_to_degradation(network, data_dir):
  train, _ = _images_and_labels(data_dir, "train[:25%]")  # 1024 images, all classes.
  validation, labels = _images_and_labels(data_dir, "validation")
  rng = np.random.default_rng(0)
  blurred = ndimage.gaussian_filter(validation, (0, 1, 1, 0))
  heavy = np.clip(ndimage.gaussian_filter(validation, (0, 2, 2, 0))
                  + 0.2 * rng.standard_normal(validation.shape), 0, 1).astype(np.float32)
  stats = {name: features.compute_statistics(network, _batches(images))
           for name, images in (("train", train), ("validation", validation),
                                ("blurred", blurred), ("heavy", heavy))}

  def distance(a, b, which):
    return fid.frechet_distance(*stats[a][which].mean_and_covariance(),
                                *stats[b][which].mean_and_covariance())

  for which in (0, 1):  # pool, spatial
    assert distance("validation", "validation", which) == pytest.approx(0, abs=1e-6)
    assert distance("validation", "blurred", which) < distance("validation", "heavy", which)
    assert distance("train", "validation", which) < 0.5 * distance("validation", "heavy", which)
  # The IS analogue: 8 balanced classes score far above a single class (~2.5 vs ~1.3).
  logits = stats["validation"][2]
  all_classes, single_class = (fid.inception_score(x) for x in (logits, logits[labels == 0]))
  assert 1 <= 1.5 * single_class < all_classes <= 8


SHARDED_SCRIPT = """
import jax
jax.config.update("jax_num_cpu_devices", 4)
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from fsq_repro.eval import features
from fsq_repro.eval import offline_network

model = offline_network.OfflineClassifier(8)
params = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))["params"]
record = dict(dataset_name="none", steps=0, seed=0, image_size=32, validation_examples=0)
classifier = offline_network.TrainedClassifier("untrained_cnn", params, 8, 0.0, record, "",
                                                trained_now=False)
network = features.offline_network(classifier)
mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
sharding = NamedSharding(mesh, PartitionSpec("data"))
images = np.random.default_rng(0).random((16, 32, 32, 3), np.float32)
mask = np.arange(16) % 3 != 0
local = features.compute_statistics(network, [{"image": images, "mask": mask}])
sharded = features.compute_statistics(network, [{"image": jax.device_put(images, sharding),
                                                 "mask": jax.device_put(mask, sharding)}])
assert local[0].count == sharded[0].count == mask.sum()
for a, b in zip(local[:2], sharded[:2]):
  np.testing.assert_allclose(a.outer_sum, b.outer_sum, rtol=1e-5, atol=1e-6)
np.testing.assert_allclose(local[2], sharded[2], rtol=1e-5, atol=1e-6)
print("OK")
"""


@pytest.mark.slow  # A fresh process with 4 CPU devices: ~10 s of imports.
def test_sharded_batches_give_the_same_statistics():
  repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
  result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], env=env, cwd=repo_root,
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
