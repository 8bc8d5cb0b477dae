"""Improved precision and recall (Kynkaanniemi et al. 2019) as the ADM suite
computes them.

Each set's manifold is the union of balls around its points; a point's radius
is the squared Euclidean distance to its k-th nearest neighbour in its own set.
ADM sorts each point's distances to its whole set, itself included (distance
~0), and takes entry k, i.e. the k-th neighbour other than the point itself; we
do the same. Precision = fraction of samples inside some reference ball,
recall = fraction of references inside some sample ball; a point on a ball's
boundary counts as inside (<=). Distances are ||u||^2 - 2 u.v + ||v||^2
clamped at 0, in blocks of 10,000 x 10,000 (ADM's row and column batch).

Two modes:
  "adm"    (default) ADM's DistanceBlock (guided-diffusion evaluations/
           evaluator.py): each block is computed in float16 (features cast to
           float16; squares, the three-term sum and the clamp rounded to
           float16; the norms' sums and the matmul accumulated in float32 and
           rounded to float16, as TensorFlow's GPU kernels do), and the whole
           block is recomputed in float32 only if any entry is not finite. So
           the numbers are the suite's, including points that float16 rounding
           moves across a ball's boundary.
  "exact"  every distance in float32 (matmul at HIGHEST precision).
"""

import jax
import jax.numpy as jnp
import numpy as np


MODES = ("adm", "exact")
ADM_BATCH_SIZE = 10000  # ManifoldEstimator's row_batch_size and col_batch_size


