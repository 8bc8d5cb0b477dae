"""ResNet-50 (ImageNet) as MaskGIT's perceptual loss runs it: MAGVIT's `resnet_v1.ResNet50`.

Layout and names follow MAGVIT (`videogvt/train_lib/resnet_v1.py`): a 7x7/2 stem conv and
batch norm, a 3x3/2 max pool, four stages of bottleneck blocks (3, 4, 6, 3; 1x1 -> 3x3 with
the stride -> 1x1 to 4x the width; a projection where the shape changes), then a mean pool
and a dense head. Batch norm is frozen (inference statistics, eps 1e-5) and, as in our
Inception, its statistics are ordinary parameters.

MAGVIT's `get_pretrained_embs` resizes images to 224 x 224 (jax.image.resize, bilinear) and
feeds them as they come ([0, 1]); its "pool" output, the one the perceptual loss compares,
is the last stage's feature map (N, 7, 7, 2048), not the pooled vector.

Two weight sources differ in how the network was trained, and the weight file says which
(`VARIANTS`): MAGVIT-style JAX ports pad convolutions "SAME", take [0, 1] inputs and, as
MAGVIT's root block is written, have no ReLU between init_bn and the max pool; torchvision's
weights expect symmetric padding, ImageNet mean/std normalisation and a ReLU there.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fsq_repro.models.inception import FrozenBatchNorm

INPUT_SIZE = 224
STAGE_SIZES = (3, 4, 6, 3)
BATCH_NORM_EPSILON = 1e-5
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# network name in the weight file -> the ResNet50 fields its weights were trained with
VARIANTS = {
    "resnet50_magvit": {"padding": "same", "normalization": "none", "stem_relu": False},
    "resnet50_torchvision": {"padding": "torch", "normalization": "imagenet", "stem_relu": True},
}


def _conv(features: int, kernel: int, stride: int, padding: str, name: str) -> nn.Conv:
  """A bias-free conv; "torch" pads (k - 1) // 2 on every side, "same" as Flax/TF do."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=stride, use_bias=False, name=name,
                 padding="SAME" if padding == "same" else ((pad, pad), (pad, pad)))


def _norm(name: str):
  return FrozenBatchNorm(epsilon=BATCH_NORM_EPSILON, name=name)


class Bottleneck(nn.Module):
  filters: int
  stride: int
  padding: str

  @nn.compact
  def __call__(self, x):
    residual = x
    y = nn.relu(_norm("bn1")(_conv(self.filters, 1, 1, self.padding, "conv1")(x)))
    y = nn.relu(_norm("bn2")(_conv(self.filters, 3, self.stride, self.padding, "conv2")(y)))
    y = _norm("bn3")(_conv(4 * self.filters, 1, 1, self.padding, "conv3")(y))
    if residual.shape != y.shape:
      residual = _conv(4 * self.filters, 1, self.stride, self.padding, "proj_conv")(residual)
      residual = _norm("proj_bn")(residual)
    return nn.relu(residual + y)


class Stage(nn.Module):
  size: int
  filters: int
  stride: int
  padding: str

  @nn.compact
  def __call__(self, x):
    for j in range(self.size):
      x = Bottleneck(self.filters, self.stride if j == 0 else 1, self.padding,
                     name=f"block{j + 1}")(x)
    return x


class ResNet50(nn.Module):
  """Images (B, H, W, 3) in [0, 1], any size -> (features (B, 7, 7, 2048), logits (B, 1000))."""
  padding: str = "same"  # "same" (MAGVIT) or "torch"
  normalization: str = "none"  # "none" (MAGVIT) or "imagenet"
  stem_relu: bool = False  # MAGVIT: none after init_bn; torchvision: one
  num_classes: int = 1000
  stage_sizes: Sequence[int] = STAGE_SIZES

  @nn.compact
  def __call__(self, images):
    x = jnp.asarray(images, jnp.float32)
    if x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
      x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, x.shape[3]), "bilinear")
    if self.normalization == "imagenet":
      x = (x - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    x = _norm("init_bn")(_conv(64, 7, 2, self.padding, "init_conv")(x))
    if self.stem_relu:
      x = nn.relu(x)
    pool_padding = "SAME" if self.padding == "same" else ((1, 1), (1, 1))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=pool_padding)
    for i, size in enumerate(self.stage_sizes):
      x = Stage(size, 64 * 2**i, 1 if i == 0 else 2, self.padding, name=f"stage{i + 1}")(x)
    logits = nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))
    return x, logits
