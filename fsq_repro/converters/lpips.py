"""LPIPS-VGG16 weights from torchvision's vgg16 and LPIPS v0.1's lin layers, into ours."""

from typing import Any, Mapping

import numpy as np

from fsq_repro.models.perceptual import FEATURE_CHANNELS, VGG16_STAGES


def params_from_torch_state_dicts(vgg_state_dict: Mapping[str, Any],
                                  lpips_lin_state_dict: Mapping[str, Any]) -> dict:
  """Converts torch state dicts (as numpy arrays) to `LPIPS` params.

  vgg_state_dict: torchvision vgg16 keys `features.N.weight` (O, I, 3, 3) and
  `features.N.bias`; other keys (the classifier) are ignored. lpips_lin_state_dict: LPIPS
  v0.1 keys `lin{0..4}.model.1.weight` of shape (1, C, 1, 1). Torch and lax convolutions
  are both cross-correlations, so kernels only change layout: OIHW -> HWIO.
  """
  vgg = {}
  in_channels = 3
  for stage in VGG16_STAGES:
    for name, index, channels in stage:
      kernel = _get_array(vgg_state_dict, f"features.{index}.weight",
                          (channels, in_channels, 3, 3))
      bias = _get_array(vgg_state_dict, f"features.{index}.bias", (channels,))
      vgg[name] = {"kernel": kernel.transpose(2, 3, 1, 0), "bias": bias}
      in_channels = channels
  params = {"vgg": vgg}
  for i, channels in enumerate(FEATURE_CHANNELS):
    key = f"lin{i}.model.1.weight"
    kernel = _get_array(lpips_lin_state_dict, key, (1, channels, 1, 1))
    if np.any(kernel < 0):
      raise ValueError(f"{key} has negative entries; LPIPS lin weights are non-negative, so "
                       "this is not an LPIPS weight file")
    params[f"lin{i}"] = {"kernel": kernel.transpose(2, 3, 1, 0)}
  return params


def _get_array(state_dict: Mapping[str, Any], key: str, shape: tuple) -> np.ndarray:
  if key not in state_dict:
    raise ValueError(f"state dict has no {key!r}; pass torchvision's vgg16 state dict and "
                     "LPIPS v0.1 vgg.pth")
  array = np.asarray(state_dict[key], np.float32)
  if array.shape != shape:
    raise ValueError(f"{key} has shape {array.shape}, expected {shape}")
  return array
