"""COCO panoptic quality (PQ, SQ, RQ) and the COCO panoptic PNG + JSON format, in numpy.

Replicates `pq_compute` of COCO's panopticapi (github.com/cocodataset/panopticapi,
`panopticapi/evaluation.py`: `pq_compute_single_core`, `PQStat.pq_average`, `pq_compute`; and
`panopticapi/utils.py`: `rgb2id`, `id2rgb`; checked at commit 7bb4655). Per image:

* A PNG pixel's segment id is R + 256 G + 256^2 B; id 0 (VOID) is unlabeled.
* Predicted segments' areas are pixel counts of the prediction map; ground-truth areas are the
  segments' "area" entries when present (panopticapi reads them from the JSON), else pixel counts.
* Pixel (gt, pred) pairs are counted at once by encoding them as gt * OFFSET + pred.
* A gt and a predicted segment match (a TP, adding their IoU) when the gt is not crowd, both have
  the same category and IoU > 0.5, where IoU = intersection / (union - the prediction's pixels on
  VOID gt).
* Unmatched non-crowd gt segments are FN; crowd segments never count.
* An unmatched predicted segment is ignored when (its pixels on VOID gt + its pixels on the crowd
  segment of its category) > 0.5 * its area, else it is a FP. As in panopticapi, a category's
  crowd region is its *last* crowd segment in "segments_info" (a dict overwrite), not their union.

Over a set of categories (all, things or stuff), PQ, SQ and RQ are averages over the categories
with tp + fp + fn > 0 of iou / (tp + fp/2 + fn/2), iou / tp (0 when tp = 0) and
tp / (tp + fp/2 + fn/2). With no such category the averages are NaN (panopticapi divides by 0).
"""

import json
import os

import numpy as np
from PIL import Image

OFFSET = 256 * 256 * 256
VOID = 0


