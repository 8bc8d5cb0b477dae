"""Improved precision/recall against a brute-force float64 reference."""

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
  result = precision_recall(reference, samples, k=k, batch_size=batch_size)
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
