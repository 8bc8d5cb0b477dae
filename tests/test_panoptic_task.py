"""UViM's panoptic task: COCO records as two label maps, the canonical instance order, the loss,
predictions by summed semantic logits, the two-channel converter and PQ against full-size
ground truth, on hand-worked cases; the pipeline on coco/2017_panoptic mocked by
tfds.testing.mock_data (tfds_mock.py)."""

import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest

from configs import uvim_panoptic
from fsq_repro import tasks, uvim_config
from fsq_repro.data import coco_panoptic, images, pipeline
from fsq_repro.eval import panoptic
from fsq_repro.tasks import panoptic as panoptic_task
from scripts import sweep
import tfds_mock

BY_LABEL = coco_panoptic.categories([f"c{i}" for i in range(133)])


def _record(ids, objects, image_id=7):
  buffer = io.BytesIO()
  PIL.Image.fromarray(panoptic.id_to_rgb(ids)).save(buffer, "PNG")
  return {"panoptic_image": buffer.getvalue(), "image/id": np.int64(image_id),
          "panoptic_objects": {key: np.asarray(value) for key, value in objects.items()}}


def test_label_maps_are_label_plus_one_and_the_segments_1_based_index():
  ids = np.array([[0, 300, 300], [70001, 70001, 0]])
  record = _record(ids, {"id": [70001, 300], "label": [4, 90], "is_crowd": [False, False],
                         "area": [2, 2]})
  maps = coco_panoptic.label_maps(record)
  np.testing.assert_array_equal(maps["semantics"], [[0, 91, 91], [5, 5, 0]])
  np.testing.assert_array_equal(maps["instances"], [[0, 2, 2], [1, 1, 0]])
  empty = coco_panoptic.label_maps(_record(ids, {"id": [], "label": [], "is_crowd": [],
                                                  "area": []}))
  assert not empty["semantics"].any() and not empty["instances"].any()  # all void
  gt_ids, segments = coco_panoptic.ground_truth(record, BY_LABEL)
  np.testing.assert_array_equal(gt_ids, ids)
  assert segments == [{"id": 70001, "category_id": 5, "iscrowd": 0, "area": 2},
                      {"id": 300, "category_id": 91, "iscrowd": 0, "area": 2}]


def test_canonical_instances_are_numbered_by_centroid_y_major():
  instances = np.zeros((4, 4), np.int32)
  instances[0, 3] = 7  # centroid (0, 3): key 3 + 4 * 0 = 3
  instances[3, 0] = 3  # (3, 0): 0 + 4 * 3 = 12
  instances[0, 0:2] = 5  # (0, 0.5): 0.5
  np.testing.assert_array_equal(coco_panoptic.canonical_instances(instances),
                                np.where(instances == 5, 1, 0) + np.where(instances == 7, 2, 0)
                                + np.where(instances == 3, 3, 0))


def test_categories_default_to_tfds_order_and_read_cocos_file(tmp_path):
  assert BY_LABEL[1] == {"id": 1, "name": "c0", "isthing": 1}
  assert BY_LABEL[80]["isthing"] == 1 and BY_LABEL[81]["isthing"] == 0 and len(BY_LABEL) == 133
  listed = [{"id": 1 + 2 * i, "name": f"n{i}", "isthing": int(i < 2)} for i in range(3)]
  path = tmp_path / "panoptic_coco_categories.json"
  path.write_text(json.dumps(listed))
  assert coco_panoptic.categories(["a", "b", "c"], str(path)) == {
      1: {"id": 1, "name": "n0", "isthing": 1}, 2: {"id": 3, "name": "n1", "isthing": 1},
      3: {"id": 5, "name": "n2", "isthing": 0}}
  with pytest.raises(ValueError, match="lists 3 categories, the dataset has 133"):
    coco_panoptic.categories([f"c{i}" for i in range(133)], str(path))


def test_loss_is_the_two_pixel_mean_cross_entropies():
  batch = {"image": jnp.zeros((1, 2, 2, 3)), "semantics": jnp.array([[[0, 3], [3, 133]]]),
           "instances": jnp.array([[[0, 1], [1, 120]]])}  # instance 120: past the 100 slots
  example = panoptic_task.prepare(batch)
  assert example["labels"]["semantics"].shape == (1, 2, 2, 134)
  assert float(example["labels"]["instances"][0, 1, 1].sum()) == 0.0  # an all-zero one-hot
  uniform = {"semantics": jnp.zeros((1, 2, 2, 134)), "instances": jnp.zeros((1, 2, 2, 100))}
  value, metrics = panoptic_task.loss(uniform, example["labels"])
  np.testing.assert_allclose(metrics["semantics_cross_entropy"], np.log(134), rtol=1e-6)
  np.testing.assert_allclose(metrics["instances_cross_entropy"], 0.75 * np.log(100), rtol=1e-6)
  np.testing.assert_allclose(value, np.log(134) + 0.75 * np.log(100), rtol=1e-6)