def rgb_to_id(png):
  """Segment ids [H, W] (int64) of a COCO panoptic PNG [H, W, 3+] (uint8)."""
  rgb = np.asarray(png).astype(np.int64)  # widen first: uint8 arithmetic would overflow
  return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids):
  """COCO panoptic PNG [H, W, 3] (uint8) of segment ids [H, W] (each < 256^3)."""
  ids = np.asarray(ids, dtype=np.int64)
  return np.stack([ids % 256, ids // 256 % 256, ids // (256 * 256) % 256], -1).astype(np.uint8)


def _zero_stat():
  return {"tp": 0, "fp": 0, "fn": 0, "iou": 0.0}


def merge_stats(total, stats):
  """Adds per-category stats `stats` into `total` in place (as PQStat's +=); returns `total`."""
  for category, stat in stats.items():
    into = total.setdefault(category, _zero_stat())
    for key in into:
      into[key] += stat[key]
  return total


def _pred_areas(pred_ids, pred_segments, categories):
  """{id: pixel count} of the predicted segments, after panopticapi's sanity checks."""
  areas = {}
  for label, count in zip(*np.unique(pred_ids, return_counts=True)):
    label = int(label)
    if label not in pred_segments:
      if label == VOID:
        continue
      raise ValueError(f"segment id {label} is in the PNG but not in segments_info")
    if pred_segments[label]["category_id"] not in categories:
      raise ValueError(f"segment id {label} has unknown category_id "
                       f"{pred_segments[label]['category_id']}")
    areas[label] = int(count)
  missing = sorted(set(pred_segments) - set(areas))
  if missing:
    raise ValueError(f"segment ids {missing} are in segments_info but not in the PNG")
  return areas


def _gt_areas(gt_ids, gt_segments):
  """{id: area}: the JSON's "area" as panopticapi uses it, else the pixel count."""
  labels, counts = np.unique(gt_ids, return_counts=True)
  counted = dict(zip(labels.tolist(), counts.tolist()))
  return {label: segment.get("area", counted.get(label, 0))
          for label, segment in gt_segments.items()}


def _intersections(gt_ids, pred_ids):
  """{(gt id, pred id): pixel count} over all pairs that occur, in ascending order."""
  pairs = gt_ids.astype(np.int64) * OFFSET + pred_ids.astype(np.int64)
  labels, counts = np.unique(pairs, return_counts=True)
  return {(int(label) // OFFSET, int(label) % OFFSET): int(count)
          for label, count in zip(labels, counts)}


def pq_stat_image(gt_ids, gt_segments, pred_ids, pred_segments, categories):
  """Per-category {"tp", "fp", "fn", "iou" (sum of matched IoUs)} of one image.

  Args:
    gt_ids: [H, W] ground-truth segment ids (0 = VOID).
    gt_segments: dicts with "id", "category_id", "iscrowd" (and optionally "area").
    pred_ids: [H, W] predicted segment ids (0 = unassigned).
    pred_segments: dicts with "id", "category_id".
    categories: {category_id: {"isthing": 0 or 1, ...}}; predictions must use these ids.

  Returns:
    {category_id: stat} for the categories this image touches.

  Raises:
    ValueError: on a shape mismatch, a PNG id without segment (other than 0), a segment id not
      in the PNG, or an unknown predicted category (panopticapi raises KeyError for these).
  """
  gt_ids, pred_ids = np.asarray(gt_ids), np.asarray(pred_ids)
  if gt_ids.shape != pred_ids.shape:
    raise ValueError(f"gt shape {gt_ids.shape} != prediction shape {pred_ids.shape}")
  gt_segs = {int(s["id"]): s for s in gt_segments}
  pred_segs = {int(s["id"]): s for s in pred_segments}
  pred_area = _pred_areas(pred_ids, pred_segs, categories)
  gt_area = _gt_areas(gt_ids, gt_segs)
  overlap = _intersections(gt_ids, pred_ids)
  stats = {}

  def stat(category):
    return stats.setdefault(category, _zero_stat())

  gt_matched, pred_matched = set(), set()
  for (gt_label, pred_label), intersection in overlap.items():
    if gt_label not in gt_segs or pred_label not in pred_segs:
      continue  # VOID (or an id without segment) on either side matches nothing
    gt, pred = gt_segs[gt_label], pred_segs[pred_label]
    if gt["iscrowd"] == 1 or gt["category_id"] != pred["category_id"]:
      continue
    # The prediction's pixels on VOID gt are unknown territory, so they leave the union.
    union = (pred_area[pred_label] + gt_area[gt_label] - intersection
             - overlap.get((VOID, pred_label), 0))
    iou = intersection / union
    if iou > 0.5:  # unique: segments do not overlap, so at most one partner exceeds 0.5
      stat(gt["category_id"])["tp"] += 1
      stat(gt["category_id"])["iou"] += iou
      gt_matched.add(gt_label)
      pred_matched.add(pred_label)

  crowd = {}  # category -> its last crowd segment id (panopticapi overwrites per category)
  for gt_label, gt in gt_segs.items():
    if gt_label in gt_matched:
      continue
    if gt["iscrowd"] == 1:
      crowd[gt["category_id"]] = gt_label
      continue
    stat(gt["category_id"])["fn"] += 1

  for pred_label, pred in pred_segs.items():
    if pred_label in pred_matched:
      continue
    ignored = overlap.get((VOID, pred_label), 0)
    if pred["category_id"] in crowd:
      ignored += overlap.get((crowd[pred["category_id"]], pred_label), 0)
    # Mostly on VOID or on a same-category crowd: not evidence of a wrong segment.
    if ignored / pred_area[pred_label] > 0.5:
      continue
    stat(pred["category_id"])["fp"] += 1
  return stats


def pq_average(stats, categories, isthing=None):
  """{"pq", "sq", "rq", "n"} over all (None), thing (True) or stuff (False) categories."""
  return _average(stats, categories, isthing)[0]


def _average(stats, categories, isthing):
  """(averages, {category_id: {"pq", "sq", "rq"}}) as panopticapi's PQStat.pq_average."""
  total, n, per_class = {"pq": 0.0, "sq": 0.0, "rq": 0.0}, 0, {}
  for category, info in categories.items():
    if isthing is not None and isthing != (info["isthing"] == 1):
      continue
    s = stats.get(category, _zero_stat())
    if s["tp"] + s["fp"] + s["fn"] == 0:
      per_class[category] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
      continue  # absent from gt and prediction: not part of the average
    n += 1
    denominator = s["tp"] + 0.5 * s["fp"] + 0.5 * s["fn"]
    per_class[category] = {"pq": s["iou"] / denominator,
                           "sq": s["iou"] / s["tp"] if s["tp"] else 0.0,
                           "rq": s["tp"] / denominator}
    for key in total:
      total[key] += per_class[category][key]
  averages = {key: value / n if n else float("nan") for key, value in total.items()}
  return {**averages, "n": n}, per_class


def pq_results(stats, categories):
  """{"All", "Things", "Stuff": {"pq", "sq", "rq", "n"}, "per_class": {id: {"pq", "sq", "rq"}}}."""
  results = {}
  for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
    results[name], per_class = _average(stats, categories, isthing)
    if isthing is None:
      results["per_class"] = per_class
  return results


def _json_safe(value):
  return value.item() if isinstance(value, np.generic) else value


def write_panoptic(directory, predictions, categories=None):
  """Writes COCO panoptic PNGs into `directory` and their JSON as `<directory>.json`.

  `<directory>.json` is where panopticapi's `pq_compute` looks for the folder by default.

  Args:
    directory: folder for the PNGs (created if missing).
    predictions: (image_id, file_name, ids [H, W], segments) tuples; each segment dict needs
      "id" and "category_id", other keys (e.g. gt's "iscrowd", "area") are written as well.
    categories: for a ground-truth JSON, the category dicts it lists (pq_compute reads them).

  Returns:
    The JSON's path.
  """
  os.makedirs(directory, exist_ok=True)
  annotations = [write_png(directory, *prediction) for prediction in predictions]
  return write_json(directory, annotations, categories)


def write_png(directory, image_id, file_name, ids, segments) -> dict:
  """Writes one image's PNG into `directory`; returns its annotation for `write_json`."""
  os.makedirs(directory, exist_ok=True)
  Image.fromarray(id_to_rgb(ids)).save(os.path.join(directory, file_name))
  return {"image_id": _json_safe(image_id), "file_name": file_name,
          "segments_info": [{k: _json_safe(v) for k, v in s.items()} for s in segments]}


def write_json(directory, annotations, categories=None) -> str:
  """`<directory>.json` of the annotations write_png returned (and the categories)."""
  data = {"annotations": annotations}
  if categories is not None:
    data["categories"] = list(categories)
  json_path = os.path.normpath(directory) + ".json"
  with open(json_path, "w") as f:
    json.dump(data, f)
  return json_path


def _load_json(json_path):
  with open(json_path) as f:
    return json.load(f)


def _read_ids(folder, annotation):
  """Segment ids [H, W] of an annotation's PNG; a missing file is a one-line ValueError."""
  path = os.path.join(folder, annotation["file_name"])
  if not os.path.isfile(path):
    raise ValueError(f"{path}: PNG of image {annotation['image_id']} does not exist")
  with Image.open(path) as image:
    return rgb_to_id(np.asarray(image.convert("RGB")))


def read_panoptic(json_path, folder):
  """[(image_id, ids [H, W], segments)] of a COCO panoptic JSON and its PNG folder."""
  return [(a["image_id"], _read_ids(folder, a), a["segments_info"])
          for a in _load_json(json_path)["annotations"]]


def pq_from_files(gt_json, gt_folder, pred_json, pred_folder, categories=None):
  """pq_results over the gt JSON's images, predictions matched by image_id (as `pq_compute`).

  Images are read one at a time (not via read_panoptic) so memory stays at one image pair.
  `categories` defaults to the gt JSON's "categories". Predictions for images absent from the
  gt are ignored, as in panopticapi. Raises a one-line ValueError naming the file when an
  image has no prediction, a PNG is missing, or a prediction's PNG and segments disagree.
  """
  gt_data = _load_json(gt_json)
  if categories is None:
    categories = {c["id"]: c for c in gt_data["categories"]}
  predicted = {a["image_id"]: a for a in _load_json(pred_json)["annotations"]}
  stats = {}
  for gt in gt_data["annotations"]:
    if gt["image_id"] not in predicted:
      raise ValueError(f"{pred_json}: no prediction for the image with id {gt['image_id']}")
    pred = predicted[gt["image_id"]]
    gt_ids, pred_ids = _read_ids(gt_folder, gt), _read_ids(pred_folder, pred)
    try:
      image = pq_stat_image(gt_ids, gt["segments_info"], pred_ids, pred["segments_info"],
                            categories)
    except ValueError as error:  # name the offending file, as panopticapi names the image
      path = os.path.join(pred_folder, pred["file_name"])
      raise ValueError(f"{path} (image {gt['image_id']}): {error}") from None
    merge_stats(stats, image)
  return pq_results(stats, categories)


def two_channel_segments(semantics, instances, by_label):
  """(segment ids [H, W], segments) of a (semantic label, instance) map pair, as
  panopticapi's 2channels2panoptic_coco_format converter makes them: a segment per distinct
  (label, instance) pair with label != 0 (void), except that a stuff category is one segment
  whatever its instances (the converter gives stuff its category's colour, hence one id).

  Args:
    semantics, instances: int [H, W]; semantic labels index `by_label`.
    by_label: {semantic label: {"id": COCO category id, "isthing": 0 or 1, ...}}.
  """
  semantics, instances = np.asarray(semantics, np.int64), np.asarray(instances, np.int64)
  unknown = sorted(set(np.unique(semantics).tolist()) - set(by_label) - {VOID})
  if unknown:
    raise ValueError(f"semantic labels {unknown} are not categories (1..{len(by_label)})")
  things = np.asarray([0] + [by_label[i]["isthing"] for i in range(1, max(by_label) + 1)])
  # Stuff keeps one segment per label: its instance is ignored.
  pairs = semantics * OFFSET + np.where(things[semantics] == 1, instances, 0)  # void: 0
  values, inverse = np.unique(pairs, return_inverse=True)
  void = int(values[0] == VOID)  # segment ids 1, 2, ... in ascending pair order
  ids = np.where(semantics == VOID, 0, inverse.reshape(pairs.shape) + 1 - void)
  segments = [{"id": i + 1, "category_id": by_label[int(pair // OFFSET)]["id"]}
              for i, pair in enumerate(values[void:])]
  return ids.astype(np.int64), segments


class PanopticEvaluation:
  """PQ of predicted (semantics, instances) maps against a COCO panoptic split's ground truth.

  Each prediction is resized (nearest) back to its image's full size, made into segments
  (`two_channel_segments`) and scored against the record's panoptic PNG and segments
  (data/coco_panoptic.ground_truth) with `pq_stat_image`. With `directory`, the "model"
  method's predictions and the ground truth are also written in COCO's panoptic format,
  <directory>/predictions{,.json} and <directory>/ground_truth{,.json}, so that panopticapi's
  `pq_compute(gt_json, gt_folder, pred_json, pred_folder)` can score them.
  """

  def __init__(self, source, by_label, directory=None, written_method="model"):
    self.source, self.by_label, self.directory = source, by_label, directory
    self.written_method = written_method
    self.categories = {c["id"]: c for c in by_label.values()}
    self.stats, self.annotations = {}, {"predictions": [], "ground_truth": []}

  @classmethod
  def for_split(cls, config, directory):
    """The evaluation of config.dataset.eval_split, with config.eval.panoptic_categories;
    process 0 writes the files under <directory>/panoptic."""
    import jax  # pylint: disable=g-import-not-at-top
    from fsq_repro.data import coco_panoptic, pipeline  # pylint: disable=g-import-not-at-top
    d = config.dataset
    names = pipeline.features(d.name, data_dir=d.data_dir)["panoptic_objects"]["label"].names
    by_label = coco_panoptic.categories(names, config.eval.get("panoptic_categories"))
    write = os.path.join(directory, "panoptic") if jax.process_index() == 0 else None
    return cls(pipeline.records(d.name, d.eval_split, data_dir=d.data_dir), by_label, write)

  def add(self, predictions: dict, positions) -> None:
    """predictions {method: {"semantics", "instances"} [B, h, w]} of the images at
    `positions` [B] of the split (-1: a padding row)."""
    from fsq_repro.data import coco_panoptic, images  # pylint: disable=g-import-not-at-top
    rows = [row for row, position in enumerate(positions) if position >= 0]
    records = self.source.__getitems__([int(positions[row]) for row in rows])
    for row, record in zip(rows, records):
      gt_ids, gt_segments = coco_panoptic.ground_truth(record, self.by_label)
      image_id = int(record["image/id"])
      file_name = f"{image_id:012d}.png"
      for method, prediction in predictions.items():
        semantics, instances = (images.resize_nearest(np.asarray(prediction[key][row]),
                                                      gt_ids.shape)
                                for key in ("semantics", "instances"))
        ids, segments = two_channel_segments(semantics, instances, self.by_label)
        merge_stats(self.stats.setdefault(method, {}),
                    pq_stat_image(gt_ids, gt_segments, ids, segments, self.categories))
        if self.directory and method == self.written_method:
          self.annotations["predictions"].append(write_png(
              os.path.join(self.directory, "predictions"), image_id, file_name, ids, segments))
      if self.directory:
        self.annotations["ground_truth"].append(write_png(
            os.path.join(self.directory, "ground_truth"), image_id, file_name, gt_ids,
            gt_segments))

  def results(self) -> dict:
    """{method: {"pq", "sq", "rq", "pq_things", ..., "rq_stuff"}} as panopticapi's fractions;
    writes the JSONs beside the PNGs."""
    if self.directory:
      for name, annotations in self.annotations.items():
        write_json(os.path.join(self.directory, name), annotations,
                   self.categories.values() if name == "ground_truth" else None)
    out = {}
    for method, stats in self.stats.items():
      averaged = pq_results(stats, self.categories)
      out[method] = {f"{metric}{suffix}": averaged[part][metric]
                     for part, suffix in (("All", ""), ("Things", "_things"),
                                          ("Stuff", "_stuff"))
                     for metric in ("pq", "sq", "rq")}
    return out
