"""NYU depth metrics as big_vision's UViM evaluator computes them (`evaluators/proj/uvim/
nyu_depth.py`), per image, then averaged over images.

The ground truth (and the input image) is the 426 x 560 evaluation crop of the 480 x 640 map,
rows 54..479 and columns 41..600 (`crop`; big_vision's `nyu_eval_crop`, whose comment says
rows 45..470 but whose code starts at 54, as here); a prediction at the model's size is resized to it with nearest
neighbours; only pixels whose ground truth lies strictly between `min_depth` and `max_depth`
count. Per image: RMSE, mean absolute relative error, mean |log10 ratio|, and the fractions
of pixels with max(gt / pred, pred / gt) < 1.25^k for k = 1, 2, 3.
"""

import jax
import numpy as np

EVAL_CROP = (54, 480, 41, 601)  # [top, bottom) x [left, right) of the 480 x 640 map: 426 x 560
MIN_DEPTH, MAX_DEPTH = 1e-3, 10.0
METRICS = ("rmse", "abs_rel", "log10", "delta1", "delta2", "delta3")


def crop(depth: np.ndarray) -> np.ndarray:
  """The evaluation crop of a [480, 640, ...] map."""
  top, bottom, left, right = EVAL_CROP
  return depth[top:bottom, left:right]


def resize_nearest(prediction: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """jax.image.resize(..., "nearest"), as the evaluator resizes a prediction to the crop."""
  return np.asarray(jax.image.resize(np.asarray(prediction, np.float32), shape, "nearest"))


def image_metrics(ground_truth: np.ndarray, prediction: np.ndarray, *,
                  min_depth: float = MIN_DEPTH, max_depth: float = MAX_DEPTH) -> dict:
  """The metrics of one image: ground truth [H, W] (the crop) and a prediction of any size."""
  prediction = resize_nearest(prediction, ground_truth.shape)
  valid = (ground_truth > min_depth) & (ground_truth < max_depth)
  gt, pred = ground_truth[valid].astype(np.float64), prediction[valid].astype(np.float64)
  ratio = np.maximum(gt / pred, pred / gt)
  return {"rmse": float(np.sqrt(np.mean((gt - pred) ** 2))),
          "abs_rel": float(np.mean(np.abs(gt - pred) / gt)),
          "log10": float(np.mean(np.abs(np.log10(gt) - np.log10(pred)))),
          **{f"delta{k}": float(np.mean(ratio < 1.25**k)) for k in (1, 2, 3)}}


def mean_metrics(per_image: list[dict]) -> dict:
  """Each metric averaged over images (big_vision: RMSE per image, then the mean)."""
  return {name: float(np.mean([m[name] for m in per_image])) for name in METRICS}
