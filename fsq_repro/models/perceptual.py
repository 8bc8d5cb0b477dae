"""Stage I's perceptual loss: MaskGIT's ResNet-50 feature distance, or LPIPS-VGG16.

  resnet50  (the paper's recipe) MAGVIT's `calculate_perceptual_loss_on_pretrained` as
            MaskGIT's vqgan_config sets it (perceptual_loss_on_logit=False): the mean squared
            difference of the ResNet-50 last-stage feature maps (7 x 7 x 2048 at 224 px,
            models/resnet.py) of reconstructions and images. Weight 0.1.
  lpips     LPIPS-VGG16 (Zhang et al., 2018, PerceptualSimilarity v0.1), mean over the batch:

              d(x, y) = sum_l mean_hw( w_l . (n(f_l(x)) - n(f_l(y)))^2 )

            f_l are the VGG16 activations relu1_2 ... relu5_3 after LPIPS's scaling layer,
            n() divides each position by its channel L2 norm (+1e-10), w_l >= 0 are LPIPS's
            1x1 "lin" weights. Images come in [0, 1] and are mapped to LPIPS's [-1, 1].
  none      no perceptual term (the demo: no weights can be downloaded here).

Weights are never downloaded: convert them once with scripts/convert_weights.py (resnet50:
torchvision's resnet50 .pth or a MAGVIT-style .npy; lpips: torchvision's vgg16 .pth and
LPIPS's vgg.pth) and point stage1.perceptual_weights or the network's environment variable
(WEIGHTS_ENV_VARS) at the file. A loss that is asked for without its weights is an error.
"""

import dataclasses
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fsq_repro.models import resnet, weights

NETWORK_NAME = "lpips_vgg16"
KINDS = ("resnet50", "lpips", "none")
WEIGHTS_ENV_VARS = {"resnet50": "FSQ_RESNET50_WEIGHTS", "lpips": "FSQ_LPIPS_WEIGHTS"}
HOW_TO_CONVERT = {
    "resnet50": "python scripts/convert_weights.py resnet50 --torch=resnet50-0676ba61.pth "
                "--out=resnet50.msgpack (or --magvit_npy=<MAGVIT's resnet50 .npy>)",
    "lpips": "python scripts/convert_weights.py lpips --torch=vgg16-397923af.pth --lin=vgg.pth "
             "--out=lpips_vgg16.msgpack",
}

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


@dataclasses.dataclass(frozen=True)
class PerceptualLoss:
  """A perceptual loss: its frozen `params` and `distance(params, reconstructions, images)`,
  the float32 batch mean the train step weights by stage1.perceptual_weight."""
  kind: str
  params: Any
  distance: Callable
  source: str  # where the weights came from, for the log and config.json


def find_weights(kind: str, path: str | None = None) -> str | None:
  """The weight file of perceptual loss `kind`: `path`, else its environment variable.

  A path that is given but is not a file is an error, never a silent "off".
  """
  variable = WEIGHTS_ENV_VARS[kind]
  for source, candidate in (("stage1.perceptual_weights", path),
                            (f"${variable}", os.environ.get(variable))):
    if candidate:
      if not os.path.isfile(candidate):
        raise ValueError(f"{source}={candidate!r} is not a file; convert the {kind} weights "
                         f"with `{HOW_TO_CONVERT[kind]}` and point it at the output")
      return candidate
  return None


def check_available(kind: str, path: str | None = None) -> None:
  """Raises ValueError in one line unless loss `kind` can be built (its weights exist)."""
  if kind not in KINDS:
    raise ValueError(f"stage1.perceptual_loss={kind!r} is unknown; use one of {KINDS}")
  if kind != "none" and find_weights(kind, path) is None:
    raise ValueError(
        f"stage1.perceptual_loss={kind!r} needs its ImageNet weights, which are never "
        f"downloaded: get and convert them with `{HOW_TO_CONVERT[kind]}`, then set "
        f"--config.stage1.perceptual_weights or ${WEIGHTS_ENV_VARS[kind]}; or train without "
        "it: --config.stage1.perceptual_loss=none")


def _resnet50_loss(path: str) -> PerceptualLoss:
  params, meta = weights.load(path)
  variant = meta.get("network")
  if variant not in resnet.VARIANTS:
    raise ValueError(f"{path} holds weights for {variant!r}, not a ResNet-50 of "
                     f"{sorted(resnet.VARIANTS)}")
  model = resnet.ResNet50(**resnet.VARIANTS[variant])

  def distance(params, reconstructions, images):
    fake, _ = model.apply({"params": params}, reconstructions)
    real, _ = model.apply({"params": params}, images)
    return jnp.mean(jnp.square(real.astype(jnp.float32) - fake.astype(jnp.float32)))

  return PerceptualLoss("resnet50", params, distance, f"{variant} weights from {path}")


def _lpips_loss(path: str) -> PerceptualLoss:
  model = LPIPS()

  def distance(params, reconstructions, images):
    return jnp.mean(model.apply({"params": params}, reconstructions, images))

  return PerceptualLoss("lpips", load_lpips_params(path), distance,
                        f"{NETWORK_NAME} weights from {path}")


LOSSES = {"resnet50": _resnet50_loss, "lpips": _lpips_loss}


def load(kind: str, path: str | None = None) -> PerceptualLoss | None:
  """The perceptual loss `kind` with its weights; None for "none"."""
  check_available(kind, path)
  return None if kind == "none" else LOSSES[kind](find_weights(kind, path))


def status(loss: PerceptualLoss | None) -> str:
  """One log line saying which perceptual loss is on, or that it is off."""
  if loss is None:
    return "perceptual loss: off (stage1.perceptual_loss='none')"
  return f"perceptual loss: {loss.kind} ({loss.source})"
