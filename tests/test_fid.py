"""FID, feature statistics, Inception Score, ADM .npz batches and PSNR."""

import math

import numpy as np
import pytest

from fsq_repro.eval import adm_npz
from fsq_repro.eval import fid
from fsq_repro.eval import reconstruction


def _random_covariance(rng, dim):
  a = rng.normal(size=[dim, 2 * dim])
  return a @ a.T / (2 * dim)


def test_fid_of_identical_stats_is_zero():
  rng = np.random.default_rng(0)
  mu, sigma = rng.normal(size=[16]), _random_covariance(rng, 16)
  assert fid.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0,
                                                                     abs=1e-9)


def test_fid_with_equal_covariances_is_mean_distance():
  rng = np.random.default_rng(1)
  mu1, mu2 = rng.normal(size=[12]), rng.normal(size=[12])
  sigma = _random_covariance(rng, 12)
  expected = np.sum((mu1 - mu2)**2)
  assert fid.frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(
      expected, rel=1e-9)


def test_fid_with_diagonal_covariances_matches_closed_form():
  rng = np.random.default_rng(2)
  mu1, mu2 = rng.normal(size=[10]), rng.normal(size=[10])
  a, b = rng.uniform(0.1, 3, size=[10]), rng.uniform(0.1, 3, size=[10])
  expected = np.sum((np.sqrt(a) - np.sqrt(b))**2) + np.sum((mu1 - mu2)**2)
  value = fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  assert value == pytest.approx(expected, rel=1e-10)


def test_fid_is_symmetric_on_random_covariances():
  rng = np.random.default_rng(3)
  mu1, mu2 = rng.normal(size=[8]), rng.normal(size=[8])
  s1, s2 = _random_covariance(rng, 8), _random_covariance(rng, 8)
  assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
      fid.frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_fid_retries_singular_product_with_offset():
  # sqrtm([[0, 1], [0, 0]]) is infinite; ADM then adds 1e-6 I to both. The
  # product becomes (1 + e) [[e, 1], [0, e]], whose sqrtm has trace 2 sqrt(a).
  sigma1, sigma2 = np.array([[0.0, 1.0], [0.0, 0.0]]), np.eye(2)
  eps = 1e-6
  expected = 0 + 2 - 2 * 2 * math.sqrt(eps * (1 + eps))
  with pytest.warns(UserWarning, match="singular"):
    value = fid.frechet_distance(np.zeros(2), sigma1, np.zeros(2), sigma2)
  assert value == pytest.approx(expected, rel=1e-9)


def test_fid_raises_on_imaginary_sqrtm():
  # sqrtm(diag(-4, 1)) = diag(2i, 1): imaginary part 2 on the diagonal.
  with pytest.raises(ValueError, match="imaginary component 2"):
    fid.frechet_distance(np.zeros(2), np.diag([-4.0, 1.0]), np.zeros(2),
                         np.eye(2))


def test_fid_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="sigma2"):
    fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))


