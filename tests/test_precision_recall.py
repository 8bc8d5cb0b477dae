"""Improved precision/recall: "exact" against a brute-force float64 reference, "adm" against
a transcription of the ADM suite's ManifoldEstimator and DistanceBlock."""

import numpy as np
import pytest

from fsq_repro.eval.precision_recall import precision_recall


def _brute_force(reference, samples, k):
  """Direct definition: radius = k-th smallest distance to the other points."""

  def squared_distances(a, b):
    return ((a[:, None, :] - b[None, :, :])**2).sum(-1)

  def radii(points):
    d = squared_distances(points, points)
    return np.array([np.sort(np.delete(row, i))[k - 1]
                     for i, row in enumerate(d)])

  cross = squared_distances(samples, reference)  # [n_sample, n_ref]
  precision = np.mean((cross <= radii(reference)[None, :]).any(axis=1))
  recall = np.mean((cross <= radii(samples)[:, None]).any(axis=0))
  return precision, recall


def _feature_sets(seed):
  rng = np.random.default_rng(seed)
  reference = rng.normal(size=[31, 4])
  # Shifted and narrower samples, so precision and recall differ.
  samples = 0.7 * rng.normal(size=[23, 4]) + 1.0
  samples[5] = samples[2]  # A duplicate: its radius excludes only itself.
  return reference, samples


@pytest.mark.parametrize("k, batch_size", [(3, 10000), (3, 7), (1, 5),
                                           (4, 31)])
def test_matches_brute_force(k, batch_size):
  reference, samples = _feature_sets(0)
  expected = _brute_force(reference, samples, k)
  assert 0 < expected[0] < 1 and 0 < expected[1] < 1  # Not a trivial case.
  result = precision_recall(reference, samples, k=k, mode="exact", batch_size=batch_size)
  assert result == pytest.approx(expected, abs=1e-12)


def test_swapping_arguments_swaps_precision_and_recall():
  reference, samples = _feature_sets(1)
  precision, recall = precision_recall(reference, samples, batch_size=8)
  assert precision != recall
  assert precision_recall(samples, reference, batch_size=8) == (recall,
                                                                precision)


def test_hand_computed_line_with_boundary_point():
  # k=1 on a line. References {0, 2}: both radii are 2^2 = 4. Samples
  # {4, 7, 8}: 4 lies exactly on the boundary of 2's ball (counts, <=), 7 and
  # 8 lie outside -> precision 1/3. Sample radii: 4 -> 9, 7 -> 1, 8 -> 1;
  # 2 is within 4's ball (4 <= 9), 0 is not (16 > 9) -> recall 1/2.
  reference = np.array([[0.0], [2.0]])
  samples = np.array([[4.0], [7.0], [8.0]])
  assert precision_recall(reference, samples, k=1) == pytest.approx(
      (1 / 3, 1 / 2))


def test_rejects_bad_input():
  reference, samples = _feature_sets(2)
  with pytest.raises(ValueError, match="feature dim"):
    precision_recall(reference, samples[:, :2])
  with pytest.raises(ValueError, match="k must be"):
    precision_recall(reference[:3], samples, k=3)
  with pytest.raises(ValueError, match="shape"):
    precision_recall(reference[0], samples)
  with pytest.raises(ValueError, match="mode='float16' is unknown"):
    precision_recall(reference, samples, mode="float16")


# --- the ADM suite ----------------------------------------------------------------------------
# guided-diffusion evaluations/evaluator.py, transcribed with numpy in its own structure (whole
# rows of distances, np.partition over each row, evaluate_pr's block loops). TensorFlow's GPU
# kernels for its float16 graph: elementwise ops rounded to float16, reductions and the
# matmul accumulated in float32 and rounded to float16.


def adm_batch_pairwise_distances(u, v, dtype):
  norm_u = np.square(u).astype(np.float32).sum(1).astype(dtype).reshape(-1, 1)
  norm_v = np.square(v).astype(np.float32).sum(1).astype(dtype).reshape(1, -1)
  product = (u.astype(np.float64) @ v.astype(np.float64).T).astype(dtype)
  with np.errstate(over="ignore", invalid="ignore"):
    return np.maximum(norm_u - dtype(2) * product + norm_v, dtype(0))


