"""COCO panoptic quality (eval/panoptic.py) on hand-made images whose PQ is worked by hand.

Images are single rows of pixels; in the comments, capitals are gt segments, lower case the
predicted ones, 0 is VOID / no prediction.
"""

import json
import os

import numpy as np
import pytest

from fsq_repro.eval import panoptic

# 1, 2: things; 3, 4: stuff (4 appears nowhere, so it is always skipped).
CATEGORIES = {1: {"id": 1, "isthing": 1}, 2: {"id": 2, "isthing": 1},
              3: {"id": 3, "isthing": 0}, 4: {"id": 4, "isthing": 0}}


def gt_seg(segment_id, category_id, iscrowd=0):
  return {"id": segment_id, "category_id": category_id, "iscrowd": iscrowd}


def pred_seg(segment_id, category_id):
  return {"id": segment_id, "category_id": category_id}


def stats_of(gt_row, gt_segments, pred_row, pred_segments):
  return panoptic.pq_stat_image(np.array([gt_row]), gt_segments, np.array([pred_row]),
                                pred_segments, CATEGORIES)


def test_rgb_id_round_trip():
  ids = np.array([[0, 1, 255, 256], [65535, 65536, 70000, 256 ** 3 - 1]])
  rgb = panoptic.id_to_rgb(ids)
  assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
  np.testing.assert_array_equal(rgb[1, 2], [70000 % 256, 70000 // 256 % 256, 1])  # 112, 17, 1
  np.testing.assert_array_equal(panoptic.rgb_to_id(rgb), ids)


def test_perfect_prediction_with_other_ids_is_pq_1():
  # A A B B S S vs x x y y z z (same partition and categories, different ids): all IoU 1.
  stats = stats_of([5, 5, 6, 6, 7, 7], [gt_seg(5, 1), gt_seg(6, 2), gt_seg(7, 3)],
                   [9, 9, 8, 8, 300, 300], [pred_seg(9, 1), pred_seg(8, 2), pred_seg(300, 3)])
  results = panoptic.pq_results(stats, CATEGORIES)
  assert results["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 3}  # category 4 skipped
  assert results["Things"]["n"] == 2 and results["Stuff"]["n"] == 1


def test_match_fp_and_fn():
  # gt   A A A A B B B B S S S S   (A, B: category 1; S: stuff 3)
  # pred a a a 0 0 0 0 0 b b b b   (a, b: category 1)
  # a-A: 3 / (3 + 4 - 3) = 0.75 -> TP; B unmatched -> FN; b lies on S (not void) -> FP;
  # S unmatched -> FN of category 3.
  # Category 1: PQ = 0.75 / (1 + 0.5 + 0.5) = 0.375, SQ = 0.75, RQ = 1 / 2 = 0.5.
  # Category 3: tp 0, fn 1 -> PQ = SQ = RQ = 0. All: (0.375 + 0) / 2 = 0.1875, n = 2.
  stats = stats_of([1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3],
                   [gt_seg(1, 1), gt_seg(2, 1), gt_seg(3, 3)],
                   [1, 1, 1, 0, 0, 0, 0, 0, 2, 2, 2, 2], [pred_seg(1, 1), pred_seg(2, 1)])
  assert stats[1] == {"tp": 1, "fp": 1, "fn": 1, "iou": 0.75}
  assert stats[3] == {"tp": 0, "fp": 0, "fn": 1, "iou": 0.0}
  results = panoptic.pq_results(stats, CATEGORIES)
  assert results["per_class"][1] == {"pq": 0.375, "sq": 0.75, "rq": 0.5}
  assert results["per_class"][3] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
  assert results["All"] == {"pq": 0.1875, "sq": 0.375, "rq": 0.25, "n": 2}
  assert results["Things"] == {"pq": 0.375, "sq": 0.75, "rq": 0.5, "n": 1}


def test_iou_of_exactly_half_is_no_match():
  # A A A A vs a a 0 0: IoU = 2 / 4 = 0.5, not > 0.5 -> A is FN, a is FP, PQ 0.
  stats = stats_of([1, 1, 1, 1], [gt_seg(1, 1)], [1, 1, 0, 0], [pred_seg(1, 1)])
  assert stats[1] == {"tp": 0, "fp": 1, "fn": 1, "iou": 0.0}
  # One more pixel: 3 / 4 = 0.75 -> TP.
  stats = stats_of([1, 1, 1, 1], [gt_seg(1, 1)], [1, 1, 1, 0], [pred_seg(1, 1)])
  assert stats[1] == {"tp": 1, "fp": 0, "fn": 0, "iou": 0.75}


def test_union_leaves_out_prediction_on_void():
  # gt A A A A 0 0 vs pred a a a 0 a a: a has 5 pixels, 3 on A, 2 on VOID; A has 4.
  # IoU = 3 / (5 + 4 - 3 - 2) = 0.75 -> TP; the plain union 6 would give 0.5, no match.
  stats = stats_of([1, 1, 1, 1, 0, 0], [gt_seg(1, 1)], [1, 1, 1, 0, 1, 1], [pred_seg(1, 1)])
  assert stats[1] == {"tp": 1, "fp": 0, "fn": 0, "iou": 0.75}
  assert panoptic.pq_average(stats, CATEGORIES) == {"pq": 0.75, "sq": 0.75, "rq": 1.0, "n": 1}


def test_prediction_mostly_on_void_is_ignored():
  # gt 0 0 0 S S S S S vs b b b b s s s s (b: category 1, s: stuff 3).
  # b: 3 of its 4 pixels on VOID, 3/4 > 0.5 -> ignored, so category 1 has nothing (skipped).
  # s-S: 4 / (4 + 5 - 4) = 0.8 -> TP. All: PQ 0.8, n = 1.
  stats = stats_of([0, 0, 0, 3, 3, 3, 3, 3], [gt_seg(3, 3)],
                   [1, 1, 1, 1, 2, 2, 2, 2], [pred_seg(1, 1), pred_seg(2, 3)])
  assert 1 not in stats
  np.testing.assert_allclose(stats[3]["iou"], 0.8)
  result = panoptic.pq_average(stats, CATEGORIES)
  assert result["n"] == 1
  np.testing.assert_allclose([result["pq"], result["sq"], result["rq"]], [0.8, 0.8, 1.0])
  # Exactly half on VOID (2 of 4) is not "more than half" -> FP.
  stats = stats_of([0, 0, 3, 3, 3, 3, 3, 3], [gt_seg(3, 3)],
                   [1, 1, 1, 1, 2, 2, 2, 2], [pred_seg(1, 1), pred_seg(2, 3)])
  assert stats[1]["fp"] == 1


def test_prediction_on_crowd_is_ignored_only_for_the_same_category():
  # gt C C C C A A A A (C: crowd of category 1, A: category 1) vs c c c c a a a a.
  # a-A: IoU 1 -> TP. c on the crowd: ignored if category 1, FP if category 2.
  # C is crowd -> never FN. Category 1: PQ 1.
  gt_row, gt_segments = [1, 1, 1, 1, 2, 2, 2, 2], [gt_seg(1, 1, iscrowd=1), gt_seg(2, 1)]
  pred_row = [7, 7, 7, 7, 8, 8, 8, 8]
  stats = stats_of(gt_row, gt_segments, pred_row, [pred_seg(7, 1), pred_seg(8, 1)])
  assert stats == {1: {"tp": 1, "fp": 0, "fn": 0, "iou": 1.0}}
  # Category 2: tp 0, fp 1 -> PQ 0; All = (1 + 0) / 2 = 0.5, Things the same, no Stuff.
  stats = stats_of(gt_row, gt_segments, pred_row, [pred_seg(7, 2), pred_seg(8, 1)])
  assert stats[2] == {"tp": 0, "fp": 1, "fn": 0, "iou": 0.0}
  results = panoptic.pq_results(stats, CATEGORIES)
  assert results["All"] == results["Things"] == {"pq": 0.5, "sq": 0.5, "rq": 0.5, "n": 2}
  assert results["Stuff"]["n"] == 0 and np.isnan(results["Stuff"]["pq"])


def test_crowd_is_never_matched_nor_fn():
  # gt C C C C (crowd, category 1) and no prediction: nothing counts.
  stats = stats_of([1, 1, 1, 1], [gt_seg(1, 1, iscrowd=1)], [0, 0, 0, 0], [])
  assert all(s == {"tp": 0, "fp": 0, "fn": 0, "iou": 0.0} for s in stats.values())
  assert panoptic.pq_average(stats, CATEGORIES)["n"] == 0
  # A prediction covering the crowd exactly (IoU 1) is no TP; it is ignored instead.
  stats = stats_of([1, 1, 1, 1], [gt_seg(1, 1, iscrowd=1)], [5, 5, 5, 5], [pred_seg(5, 1)])
  assert stats.get(1, panoptic._zero_stat()) == panoptic._zero_stat()


def test_only_the_last_crowd_segment_of_a_category_counts():
  # panopticapi keeps one crowd id per category (a dict overwrite): with crowds C1, C2 of
  # category 1 (C2 listed last), c over C1 is a FP, c over C2 is ignored.
  gt_row, gt_segments = [1, 1, 2, 2], [gt_seg(1, 1, iscrowd=1), gt_seg(2, 1, iscrowd=1)]
  stats = stats_of(gt_row, gt_segments, [5, 5, 0, 0], [pred_seg(5, 1)])
  assert stats[1]["fp"] == 1
  stats = stats_of(gt_row, gt_segments, [0, 0, 5, 5], [pred_seg(5, 1)])
  assert 1 not in stats  # nothing counted for category 1


def test_things_stuff_split_and_skipped_categories():
  # gt   A A B B B B S S S S S 0   (A: thing 1, B: thing 2, S: stuff 3; 4 nowhere -> skipped)
  # pred a a b b b 0 0 0 s s s s
  # a-A: IoU 1. b-B: 3 / (3 + 4 - 3) = 0.75.
  # s has 4 pixels: 3 on S, 1 on VOID; S has 5. IoU = 3 / (4 + 5 - 3 - 1) = 0.6.
  gt_row = [1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 0]
  pred_row = [1, 1, 2, 2, 2, 0, 0, 0, 3, 3, 3, 3]
  # Things: (1 + 0.75) / 2 = 0.875 (SQ 0.875, RQ 1); Stuff: 0.6 (n 1);
  # All: (1 + 0.75 + 0.6) / 3 = 0.78333 (n 3).
  stats = stats_of(gt_row, [gt_seg(1, 1), gt_seg(2, 2), gt_seg(3, 3)], pred_row,
                   [pred_seg(1, 1), pred_seg(2, 2), pred_seg(3, 3)])
  results = panoptic.pq_results(stats, CATEGORIES)
  np.testing.assert_allclose(
      [results["Things"][k] for k in ("pq", "sq", "rq")], [0.875, 0.875, 1.0])
  np.testing.assert_allclose([results["Stuff"][k] for k in ("pq", "sq", "rq")], [0.6, 0.6, 1.0])
  np.testing.assert_allclose(results["All"]["pq"], 2.35 / 3)
  assert (results["All"]["n"], results["Things"]["n"], results["Stuff"]["n"]) == (3, 2, 1)
  assert results["per_class"][4] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}


def test_gt_area_comes_from_the_json_when_given():
  # panopticapi takes the gt area from the JSON: A A A A with area 6 vs a a a 0:
  # IoU = 3 / (3 + 6 - 3) = 0.5 -> no match (with the pixel count 4 it would be 0.75).
  gt = [dict(gt_seg(1, 1), area=6)]
  stats = stats_of([1, 1, 1, 1], gt, [1, 1, 1, 0], [pred_seg(1, 1)])
  assert stats[1] == {"tp": 0, "fp": 1, "fn": 1, "iou": 0.0}


def test_inconsistent_prediction_raises():
  with pytest.raises(ValueError, match="in the PNG but not in segments_info"):
    stats_of([1, 1], [gt_seg(1, 1)], [1, 2], [pred_seg(1, 1)])
  with pytest.raises(ValueError, match=r"\[2\] are in segments_info but not in the PNG"):
    stats_of([1, 1], [gt_seg(1, 1)], [1, 1], [pred_seg(1, 1), pred_seg(2, 1)])
  with pytest.raises(ValueError, match="unknown category_id 9"):
    stats_of([1, 1], [gt_seg(1, 1)], [1, 1], [pred_seg(1, 9)])


def _images():
  """Two gt images and their predictions, ids beyond 255 to use all three PNG channels."""
  rng = np.random.default_rng(0)
  gt, pred = [], []
  for image_id in (11, 12):
    gt_ids = np.zeros((6, 8), np.int64)
    gt_ids[:, :3], gt_ids[:, 3:6], gt_ids[:2, 6:] = 70000, 300, 5  # 5: crowd
    gt_segments = [gt_seg(70000, 1), gt_seg(300, 3), gt_seg(5, 2, iscrowd=1)]
    # 80% of the labelled pixels keep their segment (ids + 1); VOID stays unpredicted.
    pred_ids = np.where((gt_ids > 0) & (rng.random((6, 8)) < 0.8), gt_ids + 1, 0)
    pred_segments = [pred_seg(70001, 1), pred_seg(301, 3), pred_seg(6, 2)]
    gt.append((image_id, f"{image_id}.png", gt_ids, gt_segments))
    pred.append((image_id, f"{image_id}.png", pred_ids, pred_segments))
  return gt, pred


def _write(tmp_path):
  gt, pred = _images()
  gt_json = panoptic.write_panoptic(str(tmp_path / "gt"), gt)
  with open(gt_json) as f:  # pq_compute reads the categories from the gt JSON
    data = json.load(f)
  data["categories"] = list(CATEGORIES.values())
  with open(gt_json, "w") as f:
    json.dump(data, f)
  pred_json = panoptic.write_panoptic(str(tmp_path / "pred"), pred)
  return gt, pred, gt_json, pred_json


def test_write_then_read_gives_the_same_ids_and_pq(tmp_path):
  gt, pred, gt_json, pred_json = _write(tmp_path)
  assert gt_json == str(tmp_path / "gt.json") and pred_json == str(tmp_path / "pred.json")
  read = panoptic.read_panoptic(pred_json, str(tmp_path / "pred"))
  for (image_id, _, ids, segments), (read_id, read_ids, read_segments) in zip(pred, read):
    assert read_id == image_id and read_segments == segments
    np.testing.assert_array_equal(read_ids, ids)
  expected = {}
  for (_, _, gt_ids, gt_segments), (_, _, pred_ids, pred_segments) in zip(gt, pred):
    panoptic.merge_stats(expected, panoptic.pq_stat_image(
        gt_ids, gt_segments, pred_ids, pred_segments, CATEGORIES))
  assert expected[1]["tp"] == 2 and 2 not in expected  # the prediction on the crowd: ignored
  results = panoptic.pq_from_files(gt_json, str(tmp_path / "gt"), pred_json,
                                   str(tmp_path / "pred"))
  assert results == panoptic.pq_results(expected, CATEGORIES)


def test_missing_or_inconsistent_prediction_files_raise_one_line(tmp_path):
  _, _, gt_json, pred_json = _write(tmp_path)
  gt_folder, pred_folder = str(tmp_path / "gt"), str(tmp_path / "pred")

  def error_of():
    with pytest.raises(ValueError) as info:
      panoptic.pq_from_files(gt_json, gt_folder, pred_json, pred_folder)
    assert "\n" not in str(info.value)
    return str(info.value)

  os.remove(os.path.join(pred_folder, "12.png"))
  assert "12.png" in error_of() and "does not exist" in error_of()
  with open(pred_json) as f:
    data = json.load(f)
  with open(pred_json, "w") as f:  # image 12 without prediction
    json.dump({"annotations": data["annotations"][:1]}, f)
  assert error_of() == f"{pred_json}: no prediction for the image with id 12"
  data["annotations"][0]["segments_info"].append(pred_seg(99, 1))  # not in 11.png
  data["annotations"] = data["annotations"][:1] + [dict(data["annotations"][0], image_id=12)]
  with open(pred_json, "w") as f:
    json.dump(data, f)
  assert error_of().startswith(os.path.join(pred_folder, "11.png"))
  assert "[99] are in segments_info but not in the PNG" in error_of()
  data["annotations"][0]["segments_info"] = data["annotations"][0]["segments_info"][1:-1]
  with open(pred_json, "w") as f:  # 11.png's id 70001 now has no segment
    json.dump(data, f)
  assert "segment id 70001 is in the PNG but not in segments_info" in error_of()
