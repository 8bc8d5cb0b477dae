"""Our on-disk format for pretrained weights (Inception, LPIPS-VGG, ...).

A weight file is a flax msgpack of a plain nested dict of numpy arrays, plus a
"meta" entry naming the network and where the weights came from, so every metric
computed with them can say which network produced it.
"""

import os

import flax.serialization
import numpy as np

from fsq_repro import files


def save_params(path: str, params, *, network: str, source: str) -> None:
  """Writes `params` (a nested dict of arrays) and provenance to `path`."""
  tree = {"params": params, "meta": {"network": network, "source": source}}
  data = flax.serialization.msgpack_serialize(
      flax.serialization.to_state_dict(_to_numpy(tree)))
  with files.atomic_write(path, "wb") as f:
    f.write(data)


def load(path: str) -> tuple[dict, dict]:
  """(params, meta) of a weight file written by `save_params`."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"no weight file at {path}")
  with open(path, "rb") as f:
    tree = flax.serialization.msgpack_restore(f.read())
  return tree["params"], tree.get("meta", {})


def load_params(path: str, *, network: str):
  """Reads a weight file written by `save_params`; checks it holds `network`."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"no {network} weights at {path}")
  params, meta = load(path)
  if meta.get("network") != network:
    raise ValueError(f"{path} holds weights for {meta.get('network')!r}, expected {network!r}")
  return params


def _to_numpy(tree):
  if isinstance(tree, dict):
    return {k: _to_numpy(v) for k, v in tree.items()}
  if isinstance(tree, str):
    return tree
  return np.asarray(tree)
