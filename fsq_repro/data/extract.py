"""Token extraction: one pass of the training split through the frozen Stage I tokenizer.

Each process encodes its rows of every global batch (train-time crops and flips, the
batches Stage I would see at those steps) and writes them as token shards of
`SHARD_BATCHES` batches (data/tokens.py), with each row's position in the pass, so the
tokens load in one order whatever the number of processes that wrote them. An interrupted
extraction resumes at the first missing shard; the "complete" marker is written once every
process has written all of its, and no process reads the tokens before it is.
"""

import os

import jax
import numpy as np

from fsq_repro import parallel
from fsq_repro.data import pipeline
from fsq_repro.data import tokens as tokens_lib

SHARD_BATCHES = 50  # batches per token shard


def extract_tokens(config, directory: str, tokenizer, log=print) -> None:
  """Writes the token shards of `config`'s training split into `directory`.

  `tokenizer`: anything with `encode(images) -> int32 [B, h, w]` on global batches
  (fsq_repro.api.Tokenizer); batches are `config.stage2.batch_size` images.
  """
  os.makedirs(directory, exist_ok=True)
  mesh = parallel.make_mesh()
  s = config.stage2
  local_batch = parallel.per_process_batch_size(s.batch_size)
  total = pipeline.num_examples(config.dataset.name, config.dataset.train_split,
                                data_dir=config.dataset.data_dir)
  steps = total // s.batch_size
  num_shards = -(-steps // SHARD_BATCHES)
  process = jax.process_index()
  for shard in range(num_shards):
    path = tokens_lib.shard_path(directory, process, shard)
    if os.path.exists(path):
      continue  # written by an earlier, interrupted extraction
    first = shard * SHARD_BATCHES
    batches = pipeline.create_split(
        config.dataset.name, config.dataset.train_split, batch_size=local_batch,
        image_size=config.dataset.image_size, train=True, seed=config.seed, start_step=first,
        data_dir=config.dataset.data_dir)
    shard_tokens, shard_labels, shard_rows = [], [], []
    for step in range(first, min(first + SHARD_BATCHES, steps)):
      batch = next(batches)
      images = parallel.global_batch({"image": batch["image"]}, mesh)["image"]
      shard_tokens.append(parallel.local_rows(tokenizer.encode(images)))
      shard_labels.append(batch["label"])
      shard_rows.append(step * s.batch_size + process * local_batch + np.arange(local_batch))
    tokens_lib.write_shard(path, np.concatenate(shard_tokens), np.concatenate(shard_labels),
                           np.concatenate(shard_rows), tokenizer.codebook_size)
    log(f"stage2: extracted token shard {shard + 1}/{num_shards}")
  _sync("token shards written")
  if process == 0:
    tokens_lib.mark_complete(directory, num_shards=num_shards, steps=steps,
                             batch_size=s.batch_size)
  _sync("token extraction marked complete")  # no process reads the tokens before that


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
