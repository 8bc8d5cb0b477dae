"""UViM's Stage I, the label autoencoder (big_vision `models/proj/uvim/vit.py`), any quantizer.

  labels {key: [B, H, W, C]} -> patches -> one dense map per key, summed (+ the context
  image's patch convolution) -> + position embedding -> ViT encoder -> the patch grid
  resized to the code grid (linear, antialiased) -> dense to the quantizer's latent size
  (standardised per token for UViM's VQ) -> quantizer -> code dropout (training) -> dense
  stem -> resized back to the patch grid (+ a second context convolution) -> + position
  embedding -> ViT decoder -> one zero-initialised dense head per key -> patches -> labels.

Code dropout keeps, per example, a uniformly random number (0..N) of randomly placed codes.
big_vision sets dropped codes to the zero vector, which UViM's unit-norm codewords never
are; FSQ with only odd levels (the paper's [7,5,5,5,5]) has the zero vector as a real code,
so `dropped_code="flag"` also appends a channel that is 1 where a code was dropped: the
decoder always knows what it was not given, whatever the quantizer.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsq_repro.models import vit

DROPPED_CODE_MARKERS = ("zero", "flag")


def patchify(x: jax.Array, patch: int) -> jax.Array:
  """[B, H, W, C] -> [B, (H/p)(W/p), C, p*p], patches in raster order (big_vision's layout)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, (h // patch) * (w // patch), c, patch**2)


def unpatchify(x: jax.Array, grid: int, patch: int) -> jax.Array:
  """Inverse of `patchify` for a square image of grid x grid patches."""
  b, _, c, _ = x.shape
  x = x.reshape(b, grid, grid, c, patch, patch)
  return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, grid * patch, grid * patch, c)


def code_dropout_mask(rng: jax.Array, batch: int, length: int) -> jax.Array:
  """bool [batch, length], True = kept: each row keeps floor-uniform many codes in 0..length,
  at random places (UViM's code_dropout="random")."""
  count_rng, place_rng = jax.random.split(rng)
  importance = jnp.linspace(1.0, 0.0, length + 2)[1:-1]
  threshold = jax.random.uniform(count_rng, (batch,))
  mask = importance[None, :] > threshold[:, None]
  return jax.random.permutation(place_rng, mask, axis=-1, independent=True)


def drop_codes(zq: jax.Array, keep: jax.Array, marker: str) -> jax.Array:
  """The decoder's input: codes [B, N, d] zeroed where `keep` [B, N] is False; with
  marker "flag", plus a last channel that is 1 exactly where a code was dropped."""
  keep = keep[..., None].astype(zq.dtype)
  if marker == "zero":
    return zq * keep
  return jnp.concatenate([zq * keep, 1.0 - keep], axis=-1)


