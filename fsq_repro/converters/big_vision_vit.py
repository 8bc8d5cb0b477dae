"""big_vision / vision_transformer ViT checkpoints (`.npz`) into UViM's task-model encoder.

The AugReg files (e.g. `L_16-i21k-300ep-...npz`) hold flat "/"-joined names in the pre-Linen
layout: `Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_1,
LayerNorm_2, MlpBlock_3}`, the position embedding under `Transformer/posembed_input` with a
[CLS] entry first, and `embedding` (the patch convolution), `cls`, `head`. As big_vision's
`vit.load` does, the per-type indices are renumbered (LayerNorm_0/1, ..._0), the [CLS]
position is dropped, and the 14x14 grid is resampled to the model's (`scipy.ndimage.zoom`,
linear); the head and [CLS] token are not used.
"""

import re

import numpy as np
import scipy.ndimage


def read_npz(path: str) -> dict:
  """The nested tree of a flat "/"-keyed `.npz`."""
  tree = {}
  with np.load(path) as data:
    for key in data.files:
      *parents, leaf = key.split("/")
      node = tree
      for name in parents:
        node = node.setdefault(name, {})
      node[leaf] = data[key]
  return tree


def renumber_pre_linen(tree: dict) -> dict:
  """Type_N children renumbered 0.. per type, in N order (flax's `convert_pre_linen`)."""
  if not isinstance(tree, dict):
    return tree
  numbered = {}
  for name in tree:
    match = re.fullmatch(r"(.+)_(\d+)", name)
    if match and not name.startswith("encoderblock_"):
      numbered.setdefault(match.group(1), []).append((int(match.group(2)), name))
  renamed = {}
  for kind, entries in numbered.items():
    for new_index, (_, name) in enumerate(sorted(entries)):
      renamed[name] = f"{kind}_{new_index}"
  return {renamed.get(name, name): renumber_pre_linen(child) for name, child in tree.items()}


def resample_position_embedding(posemb: np.ndarray, grid: int) -> np.ndarray:
  """[1, n (+1 for CLS), D] -> [1, grid * grid, D]: CLS dropped, square grid zoomed linearly."""
  n = posemb.shape[1]
  side = int(round(np.sqrt(n)))
  if side * side != n:
    side = int(round(np.sqrt(n - 1)))
    if side * side + 1 != n:
      raise ValueError(f"position embedding of {n} entries is neither a square grid nor one "
                       "plus [CLS]")
    posemb = posemb[:, 1:]
  if side == grid:
    return posemb
  zoomed = scipy.ndimage.zoom(posemb.reshape(side, side, -1), (grid / side, grid / side, 1),
                              order=1)
  return zoomed.reshape(1, grid * grid, -1)


def task_encoder_params(tree: dict, grid: int) -> dict:
  """The TaskModel parameters this checkpoint provides: EmbedPatches, pos_embedding_encoder
  and encoder/{encoderblock_i, encoder_norm}."""
  transformer = dict(tree["Transformer"])
  posemb = transformer.pop("posembed_input", {}).get("pos_embedding")
  posemb = transformer.pop("pos_embedding", posemb)
  if posemb is None:
    posemb = tree["pos_embedding"]
  return {"EmbedPatches": dict(tree["embedding"]),
          "pos_embedding_encoder": resample_position_embedding(np.asarray(posemb), grid),
          "encoder": renumber_pre_linen(transformer)}


def load_task_encoder(params: dict, path: str, grid: int) -> dict:
  """`params` (a TaskModel's) with the encoder of the ViT checkpoint at `path`; every loaded
  array must have the shape of the parameter it replaces (one error line names it)."""
  loaded = task_encoder_params(read_npz(path), grid)

  def merge(target, source, where):
    if isinstance(target, dict):
      if not isinstance(source, dict) or set(source) != set(target):
        missing = sorted(set(target) - set(source if isinstance(source, dict) else {}))
        extra = sorted(set(source if isinstance(source, dict) else {}) - set(target))
        raise ValueError(f"{path}: {where or 'the checkpoint'} does not match the model "
                         f"(missing {missing}, unexpected {extra}); is it a ViT of this "
                         "width and depth?")
      return {k: merge(target[k], source[k], f"{where}/{k}".strip("/")) for k in target}
    if tuple(np.shape(source)) != tuple(target.shape):
      raise ValueError(f"{path}: {where} has shape {np.shape(source)}, the model "
                       f"{tuple(target.shape)}; use the ViT of the config's width and patch")
    return np.asarray(source, target.dtype)

  return {**params, **{k: merge(params[k], v, k) for k, v in loaded.items()}}