def precision_recall(reference_features, sample_features, k: int = 3,
                     mode: str = "adm",
                     batch_size: int = ADM_BATCH_SIZE) -> tuple[float, float]:
  """Returns (precision, recall) of samples against references (order matters).

  Args:
    reference_features: [n_ref, dim] features of real images (ADM: 10k).
    sample_features: [n_sample, dim] features of generated images.
    k: neighbourhood size for the radii (ADM and the paper: 3).
    mode: "adm" (the suite's float16-first distances) or "exact" (float32).
    batch_size: rows and columns per distance block; memory ~ 4 * batch_size^2
      bytes. "adm" decides float16 or float32 per block, so its result equals
      the suite's at the suite's 10,000.
  """
  if mode not in MODES:
    raise ValueError(f"mode={mode!r} is unknown; use one of {MODES}")
  reference = _checked_features(reference_features, "reference_features")
  samples = _checked_features(sample_features, "sample_features")
  if reference.shape[1] != samples.shape[1]:
    raise ValueError(f"reference_features and sample_features must share the "
                     f"feature dim, got {reference.shape[1]} and "
                     f"{samples.shape[1]}")
  if k < 1 or min(len(reference), len(samples)) <= k:
    raise ValueError(f"k must be >= 1 and below each set's size, got k={k} for "
                     f"sets of {len(reference)} and {len(samples)}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if mode == "adm":
    return _adm_precision_recall(reference, samples, k, batch_size)
  block = min(batch_size, max(len(reference), len(samples)))
  reference_radii = _manifold_radii(reference, k, block)
  sample_radii = _manifold_radii(samples, k, block)
  samples_in_reference, reference_in_samples = _manifold_membership(
      samples, sample_radii, reference, reference_radii, block)
  return float(samples_in_reference.mean()), float(reference_in_samples.mean())


def _manifold_radii(features: np.ndarray, k: int, block: int) -> np.ndarray:
  """Squared distance from each point to its k-th nearest other point [n]."""
  rows, valid = _padded_blocks(features, block)
  radii = []
  for row_block in rows:
    nearest = jnp.full([block, k + 1], jnp.inf, jnp.float32)
    for col_block, col_valid in zip(rows, valid):
      nearest = _nearest_update(nearest, row_block, col_block, col_valid)
    # Entry 0 is the point itself (distance 0), so entry k is the k-th other.
    radii.append(np.asarray(nearest[:, k]))
  return np.concatenate(radii)[:len(features)]


def _manifold_membership(a, a_radii, b, b_radii, block):
  """Returns (a point in b's manifold [n_a], b point in a's manifold [n_b])."""
  a_blocks, _ = _padded_blocks(a, block)
  b_blocks, _ = _padded_blocks(b, block)
  # Padding gets radius -inf so no distance (>= 0) falls inside its ball.
  a_radius_blocks = _padded_radii(a_radii, len(a_blocks), block)
  b_radius_blocks = _padded_radii(b_radii, len(b_blocks), block)
  a_inside = [jnp.zeros([block], bool) for _ in a_blocks]
  b_inside = [jnp.zeros([block], bool) for _ in b_blocks]
  for i, (a_block, a_radius) in enumerate(zip(a_blocks, a_radius_blocks)):
    for j, (b_block, b_radius) in enumerate(zip(b_blocks, b_radius_blocks)):
      a_inside[i], b_inside[j] = _membership_update(
          a_inside[i], b_inside[j], a_block, a_radius, b_block, b_radius)
  a_inside = np.concatenate([np.asarray(x) for x in a_inside])[:len(a)]
  b_inside = np.concatenate([np.asarray(x) for x in b_inside])[:len(b)]
  return a_inside, b_inside


def _squared_distances(u, v):
  # HIGHEST keeps the matmul in float32 on TPU/GPU (the default may use bf16
  # or tf32, which moves points across ball boundaries).
  cross = jnp.matmul(u, v.T, precision=jax.lax.Precision.HIGHEST)
  u_norm = jnp.sum(u * u, axis=1)[:, None]
  v_norm = jnp.sum(v * v, axis=1)[None, :]
  return jnp.maximum(u_norm - 2 * cross + v_norm, 0.0)


@jax.jit
def _nearest_update(nearest, rows, cols, col_valid):
  """Merges a column block into each row's k+1 smallest distances."""
  distances = jnp.where(col_valid[None, :], _squared_distances(rows, cols),
                        jnp.inf)
  candidates = jnp.concatenate([nearest, distances], axis=1)
  negated_smallest, _ = jax.lax.top_k(-candidates, nearest.shape[1])
  return -negated_smallest


@jax.jit
def _membership_update(a_inside, b_inside, a_block, a_radius, b_block,
                       b_radius):
  distances = _squared_distances(a_block, b_block)
  a_inside |= jnp.any(distances <= b_radius[None, :], axis=1)
  b_inside |= jnp.any(distances <= a_radius[:, None], axis=0)
  return a_inside, b_inside


def _adm_distances(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """ADM's DistanceBlock on one block: float16 distances as float32, or float32
  distances if any float16 entry is inf or NaN."""
  u16, v16 = u.astype(np.float16), v.astype(np.float16)
  norm_u = _float16_sum_of_squares(u16)[:, None]
  norm_v = _float16_sum_of_squares(v16)[None, :]
  cross = np.asarray(_float32_matmul(u16.astype(np.float32), v16.astype(np.float32)))
  with np.errstate(over="ignore", invalid="ignore"):
    cross = cross.astype(np.float16)
    distances = np.maximum(norm_u - np.float16(2) * cross + norm_v, np.float16(0))
  if np.isfinite(distances).all():
    return distances.astype(np.float32)
  return np.asarray(_squared_distances(jnp.asarray(u), jnp.asarray(v)))


def _float16_sum_of_squares(x16: np.ndarray) -> np.ndarray:
  with np.errstate(over="ignore"):
    squares = np.square(x16)  # rounded to float16, element by element
    return squares.astype(np.float32).sum(axis=1).astype(np.float16)


@jax.jit
def _float32_matmul(u, v):
  return jnp.matmul(u, v.T, precision=jax.lax.Precision.HIGHEST)


def _adm_precision_recall(reference, samples, k, block):
  """ManifoldEstimator.manifold_radii for both sets, then evaluate_pr."""
  reference_radii = _adm_radii(reference, k, block)
  sample_radii = _adm_radii(samples, k, block)
  samples_in = np.zeros(len(samples), bool)
  reference_in = np.zeros(len(reference), bool)
  for i in range(0, len(reference), block):
    for j in range(0, len(samples), block):
      d = _adm_distances(reference[i:i + block], samples[j:j + block])
      reference_in[i:i + block] |= (d <= sample_radii[None, j:j + block]).any(axis=1)
      samples_in[j:j + block] |= (d <= reference_radii[i:i + block, None]).any(axis=0)
  return float(samples_in.mean()), float(reference_in.mean())


def _adm_radii(features, k, block):
  """Entry k of each row's sorted distances to the whole set (itself included),
  merging column blocks so memory stays at one block."""
  radii = np.empty(len(features), np.float32)
  for i in range(0, len(features), block):
    nearest = None
    for j in range(0, len(features), block):
      d = _adm_distances(features[i:i + block], features[j:j + block])
      d = d if nearest is None else np.concatenate([nearest, d], axis=1)
      nearest = np.partition(d, min(k, d.shape[1] - 1), axis=1)[:, :k + 1]
    radii[i:i + block] = nearest[:, k]
  return radii


def _padded_blocks(features, block):
  """Splits [n, d] into device blocks [block, d] plus validity masks."""
  num_blocks = -(-len(features) // block)
  padded = np.zeros([num_blocks * block, features.shape[1]], np.float32)
  padded[:len(features)] = features
  valid = np.arange(num_blocks * block) < len(features)
  return ([jnp.asarray(x) for x in np.split(padded, num_blocks)],
          [jnp.asarray(x) for x in np.split(valid, num_blocks)])


def _padded_radii(radii, num_blocks, block):
  padded = np.full([num_blocks * block], -np.inf, np.float32)
  padded[:len(radii)] = radii
  return [jnp.asarray(x) for x in np.split(padded, num_blocks)]


def _checked_features(features, name):
  features = np.asarray(features, np.float32)
  if features.ndim != 2:
    raise ValueError(f"{name} must have shape [n, dim], got {features.shape}")
  if not np.isfinite(features).all():
    raise ValueError(f"{name} contains NaN or inf")
  return features
