"""The ColTran FID-5k protocol of UViM colorization, as pure numpy functions.

Source: google-research/big_vision,
big_vision/evaluators/proj/uvim/coltran_fid.py, which follows ColTran (Kumar et
al. 2021, google-research coltran/datasets.py).

  * Evaluated images: the first 5,000 of imagenet2012 "validation" in the order
    `tfds.load("imagenet2012", split="validation")` yields them by default, i.e.
    with TFDS's shard interleaving: not "validation[:5000]". Reference images:
    read positions 10,000..14,999 of that order (skip 5,000, then skip
    coltran_seed * 5,000 with seed 1, take 5,000).
  * Every image: centre crop to its short side, area resize, round. Evaluated
    images at 512 (the model colourises 512x512 grayscale), reference at 256
    (data/coltran_crop.py, which the input pipeline's crop="coltran" uses).
  * Model input: the image normalised as x / 128 - 1 (128, not 127.5), turned
    to grayscale and repeated to 3 channels.
  * Model output (in [-1, 1] at 512): area resize to 256, then
    clip(round((y + 1) * 128), 0, 255), ColTran's serialisation to uint8.
FID is then taken between the colourised and the reference 256x256 images.
"""

import numpy as np

from fsq_repro.data.coltran_crop import area_resize

# TFDS 4.9.10 defaults for a dataset without `disable_shuffling` (imagenet2012):
# ReadConfig.interleave_block_length = 16 (core/utils/read_config.py:115) and
# cycle length 16 from core/reader.py:_get_default_interleave_cycle_length.
TFDS_CYCLE_LENGTH = 16
TFDS_BLOCK_LENGTH = 16



def tfds_read_order(shard_lengths, cycle_length=TFDS_CYCLE_LENGTH,
                    block_length=TFDS_BLOCK_LENGTH) -> np.ndarray:
  """Split-global index of each example, in the order TFDS reads the split.

  An index is the example's position with the shards laid end to end (its
  position in `split[:]` or in `builder.as_data_source(split)`). With
  shuffle_files=False, TFDS reads the shards in order through
  `tf.data.Dataset.interleave(cycle_length, block_length, deterministic=True)`;
  this replays that interleave.
  """
  if cycle_length < 1 or block_length < 1:
    raise ValueError(f"cycle_length and block_length must be >= 1, got "
                     f"{cycle_length} and {block_length}")
  lengths = np.asarray(shard_lengths, np.int64)
  ends = np.cumsum(lengths)
  # TFDS leaves empty shards out of its file instructions: they take no turn.
  pending = [[end - n, end] for n, end in zip(lengths, ends) if n > 0][::-1]
  slots = [None] * cycle_length  # [next index, end] of each slot's shard
  num_open, slot, blocks = 0, 0, []
  while pending or num_open:
    if slots[slot] is None and pending:
      slots[slot] = pending.pop()  # A newly opened shard is read at once.
      num_open += 1
    cursor = slots[slot]
    if cursor is not None:
      start, end = cursor
      stop = min(start + block_length, end)
      blocks.append(np.arange(start, stop))
      cursor[0] = stop
      # tf.data sees a shard end within a short block and frees the slot; a
      # shard ending exactly on a block boundary is found empty only on its
      # next turn, which then yields nothing (start == stop here).
      if stop - start < block_length:
        slots[slot] = None
        num_open -= 1
    slot = (slot + 1) % cycle_length
  return np.concatenate(blocks) if blocks else np.zeros(0, np.int64)


def coltran_positions(shard_lengths, num_images=5000, reference_offset=10000):
  """Split-global indices of the evaluated and of the reference images.

  Returns (read order [0:num_images], read order [reference_offset:
  reference_offset + num_images]), the read order of `tfds_read_order`.
  """
  order = tfds_read_order(shard_lengths)
  needed = reference_offset + num_images
  if reference_offset < num_images:
    raise ValueError(f"eval.fid_images={num_images} overlaps the reference "
                     f"images, which start at read position {reference_offset}")
  if order.size < needed:
    raise ValueError(f"eval.fid_images={num_images} needs {needed} images in "
                     f"the split (references from {reference_offset}), but "
                     f"it has {order.size}")
  return order[:num_images], order[reference_offset:needed]


# ColTran feeds the model x / 128 - 1 of the uint8 image x; the input pipeline's [0, 1]
# images times this, through colorization's x * 2 - 1, give exactly that.
INPUT_SCALE = 255.0 / 256.0


def to_fid_size(colorized, size=256) -> np.ndarray:
  """Model output [B, H, W, 3] in [-1, 1] -> uint8 [B, size, size, 3].

  Area resize, then clip(round((y + 1) * 128), 0, 255) in float32, as the
  evaluator does to mimic ColTran writing the colourised images as uint8.
  """
  resized = area_resize(np.asarray(colorized, np.float32), size)
  return np.clip(np.round((resized + 1.0) * 128.0), 0, 255).astype(np.uint8)
