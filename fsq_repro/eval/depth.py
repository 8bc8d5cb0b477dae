"""NYU depth metrics as big_vision's UViM evaluator computes them (`evaluators/proj/uvim/
nyu_depth.py`): per image, then averaged over images.

The ground truth (and the input image) is the 426 x 560 evaluation crop of the 480 x 640 map,
rows 54..479 and columns 41..600 (data/pipeline.py's crop="nyu"; big_vision's
`nyu_eval_crop`, whose comment says rows 45..470 but whose code starts at 54, as here); a
prediction at the model's size is resized to it with nearest neighbours; only pixels whose
ground truth lies strictly between `min_depth` and `max_depth` count. Per image: RMSE, mean
absolute relative error, mean |log10 ratio|, and the fractions of pixels with
max(gt / pred, pred / gt) < 1.25^k for k = 1, 2, 3.
"""

import jax
import jax.numpy as jnp

MIN_DEPTH, MAX_DEPTH = 1e-3, 10.0
METRICS = ("rmse", "abs_rel", "log10", "delta1", "delta2", "delta3")


def image_metrics(ground_truth, prediction, *, min_depth: float = MIN_DEPTH,
                  max_depth: float = MAX_DEPTH) -> dict:
  """{metric: [B]} of ground truth [B, H, W] (the crop) and predictions [B, h, w]; jit-safe.
  An image without a valid pixel gets NaN."""
  prediction = jax.image.resize(prediction.astype(jnp.float32), ground_truth.shape, "nearest")
  gt = ground_truth.astype(jnp.float32)
  valid = (gt > min_depth) & (gt < max_depth)
  gt, pred = jnp.where(valid, gt, 1.0), jnp.where(valid, prediction, 1.0)
  count = jnp.sum(valid, axis=(1, 2))

  def mean(values):
    return jnp.sum(jnp.where(valid, values, 0.0), axis=(1, 2)) / count

  ratio = jnp.maximum(gt / pred, pred / gt)
  return {"rmse": jnp.sqrt(mean((gt - pred) ** 2)), "abs_rel": mean(jnp.abs(gt - pred) / gt),
          "log10": mean(jnp.abs(jnp.log10(gt) - jnp.log10(pred))),
          **{f"delta{k}": mean((ratio < 1.25**k).astype(jnp.float32)) for k in (1, 2, 3)}}