def test_each_instance_takes_the_argmax_of_its_summed_semantic_logits():
  semantics = np.zeros((1, 1, 4, 3), np.float32)
  semantics[0, 0, 0] = [0, 10, 0]  # per-pixel argmax 1, 2, 2 within instance 1 ...
  semantics[0, 0, 1] = [0, 0, 4]
  semantics[0, 0, 2] = [0, 0, 4]  # ... summed [0, 10, 8]: all of instance 1 is label 1
  semantics[0, 0, 3] = [0, 0, 1]  # instance 0 alone: label 2
  instances = jax.nn.one_hot(jnp.array([[[1, 1, 1, 0]]]), 3) * 5.0
  prediction = panoptic_task.predict({"semantics": jnp.asarray(semantics),
                                      "instances": instances})
  np.testing.assert_array_equal(prediction["semantics"], [[[1, 1, 1, 2]]])
  np.testing.assert_array_equal(prediction["instances"], [[[1, 1, 1, 0]]])
  picture = panoptic_task.picture(prediction)
  assert picture.shape == (1, 1, 4, 3) and 0 <= float(picture.min()) <= float(picture.max()) <= 1
  void = panoptic_task.picture({"semantics": jnp.zeros((1, 1, 1), jnp.int32),
                                "instances": jnp.zeros((1, 1, 1), jnp.int32)})
  np.testing.assert_array_equal(void, 0.0)


def test_two_channel_segments_merge_stuff_and_split_things_as_the_coco_converter():
  semantics = np.array([[0, 3, 3, 81], [3, 3, 81, 81]])
  instances = np.array([[0, 1, 1, 1], [2, 2, 4, 4]])  # stuff 81 in two instances: one segment
  ids, segments = panoptic.two_channel_segments(semantics, instances, BY_LABEL)
  np.testing.assert_array_equal(ids, [[0, 1, 1, 3], [2, 2, 3, 3]])
  assert segments == [{"id": 1, "category_id": 3}, {"id": 2, "category_id": 3},
                      {"id": 3, "category_id": 81}]
  with pytest.raises(ValueError, match=r"semantic labels \[200\] are not categories"):
    panoptic.two_channel_segments(np.full((1, 1), 200), np.zeros((1, 1)), BY_LABEL)


class _Source:
  def __init__(self, records):
    self.records = records

  def __getitems__(self, indices):
    return [self.records[i] for i in indices]


