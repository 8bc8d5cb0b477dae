"""LPIPS with a VGG16 trunk: the perceptual loss of our Stage I training.

MaskGIT's perceptual loss used a ResNet-50 whose weights were never published; LPIPS-VGG
(Zhang et al., 2018, richzhang/PerceptualSimilarity v0.1) is the common public substitute.

    d(x, y) = sum_l mean_hw( w_l . (n(f_l(x)) - n(f_l(y)))^2 )

f_l are the VGG16 activations relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of the input
after LPIPS's scaling layer, n() divides each spatial position by its channel L2 norm
(+1e-10), and w_l >= 0 are LPIPS's 1x1 "lin" weights (no bias). Images come in [0, 1] and are
mapped to the [-1, 1] that LPIPS expects.

Weights are not downloadable here: convert them once (`scripts/convert_weights.py lpips`, needs
PyTorch) from torchvision's vgg16 `.pth` and LPIPS's `lpips/weights/v0.1/vgg.pth`, then point
FSQ_LPIPS_WEIGHTS (or stage1.perceptual_weights) at the converted file.
"""

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fsq_repro.models import weights

NETWORK_NAME = "lpips_vgg16"
WEIGHTS_ENV_VAR = "FSQ_LPIPS_WEIGHTS"

# LPIPS's ScalingLayer: (x - shift) / scale on [-1, 1] inputs.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

# VGG16 stages: (name, torchvision `features` index, output channels) per conv; each stage
# ends in the tapped ReLU and is followed by a 2x2 max pool (except the last).
VGG16_STAGES = (
    (("conv1_1", 0, 64), ("conv1_2", 2, 64)),
    (("conv2_1", 5, 128), ("conv2_2", 7, 128)),
    (("conv3_1", 10, 256), ("conv3_2", 12, 256), ("conv3_3", 14, 256)),
    (("conv4_1", 17, 512), ("conv4_2", 19, 512), ("conv4_3", 21, 512)),
    (("conv5_1", 24, 512), ("conv5_2", 26, 512), ("conv5_3", 28, 512)),
)
FEATURE_CHANNELS = tuple(stage[-1][2] for stage in VGG16_STAGES)


def _normalize_channels(features: jax.Array) -> jax.Array:
  norm = jnp.sqrt(jnp.sum(features**2, axis=-1, keepdims=True))
  return features / (norm + 1e-10)


class VGG16Trunk(nn.Module):
  """The five tapped VGG16 activations (relu1_2 ... relu5_3) of LPIPS-scaled inputs."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    taps = []
    for stage_index, stage in enumerate(VGG16_STAGES):
      if stage_index > 0:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      for name, _, channels in stage:
        conv = nn.Conv(channels, (3, 3), padding=1, dtype=self.dtype,
                       param_dtype=jnp.float32, name=name)
        x = nn.relu(conv(x))
      taps.append(x)
    return taps


class LPIPS(nn.Module):
  """LPIPS-VGG16 distance between two image batches in [0, 1]; returns (B,) float32.

  Frozen network: pass its params as given and differentiate only with respect to images.
  """
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, targets: jax.Array) -> jax.Array:
    if images.shape != targets.shape or images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"LPIPS needs two (B, H, W, 3) batches of one shape, got {images.shape} "
                       f"and {targets.shape}")
    batch = images.shape[0]
    both = 2.0 * jnp.concatenate([images, targets], axis=0).astype(jnp.float32) - 1.0
    both = (both - np.array(LPIPS_SHIFT, np.float32)) / np.array(LPIPS_SCALE, np.float32)
    features = VGG16Trunk(self.dtype, name="vgg")(both)
    distance = jnp.zeros((batch,), jnp.float32)
    for i, f in enumerate(features):
      f = _normalize_channels(f.astype(jnp.float32))
      squared_difference = (f[:batch] - f[batch:])**2
      lin = nn.Conv(1, (1, 1), use_bias=False, param_dtype=jnp.float32, name=f"lin{i}")
      distance = distance + jnp.mean(lin(squared_difference), axis=(1, 2, 3))
    return distance


def load_lpips_params(path: str) -> dict:
  """Reads a converted LPIPS-VGG16 weight file."""
  return weights.load_params(path, network=NETWORK_NAME)


def find_perceptual_weights(path: str | None = None) -> str | None:
  """The LPIPS weight file to use: `path`, else $FSQ_LPIPS_WEIGHTS, else None.

  A path that is given but is not a file is an error, never a silent "off".
  """
  for source, candidate in (("stage1.perceptual_weights", path),
                            (f"${WEIGHTS_ENV_VAR}", os.environ.get(WEIGHTS_ENV_VAR))):
    if candidate:
      if not os.path.isfile(candidate):
        raise ValueError(f"{source}={candidate!r} is not a file; convert the LPIPS weights "
                         "with `python scripts/convert_weights.py lpips ...` and point it at "
                         "the output, or leave it unset")
      return candidate
  return None


def perceptual_status(path: str | None) -> str:
  """One log line saying whether the perceptual loss is on, and why."""
  if path:
    return f"perceptual loss: on (LPIPS-VGG16 weights from {path})"
  return (f"perceptual loss: off (no weight path given and ${WEIGHTS_ENV_VAR} is unset; "
          "see `python scripts/convert_weights.py lpips`)")
