import numpy as np
import pytest

from fsq_repro.eval.usage import DENSE_LIMIT, CodebookUsage


@pytest.mark.parametrize("size", [2**10, 2**16, DENSE_LIMIT * 4])
def test_usage_matches_numpy(size):
  rng = np.random.default_rng(0)
  batches = [rng.integers(0, min(size, 3000), (4, 8, 8)) * (size // 3000 or 1) for _ in range(5)]
  usage = CodebookUsage(size)
  for b in batches:
    usage.update(b)
  codes, counts = np.unique(np.concatenate([b.ravel() for b in batches]), return_counts=True)
  got_codes, got_counts = usage.code_counts()
  np.testing.assert_array_equal(got_codes, codes)
  np.testing.assert_array_equal(got_counts, counts)
  assert usage.codes_used == len(codes)
  assert usage.usage == len(codes) / size
  assert usage.total == sum(b.size for b in batches)
  assert usage.dense == (size <= DENSE_LIMIT)


def test_code_entropy_by_hand():
  usage = CodebookUsage(16).update([0, 0, 1, 2])  # p = (1/2, 1/4, 1/4)
  assert usage.entropy_bits == pytest.approx(1.5)
  assert CodebookUsage(16).update([5] * 7).entropy_bits == 0.0


def test_out_of_range_indices():
  with pytest.raises(ValueError, match="indices must lie in"):
    CodebookUsage(8).update([3, 8])
