"""FID, feature statistics and Inception Score with the ADM suite's semantics.

ADM = openai/guided-diffusion `evaluations/evaluator.py`, which produced every
FID/IS number in the paper. Statistics are float64 and np.cov-style (ddof=1).
"""

import dataclasses
import warnings

import numpy as np
from scipy import linalg

# ADM's retry offset for a singular covariance product, and its tolerance on
# the imaginary part that sqrtm may return for a nearly singular product.
_SINGULAR_OFFSET = 1e-6
_IMAGINARY_TOLERANCE = 1e-3


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Frechet distance between two Gaussians, exactly as ADM computes it.

  ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2)), in float64 with
  scipy.linalg.sqrtm. If sqrtm is not finite, 1e-6 I is added to both
  covariances and it is retried. A complex sqrtm whose diagonal has an
  imaginary part above 1e-3 raises ValueError (naming the largest imaginary
  component); otherwise the real part is used.
  """
  mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
  mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.ndim != 1 or mu1.shape != mu2.shape:
    raise ValueError(f"mu1 and mu2 must be vectors of one length, got shapes "
                     f"{mu1.shape} and {mu2.shape}")
  dim = mu1.shape[0]
  for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
    if sigma.shape != (dim, dim):
      raise ValueError(f"{name} must have shape {(dim, dim)} to match mu, got "
                       f"{sigma.shape}")

  covmean = linalg.sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    warnings.warn("FID: covariance product is singular; adding "
                  f"{_SINGULAR_OFFSET} to the diagonal of both covariances")
    offset = np.eye(dim) * _SINGULAR_OFFSET
    covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0,
                       atol=_IMAGINARY_TOLERANCE):
      largest = np.max(np.abs(covmean.imag))
      raise ValueError(f"FID: sqrtm(sigma1 sigma2) has imaginary component "
                       f"{largest} (tolerance {_IMAGINARY_TOLERANCE}); the "
                       "covariances are not valid or too few features")
    covmean = covmean.real
  diff = mu1 - mu2
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2)
               - 2 * np.trace(covmean))


@dataclasses.dataclass
class FeatureStats:
  """Streaming sufficient statistics of a feature set.

  Holds the count, the float64 sum and the float64 sum of outer products, so
  batches can be accumulated in any order.
  """
  count: int
  feature_sum: np.ndarray  # float64 [dim]
  outer_sum: np.ndarray  # float64 [dim, dim]

  @classmethod
  def empty(cls, dim: int) -> "FeatureStats":
    if dim < 1:
      raise ValueError(f"dim must be >= 1, got {dim}")
    return cls(0, np.zeros([dim], np.float64), np.zeros([dim, dim], np.float64))

  @property
  def dim(self) -> int:
    return self.feature_sum.shape[0]

  def update(self, features) -> "FeatureStats":
    """Adds a batch of features [n, dim] (any float dtype); returns self."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[1] != self.dim:
      raise ValueError(f"features must have shape [n, {self.dim}], got "
                       f"{features.shape}")
    self.count += features.shape[0]
    self.feature_sum += features.sum(axis=0)
    self.outer_sum += features.T @ features
    return self

  def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
    """Returns (mu, sigma) as np.mean(axis=0) and np.cov(rowvar=False) would."""
    if self.count < 2:
      raise ValueError(f"covariance needs at least 2 features, got "
                       f"{self.count}")
    mean = self.feature_sum / self.count
    scatter = self.outer_sum - self.count * np.outer(mean, mean)
    return mean, scatter / (self.count - 1)


def inception_score(logits_or_probs, split_size: int = 5000, *,
                    are_logits: bool = True) -> float:
  """Inception Score with ADM's splitting: consecutive chunks of `split_size`.

  ADM computes exp(mean_x KL(p(y|x) || p(y))) on each consecutive chunk of
  5000 samples (the last chunk may be shorter) and averages the chunk scores;
  for the standard 50k samples that is 10 splits. p(y|x) = softmax of the
  pool_3 @ W_softmax logits (`are_logits=True`) or the given rows of
  probabilities. Terms with p(y|x) = 0 count as 0 (ADM would give NaN).
  """
  values = np.asarray(logits_or_probs, np.float64)
  if values.ndim != 2 or values.shape[0] < 1:
    raise ValueError(f"logits_or_probs must have shape [n, classes] with n >= "
                     f"1, got {values.shape}")
  if split_size < 1:
    raise ValueError(f"split_size must be >= 1, got {split_size}")
  if are_logits:
    shifted = values - values.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
  else:
    if values.min() < 0 or not np.allclose(values.sum(axis=1), 1, atol=1e-4):
      raise ValueError("logits_or_probs rows must be probabilities summing to "
                       "1; pass are_logits=True for logits")
    probs = values
  scores = []
  for start in range(0, len(probs), split_size):
    part = probs[start:start + split_size]
    marginal = part.mean(axis=0, keepdims=True)
    # 0 log 0 = 0; a class with p(y) = 0 has p(y|x) = 0 for every x here.
    log_part = np.log(np.where(part > 0, part, 1.0))
    log_marginal = np.log(np.where(marginal > 0, marginal, 1.0))
    kl = np.where(part > 0, part * (log_part - log_marginal), 0.0)
    scores.append(np.exp(kl.sum(axis=1).mean()))
  return float(np.mean(scores))
