"""A transcription of google-research/maskgit's networks, for tests of our converter.

Written from reading `maskgit/nets/vqgan_tokenizer.py`, `maskgit/nets/layers.py` and
`maskgit/nets/maskgit_transformer.py` (commit 1db2359): the same module classes, in the same
order, so that Flax names their parameters as the official checkpoints name them
(Conv_0, ResBlock_3/GroupNorm_1, TransformerLayer_5/Attention_0/self_attention/query, ...),
and the same forward computation at inference (train=False, deterministic=True). The
official configs are ml_collections dicts; here their fields are module attributes.
Only what inference needs is transcribed: no losses, no Gumbel quantizer.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

LAYERNORM_EPSILON = 1e-12  # maskgit_transformer.py, "Layer norm from BERT"


# --- vqgan_tokenizer.py -----------------------------------------------------------------------


class ResBlock(nn.Module):
  """Official ResBlock: GN, swish, conv3x3, GN, swish, conv3x3; where the width changes the
  1x1 conv (use_conv_shortcut=False) is applied to the block's *output* x."""
  filters: int

  @nn.compact
  def __call__(self, x):
    input_dim = x.shape[-1]
    residual = x
    x = nn.GroupNorm()(x)
    x = nn.swish(x)
    x = nn.Conv(self.filters, kernel_size=(3, 3), use_bias=False)(x)
    x = nn.GroupNorm()(x)
    x = nn.swish(x)
    x = nn.Conv(self.filters, kernel_size=(3, 3), use_bias=False)(x)
    if input_dim != self.filters:
      residual = nn.Conv(self.filters, kernel_size=(1, 1), use_bias=False)(x)
    return x + residual


def tensorflow_style_avg_pooling(x, window_shape, strides, padding):
  """layers.py: the average excludes padded cells (no padding at even sizes)."""
  pool_sum = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1,) + window_shape + (1,),
                                   (1,) + strides + (1,), padding)
  pool_denom = jax.lax.reduce_window(jnp.ones_like(x), 0.0, jax.lax.add,
                                     (1,) + window_shape + (1,), (1,) + strides + (1,),
                                     padding)
  return pool_sum / pool_denom


def upsample(x, factor=2):
  n, h, w, c = x.shape
  return jax.image.resize(x, (n, h * factor, w * factor, c), method="nearest")


class Encoder(nn.Module):
  filters: int
  num_res_blocks: int
  channel_multipliers: Sequence[int]
  embedding_dim: int

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.filters, kernel_size=(3, 3), use_bias=False)(x)
    num_blocks = len(self.channel_multipliers)
    for i in range(num_blocks):
      filters = self.filters * self.channel_multipliers[i]
      for _ in range(self.num_res_blocks):
        x = ResBlock(filters)(x)
      if i < num_blocks - 1:
        x = tensorflow_style_avg_pooling(x, (2, 2), strides=(2, 2), padding="same")
    for _ in range(self.num_res_blocks):
      x = ResBlock(filters)(x)
    x = nn.GroupNorm()(x)
    x = nn.swish(x)
    return nn.Conv(self.embedding_dim, kernel_size=(1, 1))(x)


class Decoder(nn.Module):
  filters: int
  num_res_blocks: int
  channel_multipliers: Sequence[int]
  output_dim: int = 3

  @nn.compact
  def __call__(self, x):
    num_blocks = len(self.channel_multipliers)
    filters = self.filters * self.channel_multipliers[-1]
    x = nn.Conv(filters, kernel_size=(3, 3), use_bias=True)(x)
    for _ in range(self.num_res_blocks):
      x = ResBlock(filters)(x)
    for i in reversed(range(num_blocks)):
      filters = self.filters * self.channel_multipliers[i]
      for _ in range(self.num_res_blocks):
        x = ResBlock(filters)(x)
      if i > 0:
        x = upsample(x, 2)
        x = nn.Conv(filters, kernel_size=(3, 3))(x)
    x = nn.GroupNorm()(x)
    x = nn.swish(x)
    return nn.Conv(self.output_dim, kernel_size=(3, 3))(x)


def squared_euclidean_distance(a, b):
  """libml/losses.py."""
  b2 = jnp.sum(b.T**2, axis=0, keepdims=True)
  a2 = jnp.sum(a**2, axis=1, keepdims=True)
  return a2 - 2 * jnp.matmul(a, b.T) + b2


class VectorQuantizer(nn.Module):
  """At inference: the nearest codeword, looked up as one_hot @ codebook."""
  codebook_size: int

  @nn.compact
  def __call__(self, x):
    codebook = self.param("codebook", jax.nn.initializers.variance_scaling(
        scale=1.0, mode="fan_in", distribution="uniform"), (self.codebook_size, x.shape[-1]))
    distances = jnp.reshape(
        squared_euclidean_distance(jnp.reshape(x, (-1, x.shape[-1])), codebook),
        x.shape[:-1] + (self.codebook_size,))
    encoding_indices = jnp.argmin(distances, axis=-1)
    encodings = jax.nn.one_hot(encoding_indices, self.codebook_size)
    return jnp.dot(encodings, codebook), encoding_indices

  def decode_ids(self, ids):
    return jnp.take(self.variables["params"]["codebook"], ids, axis=0)