def test_pq_of_full_size_predictions_resized_back_and_the_written_files(tmp_path):
  # 4 x 6 ground truth: thing label 0 (category 1) as two segments, stuff label 85 (86).
  ids = np.array([[10, 10, 10, 20, 20, 20], [10, 10, 10, 20, 20, 20],
                  [30, 30, 30, 30, 30, 30], [30, 30, 30, 30, 30, 0]])
  record = _record(ids, {"id": [10, 20, 30], "label": [0, 0, 85],
                         "is_crowd": [False, False, False], "area": [6, 6, 11]}, image_id=42)
  evaluation = panoptic.PanopticEvaluation(_Source([record]), BY_LABEL, str(tmp_path / "pan"))
  # The model's 2 x 3 prediction: things right, but both as one instance; the oracle's right.
  # Nearest-resized to 4 x 6 each cell covers 2 x 2 pixels.
  merged = {"semantics": np.array([[[1, 1, 1], [86, 86, 86]]]),
            "instances": np.array([[[1, 1, 1], [2, 2, 2]]])}
  right = {"semantics": np.array([[[1, 1, 1], [86, 86, 86]]]),
           "instances": np.array([[[1, 1, 2], [3, 3, 3]]])}
  padding = {key: np.zeros_like(value) for key, value in right.items()}
  evaluation.add({"model": {k: np.concatenate([merged[k], padding[k]]) for k in merged},
                  "oracle": {k: np.concatenate([right[k], padding[k]]) for k in right}},
                 np.array([0, -1]))
  results = evaluation.results()
  # Oracle: resized, column 2 of the 2 x 3 grid covers pixel columns 4..5, so segment 10 gets
  # columns 0..3 of rows 0..1 (IoU 6/8) and 20 columns 4..5 (4/6); stuff 30 exactly (11/11,
  # the void pixel leaves the union). PQ = mean over categories 1 and 86.
  thing_pq = (6 / 8 + 4 / 6) / 2  # two TPs, no FP or FN
  assert results["oracle"]["pq_things"] == pytest.approx(thing_pq)
  assert results["oracle"]["pq_stuff"] == pytest.approx(1.0)
  assert results["oracle"]["pq"] == pytest.approx((thing_pq + 1.0) / 2)
  # Model: one predicted thing of 12 pixels has IoU 1/2 with each gt: no match (IoU must exceed
  # 0.5): 2 FN + 1 FP for category 1, PQ 0.
  assert results["model"]["pq_things"] == 0.0 and results["model"]["rq_things"] == 0.0
  assert results["model"]["pq"] == pytest.approx(0.5)
  # The files: COCO panoptic PNG + JSON that pq_compute reads, scoring as our evaluation.
  folder = tmp_path / "pan"
  from_files = panoptic.pq_from_files(str(folder / "ground_truth.json"),
                                      str(folder / "ground_truth"),
                                      str(folder / "predictions.json"),
                                      str(folder / "predictions"))
  assert from_files["All"]["pq"] == pytest.approx(results["model"]["pq"])
  with open(folder / "ground_truth.json") as f:
    assert len(json.load(f)["categories"]) == 133
  assert (folder / "predictions" / "000000000042.png").exists()


def test_resize_nearest_is_jax_image_resize_nearest():
  label = np.random.default_rng(0).integers(0, 50, (7, 11))
  for shape in ((7, 11), (16, 16), (3, 5), (480, 640), (19, 4)):
    expected = jax.image.resize(jnp.asarray(label), shape, "nearest")
    np.testing.assert_array_equal(images.resize_nearest(label, shape), expected)


def test_mock_coco_panoptic_batches_carry_canonical_maps_at_the_models_size():
  with tfds_mock.mock_dataset("coco/2017_panoptic", {"train": 8, "validation": 4}, shards=2):
    batch = next(pipeline.create_split("coco/2017_panoptic", "validation", batch_size=4,
                                       image_size=24, train=False, crop="full"))
    record = pipeline.records("coco/2017_panoptic", "validation").__getitems__([0])[0]
    names = pipeline.features("coco/2017_panoptic")["panoptic_objects"]["label"].names
  assert len(names) == 133 and pipeline.dense_maps("coco/2017_panoptic:1.1.0") == (
      "semantics", "instances")
  # Row 0 is record 0, its whole image stretched to 24 x 24, maps nearest-resized.
  maps = coco_panoptic.label_maps(record)
  shape = images.decode(record["image"]).shape[:2]
  assert maps["semantics"].shape == shape
  np.testing.assert_array_equal(batch["semantics"][0],
                                images.resize_nearest(maps["semantics"], 24))
  np.testing.assert_array_equal(batch["instances"][0], coco_panoptic.canonical_instances(
      images.resize_nearest(maps["instances"], 24)))
  assert batch["image"].shape == (4, 24, 24, 3) and batch["index"].tolist() == [0, 1, 2, 3]


def test_panoptic_config_lists_the_four_rows_with_three_seeds():
  config = uvim_panoptic.get_config("quantizer=vq,context=0")
  assert config.task.name == "panoptic" and config.dataset.name == "coco/2017_panoptic"
  assert not config.model.encoder_context and not config.model.decoder_context
  assert config.stage1.num_train_steps == 111_000 and config.stage2.num_train_steps == 44_600
  assert tasks.get("panoptic").labels == (("semantics", 134), ("instances", 100))
  runs = sweep.load_sweep("configs/uvim_panoptic.py")
  assert [r["name"] for r in runs] == [f"{row}_seed{s}" for row in
                                       ("vq", "fsq", "vq_no_context", "fsq_no_context")
                                       for s in range(3)]
  config.eval.panoptic_categories = "/nonexistent/panoptic_coco_categories.json"
  with pytest.raises(ValueError, match="eval.panoptic_categories=.* is not a file"):
    uvim_config.validate(config, num_devices=1, stage="eval")