def adm_distance_block(u, v):
  with np.errstate(over="ignore"):
    d16 = adm_batch_pairwise_distances(u.astype(np.float16), v.astype(np.float16), np.float16)
  if np.all(np.isfinite(d16)):  # tf.cond(reduce_all(is_finite(distance_block_16)), ...)
    return d16.astype(np.float32)
  return adm_batch_pairwise_distances(u.astype(np.float32), v.astype(np.float32), np.float32)


def adm_manifold_radii(features, k, batch):
  n = len(features)
  radii = np.zeros([n, 1], np.float32)
  distance_batch = np.zeros([batch, n], np.float32)
  for begin1 in range(0, n, batch):
    end1 = min(begin1 + batch, n)
    for begin2 in range(0, n, batch):
      end2 = min(begin2 + batch, n)
      distance_batch[0:end1 - begin1, begin2:end2] = adm_distance_block(
          features[begin1:end1], features[begin2:end2])
    seq = np.arange(k + 1)
    radii[begin1:end1, :] = np.partition(distance_batch[0:end1 - begin1, :], seq,
                                         axis=1)[:, [k]]
  return radii


def adm_evaluate_pr(features_1, radii_1, features_2, radii_2, batch):
  features_1_status = np.zeros([len(features_1), 1], bool)
  features_2_status = np.zeros([len(features_2), 1], bool)
  for begin_1 in range(0, len(features_1), batch):
    batch_1 = features_1[begin_1:begin_1 + batch]
    for begin_2 in range(0, len(features_2), batch):
      batch_2 = features_2[begin_2:begin_2 + batch]
      dist32 = adm_distance_block(batch_1, batch_2)[..., None]
      features_1_status[begin_1:begin_1 + batch] |= np.any(
          dist32 <= radii_2[begin_2:begin_2 + batch], axis=1)
      features_2_status[begin_2:begin_2 + batch] |= np.any(
          dist32 <= radii_1[begin_1:begin_1 + batch][:, None], axis=0)
  return (np.mean(features_2_status.astype(np.float64), axis=0)[0],
          np.mean(features_1_status.astype(np.float64), axis=0)[0])


def adm_precision_recall(reference, samples, k=3, batch=10000):
  return adm_evaluate_pr(reference, adm_manifold_radii(reference, k, batch),
                         samples, adm_manifold_radii(samples, k, batch), batch)


def inception_like_features(seed, n, dim=512, scale=1.0):
  """Non-negative, pool_3-like features (ReLU outputs averaged: mostly 0.1-1)."""
  rng = np.random.default_rng(seed)
  return (scale * np.abs(rng.normal(0.3, 0.4, (n, dim)))).astype(np.float32)


@pytest.mark.parametrize("batch", [10000, 64])
def test_adm_mode_equals_the_adm_suite(batch):
  reference = inception_like_features(0, 300)
  samples = inception_like_features(1, 257) * 1.05
  expected = adm_precision_recall(reference, samples, batch=batch)
  assert 0 < expected[0] < 1 and 0 < expected[1] < 1
  assert precision_recall(reference, samples, batch_size=batch) == expected


def test_adm_float16_rounding_moves_a_point_onto_a_ball_and_exact_does_not():
  # k = 1, references {0, 2}: radii 4. The sample 4.001 is 2.001 from 2, so exactly it lies
  # outside 2's ball (4.004 > 4); in float16 4.001 rounds to 4 and it lies on the boundary.
  reference = np.array([[0.0], [2.0]])
  samples = np.array([[4.001], [7.0], [8.0]])
  assert precision_recall(reference, samples, k=1, mode="exact") == pytest.approx((0, 1 / 2))
  assert precision_recall(reference, samples, k=1, mode="adm") == pytest.approx((1 / 3, 1 / 2))
  assert adm_precision_recall(reference, samples, k=1) == pytest.approx((1 / 3, 1 / 2))


def test_adm_falls_back_to_float32_where_float16_overflows():
  # Squares of ~300 exceed float16's 65504: the suite recomputes those blocks in float32.
  reference = inception_like_features(2, 120, dim=64, scale=600.0)
  samples = inception_like_features(3, 90, dim=64, scale=600.0)
  with np.errstate(over="ignore"):
    assert not np.isfinite(np.square(reference.astype(np.float16))).all()
  adm = precision_recall(reference, samples)
  assert adm == adm_precision_recall(reference, samples)
  assert adm == pytest.approx(precision_recall(reference, samples, mode="exact"), abs=1 / 90)
