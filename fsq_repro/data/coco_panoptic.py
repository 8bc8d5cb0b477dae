"""COCO panoptic records (TFDS `coco/2017_panoptic`) as UViM's two label maps, in numpy.

big_vision's preprocessing (`pp/proj/uvim/pp_ops.py`: `coco_panoptic`, then the crop and the
nearest resize, then `make_canonical`):

* `label_maps`: a pixel of segment k (the k-th entry of `panoptic_objects`, whose `id` is the
  pixel's R + 256 G + 256^2 B in `panoptic_image`) has semantics `label_k + 1` and instance
  `k + 1`; pixels of no segment (COCO's VOID) have 0 in both.
* `canonical_instances`: after the crop, instance ids are renumbered 1..n in the order of their
  masks' centroids, y-major (key: x + H * y); 0 stays 0.

Evaluation is against each record's full-size panoptic PNG and its segments (`ground_truth`),
with category ids and thing/stuff flags from `categories`.
"""

import json

import numpy as np

from fsq_repro.data import images
from fsq_repro.eval import panoptic  # the COCO panoptic format (numpy only at import)

# Channels of the two maps: 133 COCO panoptic categories + void, and 100 instance slots
# (COCO has at most 98 segments in a train image, 78 in a validation image).
NUM_SEMANTICS = 134
NUM_INSTANCES = 100
# TFDS orders `panoptic_objects/label` as panoptic_val2017.json's categories: the 80 things
# (ids 1..90) first, then the 53 stuff categories (ids 92..200).
NUM_THINGS = 80


def panoptic_ids(record: dict) -> np.ndarray:
  """The record's segment id map [H, W] (int64) from its panoptic PNG (bytes or decoded)."""
  png = record["panoptic_image"]
  return panoptic.rgb_to_id(images.decode(png) if isinstance(png, bytes) else png)


def label_maps(record: dict) -> dict[str, np.ndarray]:
  """A coco/2017_panoptic record -> {"semantics", "instances"} int32 [H, W] (module doc)."""
  ids = panoptic_ids(record)
  objects = record["panoptic_objects"]
  segment_ids = np.asarray(objects["id"], np.int64)
  if not len(segment_ids):
    return {"semantics": np.zeros(ids.shape, np.int32), "instances": np.zeros(ids.shape, np.int32)}
  order = np.argsort(segment_ids, kind="stable")  # look every pixel's id up in the segments
  position = np.minimum(np.searchsorted(segment_ids[order], ids), len(order) - 1)
  k = order[position]  # the pixel's segment index, where its id is a segment's
  found = segment_ids[k] == ids
  labels = np.asarray(objects["label"], np.int32)
  return {"semantics": np.where(found, labels[k] + 1, 0).astype(np.int32),
          "instances": np.where(found, k + 1, 0).astype(np.int32)}


def canonical_instances(instances: np.ndarray) -> np.ndarray:
  """Instance ids [H, W] renumbered 1..n by their masks' centroids, y-major (0 and negative
  ids -> 0 and -1, as big_vision's make_canonical)."""
  ids = np.unique(instances)
  ids = ids[ids > 0]
  height = instances.shape[0]
  keys = []
  for i in ids:
    ys, xs = np.nonzero(instances == i)
    keys.append(np.float32(xs.mean(dtype=np.float32)) +
                np.float32(height) * np.float32(ys.mean(dtype=np.float32)))
  canonical = np.full(instances.shape, -1, np.int32)
  for rank, i in enumerate(ids[np.argsort(np.asarray(keys, np.float32), kind="stable")]):
    canonical[instances == i] = rank + 1
  return np.where(instances == 0, 0, canonical).astype(np.int32)


def categories(label_names, path: str | None = None) -> dict[int, dict]:
  """{category id: {"id", "name", "isthing"}} of the dataset's semantic labels 1..133.

  With `path` (COCO's panoptic_coco_categories.json, or a panoptic annotations JSON with a
  "categories" list) semantic label i is the file's i-th category, with COCO's ids, names and
  isthing flags: predictions written with them are scored by panopticapi against COCO's own
  ground truth. Without it, ids are the semantic labels themselves (1..133) and the first
  NUM_THINGS are things, as TFDS orders the labels.
  """
  if path:
    with open(path) as f:
      listed = json.load(f)
    listed = listed["categories"] if isinstance(listed, dict) else listed
    if len(listed) != len(label_names):
      raise ValueError(f"eval.panoptic_categories={path!r} lists {len(listed)} categories, the "
                       f"dataset has {len(label_names)}; pass COCO's "
                       "panoptic_coco_categories.json")
    return {i + 1: {"id": int(c["id"]), "name": c["name"], "isthing": int(c["isthing"])}
            for i, c in enumerate(listed)}
  return {i + 1: {"id": i + 1, "name": name, "isthing": int(i < NUM_THINGS)}
          for i, name in enumerate(label_names)}


def ground_truth(record: dict, by_label: dict[int, dict]):
  """(segment ids [H, W], segments) of a record at full size, with COCO's fields:
  {"id", "category_id", "iscrowd", "area"} per `panoptic_objects` entry."""
  objects = record["panoptic_objects"]
  segments = [{"id": int(i), "category_id": by_label[int(label) + 1]["id"],
               "iscrowd": int(crowd), "area": int(area)}
              for i, label, crowd, area in zip(objects["id"], objects["label"],
                                               objects["is_crowd"], objects["area"])]
  return panoptic_ids(record), segments
