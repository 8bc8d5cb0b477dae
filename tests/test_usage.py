import numpy as np
import pytest

from fsq_repro.eval.usage import DENSE_LIMIT, CodebookUsage


@pytest.mark.parametrize("size", [2**10, 2**16, DENSE_LIMIT * 4])
def test_usage_matches_numpy_and_merges(size):
  rng = np.random.default_rng(0)
  batches = [rng.integers(0, min(size, 3000), (4, 8, 8)) * (size // 3000 or 1) for _ in range(5)]
  one = CodebookUsage(size)
  parts = [CodebookUsage(size), CodebookUsage(size)]
  for i, b in enumerate(batches):
    one.update(b)
    parts[i % 2].update(b)
  merged = parts[0].merge(parts[1])
  codes, counts = np.unique(np.concatenate([b.ravel() for b in batches]), return_counts=True)
  for usage in (one, merged):
    got_codes, got_counts = usage.code_counts()
    np.testing.assert_array_equal(got_codes, codes)
    np.testing.assert_array_equal(got_counts, counts)
    assert usage.codes_used == len(codes)
    assert usage.usage == len(codes) / size
    assert usage.total == sum(b.size for b in batches)
  assert one.dense == (size <= DENSE_LIMIT)


def test_out_of_range_indices_and_size_mismatch():
  with pytest.raises(ValueError, match="indices must lie in"):
    CodebookUsage(8).update([3, 8])
  with pytest.raises(ValueError, match="codebook sizes"):
    CodebookUsage(8).merge(CodebookUsage(16))
