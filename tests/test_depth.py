"""Depth's bins, loss and prediction, and NYU's metrics, against hand-worked values."""

import jax.numpy as jnp
import numpy as np

from fsq_repro.eval import depth as depth_metrics
from fsq_repro.tasks import depth


def test_bins_clip_and_centres_undo_the_floor():
  # (d - 1e-3) / (10 - 1e-3) * 256: 0 m -> bin 0 (clipped), 5 m -> 127.99 -> 127,
  # 10 m -> 256 -> 255 (clipped), 0.05 m -> 1.255 -> 1.
  bins = depth.to_bins(jnp.array([0.0, 5.0, 10.0, 0.05, 30.0]))
  np.testing.assert_array_equal(bins, [0, 127, 255, 1, 255])
  centre = (127 + 0.5) / 256 * (10 - 1e-3) + 1e-3
  np.testing.assert_allclose(depth.from_bins(jnp.array([127])), [centre], rtol=1e-6)
  assert abs(centre - 5.0) < (10 - 1e-3) / 256  # within a bin of the input


def test_loss_ignores_pixels_without_depth_and_averages_over_all():
  labels = {"depth": depth.encode(jnp.array([[[0.0, 5.0]]]), num_bins=4)}  # bins 0 and 1
  # Uniform logits: -log(1/4) per pixel; the first pixel (bin 0, no depth) counts 0.
  decoded = {"depth": jnp.zeros((1, 1, 2, 4))}
  value, terms = depth.loss(decoded, labels)
  np.testing.assert_allclose(value, np.log(4.0) / 2, rtol=1e-6)
  assert terms["depth_cross_entropy"] == value
  logits = jnp.zeros((1, 1, 2, 4)).at[0, 0, 1, 1].set(2.0)
  np.testing.assert_allclose(depth.predict({"depth": logits})["depth"][0, 0, 1],
                             (1.5 / 4) * (10 - 1e-3) + 1e-3, rtol=1e-6)


def test_metrics_of_a_hand_worked_image_averaged_per_image():
  gt = np.array([[[1.0, 2.0], [4.0, 0.0]], [[3.0, 3.0], [3.0, 3.0]]])  # the 0: no signal
  pred = np.array([[[1.5, 2.0], [2.2, 7.0]], [[3.0, 3.0], [3.0, 3.0]]])
  m = {k: np.asarray(v) for k, v in depth_metrics.image_metrics(gt, pred).items()}
  # Image 0's valid pixels (gt, pred): (1, 1.5), (2, 2), (4, 2.2): errors 0.5, 0, 1.8;
  # ratios 1.5, 1, 1.818 against 1.25, 1.5625 and 1.953. Image 1 is exact.
  np.testing.assert_allclose(m["rmse"], [np.sqrt((0.25 + 0 + 3.24) / 3), 0], rtol=1e-6)
  np.testing.assert_allclose(m["abs_rel"], [(0.5 / 1 + 0 + 1.8 / 4) / 3, 0], rtol=1e-6)
  np.testing.assert_allclose(m["log10"], [(np.log10(1.5) + np.log10(4 / 2.2)) / 3, 0],
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(m["delta1"], [1 / 3, 1], rtol=1e-6)
  np.testing.assert_allclose(m["delta2"], [2 / 3, 1], rtol=1e-6)
  np.testing.assert_allclose(m["delta3"], [1, 1], rtol=1e-6)


def test_prediction_is_resized_to_the_crop_by_nearest_neighbours():
  small = np.array([[[1.0, 2.0], [3.0, 4.0]]])
  gt = np.repeat(np.repeat(small, 2, 1), 2, 2)  # what nearest upsampling gives
  assert float(depth_metrics.image_metrics(gt, small)["rmse"][0]) == 0.0
