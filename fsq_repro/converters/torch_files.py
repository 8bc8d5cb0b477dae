"""Reads PyTorch state dict files without making PyTorch a dependency of the project."""

import numpy as np


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """A .pth state dict as {name: numpy array}; needs torch, installed by the user for this."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ImportError(
        f"reading {path} needs PyTorch, which fsq_repro does not depend on: "
        "pip install torch (CPU build is enough), convert once with "
        "scripts/convert_weights.py, then use the converted file") from None
  state_dict = torch.load(path, map_location="cpu", weights_only=True)
  return {name: np.asarray(tensor.detach().numpy()) for name, tensor in state_dict.items()}
