"""MaskGIT's VQGAN tokenizer (convolutional, no attention) around any quantizer.

Facts from google-research/maskgit `maskgit/nets/vqgan_tokenizer.py`: convolutions in the
residual blocks and the encoder's first conv have no bias, all other convs do; GroupNorm
(flax defaults: 32 groups, eps 1e-6) and swish; 2x2 average-pool downsampling
(conv_downsample=False); nearest x2 upsampling followed by a 3x3 conv. Images are in [0, 1].

Residual blocks are computed as MaskGIT's `ResBlock` computes them: where a block changes
width, the bias-free 1x1 conv is applied to the block's *output* h (y = h + conv1x1(h), a
C_out x C_out kernel), not to its input, so those blocks carry no identity path. That is what
the official checkpoints were trained with (scripts/convert_weights.py maskgit loads them).

Paper configs (filters 128, multipliers [1, 1, 2, 2, 4], 2 residual blocks; fully
convolutional, so every image size has the same count): 52,962,951 parameters with FSQ
levels [8, 5, 5, 5] and 54,515,587 with a 1024 x 256 VQ codebook, the official VQ tokenizer's
count (tests/test_vqgan.py counts them from the architecture and with jax.eval_shape).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsq_repro.models import cpu_conv
from fsq_repro.quantizers.interface import QuantizerOutput

IMAGE_CHANNELS = 3


def group_norm(num_groups: int, channels: int, dtype: Any, name: str | None = None):
  """GroupNorm with min(num_groups, channels) groups, so narrow CPU models work too."""
  groups = min(num_groups, channels)
  if num_groups < 1 or channels % groups:
    raise ValueError(f"num_groups={num_groups} does not divide {channels} channels; pick "
                     "num_groups so that min(num_groups, channels) divides every width")
  return nn.GroupNorm(num_groups=groups, epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32,
                      name=name)


def _conv(features: int, kernel: int, use_bias: bool, dtype: Any, kernel_gradient: str,
          name: str | None = None):
  return nn.Conv(features, (kernel, kernel), use_bias=use_bias, dtype=dtype,
                 param_dtype=jnp.float32,
                 conv_general_dilated=cpu_conv.KERNEL_GRADIENTS[kernel_gradient], name=name)


def _downsample(x: jax.Array) -> jax.Array:
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def _upsample(x: jax.Array) -> jax.Array:
  """Nearest-neighbour x2 (same as jax.image.resize 'nearest' for a factor of 2)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ResBlock(nn.Module):
  """GN-swish-conv3x3-GN-swish-conv3x3 = h; h + x, or h + conv1x1(h) where the width changes."""
  filters: int
  num_groups: int = 32
  dtype: Any = jnp.float32
  kernel_gradient: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda features, kernel, **kw: _conv(features, kernel, False, self.dtype,
                                                self.kernel_gradient, **kw)
    residual = x
    x = group_norm(self.num_groups, x.shape[-1], self.dtype)(x)
    x = nn.swish(x)
    x = conv(self.filters, 3)(x)
    x = group_norm(self.num_groups, self.filters, self.dtype)(x)
    x = nn.swish(x)
    x = conv(self.filters, 3)(x)
    if residual.shape[-1] != self.filters:
      residual = conv(self.filters, 1, name="skip")(x)  # of the output, as MaskGIT's code
    return x + residual


def _res_block(remat: bool):
  """ResBlock, or one that recomputes its activations in the backward pass (same params)."""
  return nn.remat(ResBlock) if remat else ResBlock


class Encoder(nn.Module):
  """Images (B, H, W, 3) -> latents (B, H/f, W/f, latent_dim), f = 2^(levels - 1)."""
  latent_dim: int
  filters: int = 128
  channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  num_groups: int = 32
  dtype: Any = jnp.float32
  remat: bool = False
  kernel_gradient: str = "auto"  # cpu_conv.KERNEL_GRADIENTS

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    block = lambda width, name: _res_block(self.remat)(
        width, self.num_groups, self.dtype, self.kernel_gradient, name=name)
    conv = lambda *args, **kw: _conv(*args, self.dtype, self.kernel_gradient, **kw)
    x = conv(self.filters, 3, False, name="conv_in")(images)
    last = len(self.channel_multipliers) - 1
    for level, multiplier in enumerate(self.channel_multipliers):
      for i in range(self.num_res_blocks):
        x = block(self.filters * multiplier, f"level{level}_block{i}")(x)
      if level < last:
        x = _downsample(x)
    width = self.filters * self.channel_multipliers[-1]
    for i in range(self.num_res_blocks):
      x = block(width, f"mid_block{i}")(x)
    x = group_norm(self.num_groups, width, self.dtype, name="norm_out")(x)
    x = nn.swish(x)
    return conv(self.latent_dim, 1, True, name="conv_out")(x)


