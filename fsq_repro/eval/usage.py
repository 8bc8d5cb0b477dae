"""Exact codebook usage over an evaluation pass.

Counts every code index seen, batch after batch. Codebooks up to
2^26 codes keep a dense int64 count per code (512 MiB at 2^26); larger ones keep only
the codes seen, as sorted (code, count) pairs.
"""

import numpy as np

DENSE_LIMIT = 2**26


class CodebookUsage:
  """Exact counts of code indices."""

  def __init__(self, codebook_size: int):
    if codebook_size < 1:
      raise ValueError(f"codebook_size={codebook_size} must be positive")
    self.codebook_size = int(codebook_size)
    self.dense = self.codebook_size <= DENSE_LIMIT
    if self.dense:
      self._counts = np.zeros(self.codebook_size, np.int64)
    else:
      self._codes = np.zeros(0, np.int64)
      self._code_counts = np.zeros(0, np.int64)

  def update(self, indices) -> "CodebookUsage":
    flat = np.asarray(indices).reshape(-1).astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= self.codebook_size):
      raise ValueError(f"indices must lie in [0, {self.codebook_size}); got range "
                       f"[{flat.min()}, {flat.max()}]")
    if self.dense:
      self._counts += np.bincount(flat, minlength=self.codebook_size)
    else:
      codes, counts = np.unique(flat, return_counts=True)
      self._add_sparse(codes, counts)
    return self

  def code_counts(self) -> tuple[np.ndarray, np.ndarray]:
    """(codes seen, their counts), sorted by code."""
    if self.dense:
      codes = np.flatnonzero(self._counts)
      return codes, self._counts[codes]
    return self._codes, self._code_counts

  @property
  def total(self) -> int:
    return int(self._counts.sum() if self.dense else self._code_counts.sum())

  @property
  def codes_used(self) -> int:
    return int(np.count_nonzero(self._counts) if self.dense else self._codes.size)

  @property
  def usage(self) -> float:
    """Fraction of the |C| codes used at least once."""
    return self.codes_used / self.codebook_size

  @property
  def entropy_bits(self) -> float:
    """Entropy of the empirical code distribution, in bits per token: what coding each token
    independently of the others costs at best (the compression cost uses context)."""
    _, counts = self.code_counts()
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())

  def _add_sparse(self, codes, counts):
    all_codes = np.concatenate([self._codes, codes])
    all_counts = np.concatenate([self._code_counts, counts])
    self._codes, inverse = np.unique(all_codes, return_inverse=True)
    self._code_counts = np.bincount(inverse, weights=all_counts,
                                    minlength=self._codes.size).astype(np.int64)
