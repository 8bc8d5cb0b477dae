"""The pre-LN ViT encoder of big_vision (`big_vision/models/vit.py`), with its parameter names.

The same names and initialisers as big_vision's `Encoder`, so big_vision ViT checkpoints
(`encoderblock_{i}/...`, `encoder_norm`) map onto it one to one. UViM builds both of its
stages from it.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def learned_position_embedding(module: nn.Module, name: str, length: int, width: int):
  """big_vision's "learn" position embedding: [1, length, width], normal(1/sqrt(width))."""
  return module.param(name, nn.initializers.normal(stddev=1 / np.sqrt(width)),
                      (1, length, width), jnp.float32)


class MlpBlock(nn.Module):
  mlp_dim: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    inits = dict(kernel_init=nn.initializers.xavier_uniform(),
                 bias_init=nn.initializers.normal(stddev=1e-6))
    y = nn.gelu(nn.Dense(self.mlp_dim, **inits)(x))
    y = nn.Dropout(rate=self.dropout)(y, deterministic)
    return nn.Dense(x.shape[-1], **inits)(y)


class EncoderBlock(nn.Module):
  """x + attention(LN(x)), then + MLP(LN(x)); dropout after each."""
  mlp_dim: int
  num_heads: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    y = nn.LayerNorm()(x)
    y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads,
                                        kernel_init=nn.initializers.xavier_uniform(),
                                        deterministic=deterministic)(y, y)
    x = x + nn.Dropout(rate=self.dropout)(y, deterministic)
    y = MlpBlock(self.mlp_dim, self.dropout)(nn.LayerNorm()(x), deterministic)
    return x + nn.Dropout(rate=self.dropout)(y, deterministic)


class Encoder(nn.Module):
  """`depth` EncoderBlocks (named encoderblock_{i}) and a final LayerNorm (encoder_norm)."""
  depth: int
  mlp_dim: int
  num_heads: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    for i in range(self.depth):
      x = EncoderBlock(self.mlp_dim, self.num_heads, self.dropout,
                       name=f"encoderblock_{i}")(x, deterministic)
    return nn.LayerNorm(name="encoder_norm")(x)