def test_streamed_feature_stats_equal_one_shot_np_cov():
  rng = np.random.default_rng(4)
  # An offset mean checks the sum-of-outer-products form keeps its precision.
  features = rng.normal(size=[103, 7]).astype(np.float32) * 0.3 + 5.0
  stats = fid.FeatureStats.empty(7)
  for start in range(0, 103, 16):
    stats.update(features[start:start + 16])
  mean, covariance = stats.mean_and_covariance()
  reference = features.astype(np.float64)
  assert stats.count == 103
  np.testing.assert_allclose(mean, reference.mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(covariance, np.cov(reference, rowvar=False),
                             rtol=1e-9, atol=1e-12)


def test_feature_stats_rejects_bad_input():
  stats = fid.FeatureStats.empty(4)
  with pytest.raises(ValueError, match="shape"):
    stats.update(np.zeros([3, 5]))
  stats.update(np.zeros([1, 4]))
  with pytest.raises(ValueError, match="at least 2"):
    stats.mean_and_covariance()


def test_inception_score_of_uniform_softmax_is_one():
  assert fid.inception_score(np.zeros([20, 7])) == pytest.approx(1.0,
                                                                 abs=1e-12)


def test_inception_score_of_confident_diverse_predictions_is_class_count():
  classes = 6
  one_hot = np.eye(classes)[np.arange(30) % classes]
  assert fid.inception_score(one_hot, are_logits=False) == pytest.approx(
      classes, rel=1e-12)
  assert fid.inception_score(50.0 * one_hot) == pytest.approx(classes,
                                                              rel=1e-9)


def test_inception_score_averages_consecutive_splits():
  # ADM scores consecutive chunks of split_size and averages them: a chunk of
  # one repeated class scores 1, a chunk covering 5 classes scores 5, and the
  # short last chunk of 2 classes scores 2.
  labels = np.array([0] * 5 + [0, 1, 2, 3, 4] + [1, 2])
  probs = np.eye(5)[labels]
  assert fid.inception_score(probs, 5, are_logits=False) == pytest.approx(
      (1 + 5 + 2) / 3, rel=1e-12)


def test_inception_score_matches_kl_definition_on_random_logits():
  rng = np.random.default_rng(5)
  logits = rng.normal(size=[40, 9]) * 2
  probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  marginal = probs.mean(axis=0)
  kl = [np.sum(p * np.log(p / marginal)) for p in probs]
  assert fid.inception_score(logits) == pytest.approx(np.exp(np.mean(kl)),
                                                      rel=1e-10)


def test_inception_score_rejects_non_probabilities():
  with pytest.raises(ValueError, match="are_logits"):
    fid.inception_score(np.ones([4, 3]), are_logits=False)


def test_adm_reference_batch_round_trip(tmp_path):
  rng = np.random.default_rng(6)
  images = rng.integers(0, 256, size=[5, 8, 6, 3], dtype=np.uint8)
  stats = {"mu": rng.normal(size=[4]), "sigma": np.eye(4),
           "mu_s": rng.normal(size=[3]), "sigma_s": 2 * np.eye(3)}
  path = str(tmp_path / "ref.npz")
  adm_npz.save_reference_batch(path, images, stats=stats)
  np.testing.assert_array_equal(adm_npz.load_images(path), images)
  loaded = adm_npz.load_reference_stats(path)
  for key in adm_npz.STATS_KEYS:
    np.testing.assert_array_equal(loaded[key], stats[key])
  with pytest.raises(FileExistsError):
    adm_npz.save_reference_batch(path, images)

  no_stats = str(tmp_path / "plain.npz")
  adm_npz.save_reference_batch(no_stats, images)
  assert adm_npz.load_reference_stats(no_stats) is None
  assert sorted(np.load(no_stats).keys()) == ["arr_0"]


def test_adm_samples_round_trip_and_validation(tmp_path):
  rng = np.random.default_rng(7)
  images = rng.integers(0, 256, size=[4, 4, 4, 3], dtype=np.uint8)
  labels = np.array([3, 1, 4, 1])
  path = str(tmp_path / "samples.npz")
  adm_npz.save_samples(path, images, labels)
  with np.load(path) as data:  # The exact keys ADM's evaluator reads.
    assert sorted(data.keys()) == ["arr_0", "arr_1"]
    np.testing.assert_array_equal(data["arr_0"], images)
    np.testing.assert_array_equal(data["arr_1"], labels)

  with pytest.raises(ValueError, match="uint8"):
    adm_npz.save_samples(str(tmp_path / "f.npz"), images / 255.0, labels)
  with pytest.raises(ValueError, match="labels"):
    adm_npz.save_samples(str(tmp_path / "l.npz"), images, labels[:3])
  with pytest.raises(ValueError, match=".npz"):
    adm_npz.save_samples(str(tmp_path / "x.npy"), images, labels)
  with pytest.raises(ValueError, match="exactly"):
    adm_npz.save_reference_batch(str(tmp_path / "s.npz"), images,
                                 stats={"mu": np.zeros(2), "sigma": np.eye(2)})


def test_psnr_matches_closed_form():
  images = np.full([2, 4, 4, 3], 0.5)
  reconstructions = images.copy()
  reconstructions[1] += 0.1  # MSE 0.01 -> 20 dB.
  per_image, mean = reconstruction.psnr(images, reconstructions)
  assert per_image[0] == np.inf
  assert per_image[1] == pytest.approx(20.0, rel=1e-12)
  _, mean_255 = reconstruction.psnr(images[1:] * 255,
                                    reconstructions[1:] * 255, max_value=255.0)
  assert mean_255 == pytest.approx(20.0, rel=1e-12)
  assert mean == np.inf
  with pytest.raises(ValueError, match="shape"):
    reconstruction.psnr(images, reconstructions[:1])
