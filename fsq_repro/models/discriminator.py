"""The StyleGAN2-style residual discriminator of MaskGIT's tokenizer training.

Facts from google-research/maskgit `maskgit/nets/discriminator.py` (config: channel_multiplier
1, blur_resample True): conv3x3 + leaky ReLU(0.2); one residual block per halving of the
resolution down to 4x4; each block is conv3x3 -> lrelu -> blur-downsample -> conv3x3 -> lrelu
on the main path and blur-downsample -> 1x1 conv (no bias) on the skip, summed and scaled by
1/sqrt(2); then conv3x3 -> lrelu -> flatten -> dense -> lrelu -> dense(1). No normalisation,
no minibatch-stddev layer, Xavier-uniform kernels. Blur: the [1, 3, 3, 1] outer product,
normalised to sum 1, stride 2, one pixel of zero padding per side.

Widths by resolution (MaskGIT's table, `max_filters` = 512): max_filters at 32 px and below,
(max_filters / 2) * channel_multiplier at 64 px, halving with each further doubling.
Shrink `max_filters` for small CPU models.

Paper configs (max_filters 512, channel_multiplier 1): 23,880,833 parameters at 128 px and
23,998,017 at 256 px (tests/test_vqgan.py recomputes both with jax.eval_shape).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_KERNEL_INIT = nn.initializers.xavier_uniform()
_BLUR_TAPS = np.array([1.0, 3.0, 3.0, 1.0])


def blur_downsample(x: jax.Array) -> jax.Array:
  """Depthwise [1,3,3,1]-blur then stride-2 subsampling of (B, H, W, C); H, W even.

  The blur kernel is separable, so it is applied as weighted sums of strided slices along
  H, then W: the same result as a grouped convolution, but with a backward pass (and R1's
  double backward) that XLA's CPU backend runs an order of magnitude faster.
  """
  taps = _BLUR_TAPS / _BLUR_TAPS.sum()
  for axis in (1, 2):
    padding = [(0, 0)] * 4
    padding[axis] = (1, 1)
    padded = jnp.pad(x, padding)
    size = x.shape[axis] // 2
    x = sum(float(t) * jax.lax.slice_in_dim(padded, a, a + 2 * size - 1, stride=2, axis=axis)
            for a, t in enumerate(taps))
  return x


def leaky_relu(x: jax.Array) -> jax.Array:
  return nn.leaky_relu(x, negative_slope=0.2)


def _conv(features: int, kernel: int, dtype: Any, use_bias: bool = True, name=None):
  return nn.Conv(features, (kernel, kernel), use_bias=use_bias, kernel_init=_KERNEL_INIT,
                 dtype=dtype, param_dtype=jnp.float32, name=name)


def _dense(features: int, dtype: Any, name: str):
  return nn.Dense(features, kernel_init=_KERNEL_INIT, dtype=dtype, param_dtype=jnp.float32,
                  name=name)


class DiscriminatorBlock(nn.Module):
  """Residual block that halves the resolution and maps to `filters` channels."""
  filters: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    residual = x
    x = leaky_relu(_conv(x.shape[-1], 3, self.dtype, name="conv0")(x))
    x = blur_downsample(x)
    residual = blur_downsample(residual)
    residual = _conv(self.filters, 1, self.dtype, use_bias=False, name="shortcut")(residual)
    x = leaky_relu(_conv(self.filters, 3, self.dtype, name="conv1")(x))
    return (x + residual) / math.sqrt(2.0)


class Discriminator(nn.Module):
  """Images (B, image_size, image_size, 3) -> one float32 logit per image, shape (B,)."""
  image_size: int
  channel_multiplier: int = 1
  max_filters: int = 512
  dtype: Any = jnp.float32

  def filters_at(self, resolution: int) -> int:
    """Channel width of the feature maps at `resolution` (MaskGIT's table)."""
    if resolution <= 32:
      return self.max_filters
    return self.max_filters * 32 // resolution * self.channel_multiplier

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    self._validate(images)
    x = leaky_relu(_conv(self.filters_at(self.image_size), 3, self.dtype, name="conv_in")(images))
    resolution = self.image_size
    while resolution > 4:
      resolution //= 2
      x = DiscriminatorBlock(self.filters_at(resolution), self.dtype, name=f"to_{resolution}px")(x)
    x = leaky_relu(_conv(self.filters_at(4), 3, self.dtype, name="conv_out")(x))
    x = x.reshape((x.shape[0], -1))
    x = leaky_relu(_dense(self.filters_at(4), self.dtype, name="dense")(x))
    x = _dense(1, self.dtype, name="logit")(x)
    return x[:, 0].astype(jnp.float32)

  def _validate(self, images: jax.Array) -> None:
    size = self.image_size
    if self.channel_multiplier < 1 or self.max_filters < 1:
      raise ValueError(f"channel_multiplier={self.channel_multiplier} and max_filters="
                       f"{self.max_filters} must be positive integers")
    if size < 4 or size & (size - 1):
      raise ValueError(f"image_size={size} must be a power of two >= 4")
    if self.max_filters * 32 // size * self.channel_multiplier < 1:
      raise ValueError(f"max_filters={self.max_filters} is too small for image_size={size}; "
                       f"use max_filters >= {size // 32}")
    if images.ndim != 4 or images.shape[1:3] != (size, size):
      raise ValueError(f"the discriminator was built for image_size={size}, got images of "
                       f"shape {images.shape}; set image_size to the image height")