class VQVAE(nn.Module):
  """Official VQVAE (vqvae.quantizer="vq"): its submodules are attributes, so the checkpoint
  tree is {"encoder", "decoder", "quantizer"}."""
  filters: int = 128
  num_res_blocks: int = 2
  channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4)
  embedding_dim: int = 256
  codebook_size: int = 1024

  def setup(self):
    self.quantizer = VectorQuantizer(self.codebook_size)
    self.encoder = Encoder(self.filters, self.num_res_blocks, self.channel_multipliers,
                           self.embedding_dim)
    self.decoder = Decoder(self.filters, self.num_res_blocks, self.channel_multipliers)

  def __call__(self, image):  # for init: encoder, quantizer and decoder once each
    quantized, _ = self.quantizer(self.encoder(image))
    return self.decoder(quantized)

  def encode_to_indices(self, image):
    _, ids = self.quantizer(self.encoder(image))
    return ids

  def decode_from_indices(self, ids):
    return self.decoder(self.quantizer.decode_ids(ids))

  def reconstruct(self, image):
    quantized, _ = self.quantizer(self.encoder(image))
    return self.decoder(quantized)


# --- maskgit_transformer.py -------------------------------------------------------------------


def truncated_normal(stddev):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.truncated_normal(key=key, lower=-2, upper=2, shape=shape,
                                       dtype=dtype) * stddev
  return init


class Attention(nn.Module):
  hidden_size: int
  num_attention_heads: int
  initializer_fn: Any

  @nn.compact
  def __call__(self, layer_input, input_mask):
    attention_mask = nn.make_attention_mask(input_mask, input_mask)
    attention_output = nn.attention.SelfAttention(
        num_heads=self.num_attention_heads, qkv_features=self.hidden_size,
        deterministic=True, kernel_init=self.initializer_fn,
        bias_init=jax.nn.initializers.zeros, name="self_attention")(layer_input, attention_mask)
    return nn.LayerNorm(epsilon=LAYERNORM_EPSILON, name="attention_output_ln")(
        attention_output + layer_input)


class Mlp(nn.Module):
  hidden_size: int
  intermediate_size: int
  initializer_fn: Any

  @nn.compact
  def __call__(self, attention_output):
    x = nn.Dense(self.intermediate_size, kernel_init=self.initializer_fn,
                 name="intermediate_output")(attention_output)
    x = jax.nn.gelu(x)
    x = nn.Dense(self.hidden_size, kernel_init=self.initializer_fn, name="layer_output")(x)
    return nn.LayerNorm(epsilon=LAYERNORM_EPSILON, name="layer_output_ln")(x + attention_output)


class TransformerLayer(nn.Module):
  intermediate_size: int
  hidden_size: int
  num_attention_heads: int
  initializer_fn: Any

  @nn.compact
  def __call__(self, layer_input, input_mask):
    x = Attention(self.hidden_size, self.num_attention_heads, self.initializer_fn)(
        layer_input, input_mask)
    return Mlp(self.hidden_size, self.intermediate_size, self.initializer_fn)(x)


class Embed(nn.Module):
  embedding_size: int
  vocab_size: int
  max_position_embeddings: int
  initializer_fn: Any

  @nn.compact
  def __call__(self, input_ids):
    position_ids = jnp.arange(input_ids.shape[-1])[None, :]
    word_embeddings = nn.Embed(self.vocab_size, self.embedding_size,
                               embedding_init=self.initializer_fn,
                               name="word_embeddings")(input_ids)
    position_embeddings = nn.Embed(self.max_position_embeddings, self.embedding_size,
                                   embedding_init=self.initializer_fn,
                                   name="position_embeddings")(position_ids)
    return nn.LayerNorm(epsilon=LAYERNORM_EPSILON, name="embeddings_ln")(
        word_embeddings + position_embeddings)


class Bias(nn.Module):
  @nn.compact
  def __call__(self, inputs):
    bias = self.param("bias", nn.initializers.zeros, inputs.shape[-1])
    return inputs + jnp.broadcast_to(bias, inputs.shape)


class MlmLayer(nn.Module):
  hidden_size: int
  initializer_fn: Any

  @nn.compact
  def __call__(self, last_layer, embeddings):
    x = nn.Dense(self.hidden_size, kernel_init=self.initializer_fn, name="mlm_dense")(last_layer)
    x = jax.nn.gelu(x)
    x = nn.LayerNorm(epsilon=LAYERNORM_EPSILON, name="mlm_ln")(x)
    return Bias(name="mlm_bias")(jnp.matmul(x, jnp.transpose(embeddings)))


class Transformer(nn.Module):
  """Official Transformer at inference (deterministic=True); the mask token is id -1."""
  vocab_size: int
  hidden_size: int = 768
  num_hidden_layers: int = 24
  num_attention_heads: int = 16
  intermediate_size: int = 3072
  max_position_embeddings: int = 257
  initializer_range: float = 0.02

  @nn.compact
  def __call__(self, input_ids):
    input_ids = input_ids.astype("int32")
    init = truncated_normal(self.initializer_range)
    layer_output = Embed(self.hidden_size, self.vocab_size, self.max_position_embeddings,
                         init)(input_ids)
    for _ in range(self.num_hidden_layers):
      layer_output = TransformerLayer(self.intermediate_size, self.hidden_size,
                                      self.num_attention_heads, init)(
                                          layer_output, jnp.ones_like(input_ids))
    embedding = self.variables["params"]["Embed_0"]["word_embeddings"]["embedding"]
    return MlmLayer(self.hidden_size, init)(layer_output, embedding)
