"""Stage I tokens on disk, and the Stage II batches read from them.

Extraction writes one .npz shard per chunk of batches per process (tokens (n, h, w) as
uint16 or int32, labels (n,), and rows (n,), each map's position in the extraction pass),
each written to a temporary name and renamed, so an interrupted extraction resumes at the
first missing shard. A "complete" marker records
the totals once every shard exists.

Stage II batches are a pure function of (seed, step): each epoch is a permutation of the
examples (in pass order, whatever the number of processes that wrote them) seeded by
(seed, epoch), and each process takes its rows of every global batch.
"""

import glob
import json
import os

import numpy as np

from fsq_repro import files

COMPLETE_MARKER = "complete.json"


def shard_path(directory: str, process_index: int, shard_index: int) -> str:
  return os.path.join(directory, f"tokens-p{process_index:03d}-{shard_index:05d}.npz")


def write_shard(path: str, tokens: np.ndarray, labels: np.ndarray, rows: np.ndarray,
                codebook_size: int) -> None:
  dtype = np.uint16 if codebook_size <= 2**16 else np.int32
  # The temporary name never matches the shard glob, so a killed write is never read.
  with files.atomic_write(path, "wb") as f:
    np.savez(f, tokens=tokens.astype(dtype), labels=labels.astype(np.int32),
             rows=rows.astype(np.int64))


def is_complete(directory: str) -> bool:
  return os.path.exists(os.path.join(directory, COMPLETE_MARKER))


def mark_complete(directory: str, **info) -> None:
  with files.atomic_write(os.path.join(directory, COMPLETE_MARKER)) as f:
    json.dump(info, f)


def load_all(directory: str) -> tuple[np.ndarray, np.ndarray]:
  """Every shard of every process in the order of the extraction pass's global batches
  (whatever the number of processes that wrote them): (tokens int32 (n, h, w), labels (n,))."""
  if not is_complete(directory):
    raise FileNotFoundError(f"no complete token extraction in {directory}; run --mode=stage2, "
                            "which extracts tokens first")
  paths = sorted(glob.glob(os.path.join(directory, "tokens-p*.npz")))
  tokens, labels, rows = [], [], []
  for path in paths:
    with np.load(path) as shard:
      if "rows" not in shard:
        raise ValueError(f"{path} has no 'rows' (written before token shards recorded their "
                         f"order); delete {directory} and rerun --mode=stage2 to extract again")
      tokens.append(shard["tokens"].astype(np.int32))
      labels.append(shard["labels"])
      rows.append(shard["rows"])
  order = np.argsort(np.concatenate(rows), kind="stable")
  return np.concatenate(tokens)[order], np.concatenate(labels)[order]


class TokenBatches:
  """Deterministic, resumable Stage II batches from in-memory tokens."""

  def __init__(self, tokens: np.ndarray, labels: np.ndarray, *, global_batch_size: int,
               seed: int, process_index: int = 0, process_count: int = 1):
    if global_batch_size > len(tokens):
      raise ValueError(f"stage2.batch_size={global_batch_size} exceeds the {len(tokens)} "
                       "extracted token maps; lower it")
    self.tokens = tokens.reshape(len(tokens), -1)
    self.labels = labels
    self.global_batch_size = global_batch_size
    self.steps_per_epoch = len(tokens) // global_batch_size
    self.seed = seed
    local = global_batch_size // process_count
    self._local = slice(process_index * local, (process_index + 1) * local)

  def batch(self, step: int) -> dict[str, np.ndarray]:
    epoch, index = divmod(step, self.steps_per_epoch)
    order = np.random.default_rng([self.seed, epoch]).permutation(len(self.tokens))
    chosen = order[index * self.global_batch_size:(index + 1) * self.global_batch_size]
    chosen = chosen[self._local]
    return {"tokens": self.tokens[chosen], "label": self.labels[chosen]}

  def iterate(self, start_step: int):
    step = start_step
    while True:
      yield self.batch(step)
      step += 1