class Decoder(nn.Module):
  """Latents (B, h, w, latent_dim) -> images (B, h*f, w*f, 3), in the compute dtype."""
  filters: int = 128
  channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  num_groups: int = 32
  dtype: Any = jnp.float32
  remat: bool = False
  kernel_gradient: str = "auto"  # cpu_conv.KERNEL_GRADIENTS

  @nn.compact
  def __call__(self, latents: jax.Array) -> jax.Array:
    block = lambda width, name: _res_block(self.remat)(
        width, self.num_groups, self.dtype, self.kernel_gradient, name=name)
    conv = lambda *args, **kw: _conv(*args, self.dtype, self.kernel_gradient, **kw)
    width = self.filters * self.channel_multipliers[-1]
    x = conv(width, 3, True, name="conv_in")(latents)
    for i in range(self.num_res_blocks):
      x = block(width, f"mid_block{i}")(x)
    for level in reversed(range(len(self.channel_multipliers))):
      width = self.filters * self.channel_multipliers[level]
      for i in range(self.num_res_blocks):
        x = block(width, f"level{level}_block{i}")(x)
      if level > 0:
        x = _upsample(x)
        x = conv(width, 3, True, name=f"level{level}_upsample_conv")(x)
    x = group_norm(self.num_groups, width, self.dtype, name="norm_out")(x)
    x = nn.swish(x)
    return conv(IMAGE_CHANNELS, 3, True, name="conv_out")(x)


class Autoencoder(nn.Module):
  """Encoder -> quantizer -> decoder. The quantizer is any module of the quantizer interface.

  The encoder ends in `quantizer.latent_dim` channels. Its output is cast to float32 before
  the quantizer, so quantization runs in float32 whatever `dtype` the convolutions use.
  Reconstructions are returned in float32. `kernel_gradient` names how convolutions compute
  their kernel gradients (`cpu_conv.KERNEL_GRADIENTS`). `remat` recomputes each residual block's
  activations in the backward pass instead of storing them (same parameters and results;
  less memory, one more forward pass of compute).
  """
  quantizer: nn.Module
  filters: int = 128
  channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  num_groups: int = 32
  dtype: Any = jnp.float32
  remat: bool = False
  kernel_gradient: str = "auto"  # cpu_conv.KERNEL_GRADIENTS

  def setup(self):
    _validate_architecture(self.filters, self.channel_multipliers, self.num_res_blocks)
    shared = dict(filters=self.filters, channel_multipliers=tuple(self.channel_multipliers),
                  num_res_blocks=self.num_res_blocks, num_groups=self.num_groups,
                  dtype=self.dtype, remat=self.remat, kernel_gradient=self.kernel_gradient)
    self.encoder = Encoder(latent_dim=self.quantizer.latent_dim, **shared)
    self.decoder = Decoder(**shared)

  @property
  def downsampling_factor(self) -> int:
    return 2**(len(self.channel_multipliers) - 1)

  def __call__(self, images: jax.Array, *, train: bool) -> tuple[jax.Array, QuantizerOutput]:
    """Images (B, H, W, 3) in [0, 1] -> (float32 reconstructions, quantizer output)."""
    zq, quantizer_output = self.encode(images, train=train)
    return self.decode(zq), quantizer_output

  def encode(self, images: jax.Array, *, train: bool = False):
    """Images -> (zq (B, h, w, latent_dim) float32, QuantizerOutput with (B, h, w) indices)."""
    self._check_images(images)
    z = self.encoder(images).astype(jnp.float32)
    return self.quantizer(z, train=train)

  def decode(self, zq: jax.Array) -> jax.Array:
    return self.decoder(zq).astype(jnp.float32)

  def decode_indices(self, indices: jax.Array) -> jax.Array:
    """Token indices (B, h, w) -> float32 images (B, h*f, w*f, 3)."""
    return self.decode(self.quantizer.decode_indices(indices))

  def _check_images(self, images: jax.Array) -> None:
    f = self.downsampling_factor
    if images.ndim != 4 or images.shape[-1] != IMAGE_CHANNELS:
      raise ValueError(f"images must have shape (batch, height, width, 3), got {images.shape}")
    if images.shape[1] % f or images.shape[2] % f:
      raise ValueError(f"image size {images.shape[1:3]} must be divisible by the downsampling "
                       f"factor {f} (2^(len(channel_multipliers) - 1))")


def _validate_architecture(filters, channel_multipliers, num_res_blocks) -> None:
  if filters < 1:
    raise ValueError(f"filters={filters} must be a positive integer")
  if not channel_multipliers or any(m < 1 for m in channel_multipliers):
    raise ValueError(f"channel_multipliers={list(channel_multipliers)} must be a non-empty "
                     "list of positive integers, e.g. [1, 1, 2, 2, 4]")
  if num_res_blocks < 1:
    raise ValueError(f"num_res_blocks={num_res_blocks} must be at least 1")