class LabelAutoencoder(nn.Module):
  """Encodes labels (with the task image as context) to `code_len` codes and decodes them."""
  quantizer: nn.Module  # any module of the quantizer interface
  labels: tuple[tuple[str, int], ...]  # (label key, channels), e.g. (("color", 3),)
  image_size: int = 512
  patch_size: int = 16
  code_len: int = 256
  width: int = 768
  enc_depth: int = 6
  dec_depth: int = 12
  mlp_dim: int = 3072
  num_heads: int = 12
  encoder_context: bool = True
  decoder_context: bool = True
  code_dropout: bool = True
  dropped_code: str = "flag"
  standardize: bool = True  # UViM's VQ; FSQ bounds its latents itself

  def setup(self):
    grid = self.image_size // self.patch_size
    side = round(self.code_len**0.5)
    if self.image_size % self.patch_size or side * side != self.code_len or side > grid:
      raise ValueError(f"image_size={self.image_size}, patch_size={self.patch_size} and "
                       f"code_len={self.code_len}: the patch must divide the image and code_len "
                       "be a square no larger than the patch grid")
    if self.dropped_code not in DROPPED_CODE_MARKERS:
      raise ValueError(f"dropped_code={self.dropped_code!r} is unknown; use one of "
                       f"{DROPPED_CODE_MARKERS}")
    self.grid, self.code_side = grid, side
    self.embeddings = {key: nn.DenseGeneral(self.width, axis=(-2, -1), name=f"embedding_{key}")
                       for key, _ in self.labels}
    self.heads = {key: nn.DenseGeneral((channels, self.patch_size**2),
                                       kernel_init=nn.initializers.zeros, name=f"head_{key}")
                  for key, channels in self.labels}
    conv = dict(kernel_size=(self.patch_size,) * 2, strides=(self.patch_size,) * 2,
                padding="VALID")
    if self.encoder_context:
      self.encoder_context_embedding = nn.Conv(self.width, **conv)
    if self.decoder_context:
      self.decoder_context_embedding = nn.Conv(self.width, **conv)
    vit_args = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads)
    self.encoder = vit.Encoder(self.enc_depth, **vit_args)
    self.decoder = vit.Encoder(self.dec_depth, **vit_args)
    self.encoder_position = vit.learned_position_embedding(self, "pos_embedding_encoder",
                                                           grid * grid, self.width)
    self.decoder_position = vit.learned_position_embedding(self, "pos_embedding_decoder",
                                                           grid * grid, self.width)
    self.encoder_head = nn.Dense(self.quantizer.latent_dim)
    self.decoder_stem = nn.Dense(self.width)

  def _resize(self, x: jax.Array, side: int) -> jax.Array:
    b, n, c = x.shape
    old = round(n**0.5)
    x = jax.image.resize(x.reshape(b, old, old, c), (b, side, side, c), method="linear")
    return x.reshape(b, side * side, c)

  def _context(self, embedding, context: Optional[jax.Array]) -> jax.Array:
    if context is None:
      raise ValueError("this label autoencoder embeds the task image as context: pass it")
    x = embedding(context)
    return x.reshape(x.shape[0], -1, self.width)

  def encode(self, labels: dict, context: Optional[jax.Array] = None, *, train: bool = False):
    """labels {key: [B, H, W, C]} -> (zq [B, code_len, d], QuantizerOutput)."""
    x = sum(self.embeddings[key](patchify(labels[key], self.patch_size))
            for key, _ in self.labels)
    if self.encoder_context:
      x = x + self._context(self.encoder_context_embedding, context)
    x = self.encoder(x + self.encoder_position)
    z = self.encoder_head(self._resize(x, self.code_side))
    if self.standardize:
      z = jax.nn.standardize(z, axis=-1)
    return self.quantizer(z, train=train)

  def decode(self, zq: jax.Array, context: Optional[jax.Array] = None, *,
             train: bool = False) -> dict:
    """zq [B, code_len, d] -> {key: [B, H, W, C]}; drops codes in training."""
    keep = jnp.ones(zq.shape[:2], bool)
    if train and self.code_dropout:
      keep = code_dropout_mask(self.make_rng("dropout"), zq.shape[0], zq.shape[1])
    x = self._resize(self.decoder_stem(drop_codes(zq, keep, self.dropped_code)), self.grid)
    if self.decoder_context:
      x = x + self._context(self.decoder_context_embedding, context)
    x = self.decoder(x + self.decoder_position)
    return {key: unpatchify(self.heads[key](x), self.grid, self.patch_size)
            for key, _ in self.labels}

  def decode_indices(self, indices: jax.Array, context: Optional[jax.Array] = None) -> dict:
    """int32 codes [B, code_len] -> {key: [B, H, W, C]}: what Stage II's samples decode to."""
    return self.decode(self.quantizer.decode_indices(indices), context)

  def __call__(self, labels: dict, context: Optional[jax.Array] = None, *, train: bool = False):
    zq, out = self.encode(labels, context, train=train)
    return self.decode(zq, context, train=train), out
