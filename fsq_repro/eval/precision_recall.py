"""Improved precision and recall (Kynkaanniemi et al. 2019) as the ADM suite
computes them.

Each set's manifold is the union of balls around its points; a point's radius
is the squared Euclidean distance to its k-th nearest neighbour in its own set.
ADM sorts each point's distances to its whole set, itself included (distance
0), and takes entry k, i.e. the k-th neighbour other than the point itself; we
do the same. Precision = fraction of samples inside some reference ball,
recall = fraction of references inside some sample ball; a point on a ball's
boundary counts as inside (<=). Distances are float32 ||u||^2 - 2 u.v + ||v||^2
clamped at 0, computed in blocks so 50k x 10k x 2048 needs a few hundred MB.
ADM first tries the same formula in float16 and falls back to float32, so
points within float16 rounding of a boundary may be counted differently.
"""

import jax
import jax.numpy as jnp
import numpy as np


def precision_recall(reference_features, sample_features, k: int = 3,
                     batch_size: int = 10000) -> tuple[float, float]:
  """Returns (precision, recall) of samples against references (order matters).

  Args:
    reference_features: [n_ref, dim] features of real images (ADM: 10k).
    sample_features: [n_sample, dim] features of generated images.
    k: neighbourhood size for the radii (ADM and the paper: 3).
    batch_size: rows and columns per distance block; memory ~ 4 * batch_size^2
      bytes on the default device.
  """
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
