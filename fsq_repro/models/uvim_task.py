"""UViM's Stage II, the task model (big_vision `models/proj/uvim/vtt.py`), with its names.

  image [B, H, W, 3] -> patch convolution (EmbedPatches) + position embedding -> ViT encoder
  code tokens [B, L] (code k is token k + 1; 0 starts the sequence) -> shifted right ->
  embedding + position embedding -> `num_layers` blocks of causal self-attention,
  cross-attention to the encoder and MLP -> LayerNorm -> zero-initialised logits [B, L, V].

With `decode=True` the self-attention keeps flax's key/value cache (collection "cache") and
the decoder takes one token per call: `sampling.uvim_sample_codes` runs it.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsq_repro.models import vit


def shift_right(tokens: jax.Array) -> jax.Array:
  """[B, L] -> [B, L]: 0 (the start token) first, the last token dropped (teacher forcing)."""
  return jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1]


def codes_to_tokens(codes: jax.Array) -> jax.Array:
  return jnp.asarray(codes, jnp.int32) + 1


def tokens_to_codes(tokens: jax.Array) -> jax.Array:
  """Sampled tokens back to codes; the start token 0, never a target, maps to code 0."""
  return jnp.maximum(jnp.asarray(tokens, jnp.int32) - 1, 0)


class EncoderDecoderBlock(nn.Module):
  mlp_dim: int
  num_heads: int
  dropout: float = 0.0
  decode: bool = False

  @nn.compact
  def __call__(self, targets, encoded, mask=None, deterministic: bool = True):
    attention = dict(num_heads=self.num_heads, use_bias=False, broadcast_dropout=False,
                     dropout_rate=self.dropout)
    x = nn.LayerNorm(name="LayerNorm1")(targets)
    x = nn.SelfAttention(decode=self.decode, name="SelfAttn", **attention)(
        x, mask, deterministic=deterministic)
    x = targets + nn.Dropout(rate=self.dropout)(x, deterministic)
    y = nn.LayerNorm(name="LayerNorm2")(x)
    y = nn.MultiHeadDotProductAttention(name="CrossAttn", **attention)(
        y, encoded, deterministic=deterministic)
    y = x + nn.Dropout(rate=self.dropout)(y, deterministic)
    z = vit.MlpBlock(self.mlp_dim, self.dropout, name="MLP")(
        nn.LayerNorm(name="LayerNorm3")(y), deterministic)
    return y + z


class Decoder(nn.Module):
  width: int
  mlp_dim: int
  num_heads: int
  num_layers: int
  vocab_size: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, encoded, tokens, position, *, decode: bool = False,
               deterministic: bool = True):
    """Teacher forcing: `tokens` [B, L] are the targets, shifted right here, under a causal
    mask. decode: `tokens` [B, 1] is the previous token; the cache holds the position."""
    if decode:
      is_initialized = self.has_variable("cache", "cache_index")
      index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
      if is_initialized:
        position = jax.lax.dynamic_slice_in_dim(position, index.value, 1, axis=1)
        index.value += 1
      else:  # the cache's initialisation pass, on full-length tokens: shapes only
        position = position[:, :tokens.shape[1]]
      mask = None
    else:
      tokens = shift_right(tokens)
      position = position[:, :tokens.shape[1]]
      mask = nn.make_causal_mask(tokens)
    y = nn.Embed(self.vocab_size, self.width, name="EmbedTargets",
                 embedding_init=nn.initializers.normal(stddev=1.0))(tokens.astype(jnp.int32))
    y = nn.Dropout(rate=self.dropout)(y + position, deterministic)
    for i in range(self.num_layers):
      y = EncoderDecoderBlock(self.mlp_dim, self.num_heads, self.dropout, decode,
                              name=f"EncDecBlock{i}")(y, encoded, mask, deterministic)
    y = nn.LayerNorm(name="LayerNorm")(y)
    return nn.Dense(self.vocab_size, kernel_init=nn.initializers.zeros, name="LogitsDense")(y)


class TaskModel(nn.Module):
  """Image -> logits over the Stage I code tokens (vocabulary |C| + 1)."""
  codebook_size: int
  image_size: int = 512
  patch_size: int = 16
  seq_len: int = 256
  width: int = 1024
  mlp_dim: int = 4096
  num_heads: int = 16
  encoder_layers: int = 24
  decoder_layers: int = 24
  dropout: float = 0.0

  @property
  def vocab_size(self) -> int:
    return self.codebook_size + 1

  def setup(self):
    grid = self.image_size // self.patch_size
    self.EmbedPatches = nn.Conv(self.width, (self.patch_size,) * 2, padding="VALID",
                                strides=(self.patch_size,) * 2)
    self.pos_embedding_encoder = vit.learned_position_embedding(
        self, "pos_embedding_encoder", grid * grid, self.width)
    self.pos_embedding_decoder = vit.learned_position_embedding(
        self, "pos_embedding_decoder", self.seq_len, self.width)
    self.encoder = vit.Encoder(self.encoder_layers, self.mlp_dim, self.num_heads, self.dropout)
    self.decoder = Decoder(self.width, self.mlp_dim, self.num_heads, self.decoder_layers,
                           self.vocab_size, self.dropout)

  def encode(self, image: jax.Array, *, train: bool = False) -> jax.Array:
    x = self.EmbedPatches(image)
    x = x.reshape(x.shape[0], -1, self.width)
    return self.encoder(x + self.pos_embedding_encoder, deterministic=not train)

  def decode(self, encoded: jax.Array, tokens: jax.Array, *, decode: bool = False,
             train: bool = False) -> jax.Array:
    return self.decoder(encoded, tokens, self.pos_embedding_decoder, decode=decode,
                        deterministic=not train)

  def __call__(self, image: jax.Array, tokens: jax.Array, *, train: bool = False):
    """Teacher-forced logits [B, L, V] of the target tokens [B, L]."""
    return self.decode(self.encode(image, train=train), tokens, train=train)
