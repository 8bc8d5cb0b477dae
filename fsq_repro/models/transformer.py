"""MaskGIT Stage II transformer: a bidirectional post-LN BERT over image tokens.

Token layout (`TokenLayout`): ids [0, |C|) are image codes, then one id per class, then a
single MASK id. A sequence is [class token, h*w image tokens]. For classifier-free
guidance the "unconditional" sequence carries MASK in place of the class token.

Paper config (MaskGIT, FSQ paper Sec. 4.3): 24 layers, width 768, 16 heads, MLP 3072,
vocabulary 1024 + 1000 + 1, 257 positions: 172,457,193 parameters (tests/test_transformer.py
recomputes this with jax.eval_shape).
"""

import dataclasses
import functools
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

LAYER_NORM_EPSILON = 1e-12
_INIT = nn.initializers.truncated_normal(stddev=0.02)


@dataclasses.dataclass(frozen=True)
class TokenLayout:
  """Ids and positions of the Stage II sequence: [class, image tokens]; vocab |C|+classes+1."""
  codebook_size: int
  num_classes: int

  def __post_init__(self):
    if self.codebook_size < 2:
      raise ValueError(f"codebook_size must be >= 2, got {self.codebook_size}")
    if self.num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")

  @property
  def mask_id(self) -> int:
    return self.codebook_size + self.num_classes

  @property
  def vocab_size(self) -> int:
    return self.codebook_size + self.num_classes + 1

  def class_token(self, labels: jax.Array) -> jax.Array:
    """Class ids (0..num_classes-1) -> their token ids."""
    return jnp.asarray(labels, jnp.int32) + self.codebook_size

  def build_input(self, image_tokens: jax.Array, labels: jax.Array) -> jax.Array:
    """[B, N] image tokens (or MASK) and [B] class labels -> [B, N+1] int32 ids."""
    image_tokens = jnp.asarray(image_tokens, jnp.int32)
    return jnp.concatenate([self.class_token(labels)[:, None], image_tokens], axis=1)

  def unconditional(self, input_ids: jax.Array) -> jax.Array:
    """The same sequence with the class token replaced by MASK (CFG's l_uncond input)."""
    return input_ids.at[:, 0].set(self.mask_id)


def image_logits(logits: jax.Array, layout: TokenLayout) -> jax.Array:
  """[B, N+1, vocab] model logits -> [B, N, |C|]: image positions, image codes only.

  Sampling and compression use these so that a class or MASK id is never produced.
  """
  return logits[:, 1:, :layout.codebook_size]


ATTENTION_IMPLEMENTATIONS = ("custom_vjp", "flax", "dot_product_attention")


def softmax_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                      multiplier: jax.Array | None = None, groups: int = 1) -> jax.Array:
  """softmax(query key^T) value per head, as flax's dot_product_attention computes it (the
  caller scales the query), with a backward pass written out by hand.

  query, key, value: [batch, length, heads, head_dim] in the compute dtype; `multiplier`:
  attention dropout, keep / keep_prob broadcast over [batch, heads, q, k], or None. Scores in
  the compute dtype, softmax in float32, times the multiplier, times the values: in float32
  flax's forward op for op (in bfloat16 the probabilities go back to bfloat16 for the value
  product, where flax keeps them float32). JAX's derivative of that forward keeps the dropped
  probabilities as well as the probabilities for the backward pass, and XLA's CPU backend a
  broadcast copy of the dropout mask too; this backward keeps the probabilities alone (one
  [batch, heads, q, k] tensor per layer) and recomputes the rest, the softmax gradient in
  float32.

  `groups` > 1 computes the heads in that many independent groups, with the same results:
  XLA's CPU backend runs each batched [q, k] x [k, head_dim] matmul on one core but runs
  independent operations side by side, so on a CPU the groups keep every core busy
  (`cpu_attention_groups`). Heads, not examples: the batch may be sharded over devices.
  """
  heads_major = lambda x: x.transpose(0, 2, 1, 3)  # [batch, heads, length, head_dim]
  if multiplier is not None:  # a dropout mask: a constant of the step, no gradient
    multiplier = jax.lax.stop_gradient(multiplier)
  out = _attention(heads_major(query), heads_major(key), heads_major(value), multiplier,
                   groups)
  return out.transpose(0, 2, 1, 3)


def cpu_attention_groups(num_heads: int) -> int:
  """Independent head groups for softmax_attention: one per core this process may run on
  (as XLA's CPU thread pool sizes itself) on a CPU, else 1."""
  if jax.default_backend() != "cpu":
    return 1
  cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")  # not on macOS
           else os.cpu_count() or 1)
  return max(1, min(num_heads, cores))


def _probabilities(query, key):
  scores = query @ key.swapaxes(-1, -2)
  return jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(query.dtype)


def _dropped(probabilities, multiplier):
  return probabilities if multiplier is None else probabilities * multiplier


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(query, key, value, multiplier, groups):
  return _attention_forward(query, key, value, multiplier, groups)[0]


def _attention_forward(query, key, value, multiplier, groups):
  split = lambda x: jnp.array_split(x, groups, axis=1)  # [batch, heads, ...]: by heads
  probabilities = [_probabilities(q, k) for q, k in zip(split(query), split(key))]
  out = jnp.concatenate([_dropped(p, multiplier) @ v
                         for p, v in zip(probabilities, split(value))], axis=1)
  return out, (query, key, value, multiplier, probabilities)


def _attention_backward(groups, residuals, d_out):
  query, key, value, multiplier, probabilities = residuals
  split = lambda x: jnp.array_split(x, groups, axis=1)
  grads = []
  for q, k, v, p, dy in zip(split(query), split(key), split(value), probabilities,
                            split(d_out)):
    d_value = _dropped(p, multiplier).swapaxes(-1, -2) @ dy
    d_probabilities = _dropped((dy @ v.swapaxes(-1, -2)).astype(jnp.float32), multiplier)
    p32 = p.astype(jnp.float32)
    d_scores = (p32 * (d_probabilities - jnp.sum(d_probabilities * p32, -1, keepdims=True))
                ).astype(q.dtype)
    grads.append((d_scores @ k, d_scores.swapaxes(-1, -2) @ q, d_value))
  d_query, d_key, d_value = (jnp.concatenate(g, axis=1) for g in zip(*grads))
  return d_query, d_key, d_value, None if multiplier is None else jnp.zeros_like(multiplier)


_attention.defvjp(_attention_forward, _attention_backward)


class _ProjectionParams(nn.Module):
  """The kernel and bias of one flax DenseGeneral projection, initialised as DenseGeneral
  does (truncated normal on the flat [fan_in, fan_out] shape, reshaped)."""
  kernel_shape: tuple[int, ...]
  bias_shape: tuple[int, ...]
  fan_in: int

  @nn.compact
  def __call__(self):
    fan_out = math.prod(self.kernel_shape) // self.fan_in
    init = lambda rng, shape, dtype: _INIT(rng, (self.fan_in, fan_out), dtype).reshape(shape)
    return (self.param("kernel", init, self.kernel_shape, jnp.float32),
            self.param("bias", nn.initializers.zeros, self.bias_shape, jnp.float32))


class SelfAttention(nn.Module):
  """Bidirectional multi-head self-attention with the parameters, names and initialisation
  of flax's MultiHeadDotProductAttention (query/key/value kernels [D, heads, D/heads], out
  kernel [heads, D/heads, D]), so checkpoints and the official weights load unchanged.

  Each projection runs as a plain [D, D] matmul on its kernel reshaped: the same products as
  DenseGeneral's, which XLA's CPU backend runs through transposed multi-axis dot_generals at
  twice the time per FLOP (measured; see scripts/bench.py --official_path). The scores
  (query scaled by 1/sqrt(D/heads), float32 softmax, dropout on the probabilities broadcast
  over batch and heads: MaskGIT's), by `implementation`:
  - "custom_vjp": `softmax_attention`, flax's forward with a backward that keeps only the
    probabilities; on a CPU in one group of heads per core (`cpu_attention_groups`).
  - "flax": flax's dot_product_attention, differentiated by JAX (the reference).
  - "dot_product_attention": jax.nn.dot_product_attention, which lets XLA pick the backend's
    fused kernel (cuDNN flash attention on GPUs) but has no dropout, so a training step with
    attention dropout takes the custom_vjp path.
  The dropout mask is drawn as flax draws it, so every implementation drops the same weights.
  """
  num_heads: int
  dropout_rate: float
  dtype: jnp.dtype
  implementation: str = "custom_vjp"

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    if self.implementation not in ATTENTION_IMPLEMENTATIONS:
      raise ValueError(f"attention implementation {self.implementation!r} is not one of "
                       f"{ATTENTION_IMPLEMENTATIONS}")
    batch, length, width = x.shape
    heads, head_dim = self.num_heads, width // self.num_heads
    projections = [_ProjectionParams((width, heads, head_dim), (heads, head_dim), width,
                                     name=name)() for name in ("query", "key", "value")]
    out_kernel, out_bias = _ProjectionParams((heads, head_dim, width), (width,), width,
                                             name="out")()
    x, out_kernel, out_bias = nn.dtypes.promote_dtype(x, out_kernel, out_bias, dtype=self.dtype)
    query, key, value = (
        (x @ k.reshape(width, width).astype(self.dtype) + b.reshape(width).astype(self.dtype)
         ).reshape(batch, length, heads, head_dim) for k, b in projections)
    dropout = not deterministic and self.dropout_rate > 0
    if self.implementation == "flax":
      y = nn.dot_product_attention(
          query, key, value, dropout_rng=self.make_rng("dropout") if dropout else None,
          dropout_rate=self.dropout_rate, broadcast_dropout=True, deterministic=not dropout,
          dtype=self.dtype, force_fp32_for_softmax=True)
    elif self.implementation == "dot_product_attention" and not dropout:
      y = jax.nn.dot_product_attention(query, key, value)
    else:
      multiplier = None
      if dropout:  # flax's broadcast dropout: one [q, k] mask for every example and head
        keep_prob = 1.0 - self.dropout_rate
        keep = jax.random.bernoulli(self.make_rng("dropout"), keep_prob, (1, 1, length, length))
        multiplier = keep.astype(self.dtype) / jnp.asarray(keep_prob, self.dtype)
      y = softmax_attention(query / jnp.sqrt(head_dim).astype(self.dtype), key, value,
                            multiplier, cpu_attention_groups(heads))
    return y.reshape(batch, length, width) @ out_kernel.reshape(width, width) + out_bias


class TransformerLayer(nn.Module):
  """Post-LN BERT layer: x = LN(x + attn(x)); x = LN(x + mlp(x))."""
  hidden_size: int
  num_heads: int
  mlp_dim: int
  dropout_rate: float
  attention_dropout_rate: float
  dtype: jnp.dtype
  attention: str = "custom_vjp"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = SelfAttention(self.num_heads, self.attention_dropout_rate, self.dtype,
                      self.attention, name="attention")(x, deterministic=not train)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    x = _layer_norm(self.dtype, "attention_norm")(x + y)

    y = _dense(self.mlp_dim, self.dtype, "mlp_in")(x)
    y = nn.gelu(y, approximate=True)
    y = _dense(self.hidden_size, self.dtype, "mlp_out")(y)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    return _layer_norm(self.dtype, "mlp_norm")(x + y)


class MaskGITTransformer(nn.Module):
  """Bidirectional BERT: int32 ids [B, L] -> float32 logits [B, L, vocab_size].

  Params are float32; `dtype` is the compute dtype (e.g. jnp.bfloat16). The output head is
  Dense -> GELU -> LayerNorm, then logits = h @ token_embedding.T + a per-id bias.
  `remat` recomputes each layer's activations in the backward pass instead of storing them
  (same parameters and results; less memory, one more forward pass of compute).
  `attention` names how the scores are computed (SelfAttention; same parameters).
  """
  vocab_size: int
  hidden_size: int = 768
  num_layers: int = 24
  num_heads: int = 16
  mlp_dim: int = 3072
  max_len: int = 257
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  dtype: jnp.dtype = jnp.float32
  remat: bool = False
  attention: str = "custom_vjp"  # SelfAttention.implementation

  @nn.compact
  def __call__(self, input_ids: jax.Array, *, train: bool,
               codebook_size: int | None = None) -> jax.Array:
    """Logits [B, L, vocab_size]; with `codebook_size` = |C| only what `image_logits` keeps of
    them, [B, L-1, |C|], computed without the rest (the head runs on the image positions, the
    tied projection on the code embeddings): the training loss reads nothing else."""
    self._check(input_ids)
    length = input_ids.shape[1]
    token_embedding = nn.Embed(
        self.vocab_size, self.hidden_size, dtype=self.dtype, param_dtype=jnp.float32,
        embedding_init=_INIT, name="token_embedding")
    position_embedding = self.param(
        "position_embedding", _INIT, (self.max_len, self.hidden_size), jnp.float32)

    x = token_embedding(input_ids) + position_embedding[None, :length].astype(self.dtype)
    x = _layer_norm(self.dtype, "embedding_norm")(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    layer = nn.remat(TransformerLayer, static_argnums=(2,)) if self.remat else TransformerLayer
    for i in range(self.num_layers):
      x = layer(self.hidden_size, self.num_heads, self.mlp_dim, self.dropout_rate,
                self.attention_dropout_rate, self.dtype, self.attention,
                name=f"layer_{i}")(x, train)

    output_ids = slice(None)
    if codebook_size is not None:
      x, output_ids = x[:, 1:], slice(codebook_size)
    x = _dense(self.hidden_size, self.dtype, "head_dense")(x)
    x = nn.gelu(x, approximate=True)
    x = _layer_norm(self.dtype, "head_norm")(x)
    logits_bias = self.param(
        "logits_bias", nn.initializers.zeros, (self.vocab_size,), jnp.float32)
    # Tied output projection, in float32 even under bfloat16: its log-probabilities are
    # what sampling and the compression cost (in bits) read.
    return (x.astype(jnp.float32) @ token_embedding.embedding[output_ids].T
            + logits_bias[output_ids])

  def _check(self, input_ids):
    if self.hidden_size % self.num_heads:
      raise ValueError(
          f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
    if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
      raise ValueError(
          f"input_ids must be integer [batch, length], got {input_ids.dtype} {input_ids.shape}")
    if input_ids.shape[1] > self.max_len:
      raise ValueError(
          f"sequence length {input_ids.shape[1]} exceeds max_len {self.max_len}; "
          "raise max_len to (number of image tokens + 1)")


def _dense(features: int, dtype, name: str) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=_INIT,
                  name=name)


def _layer_norm(dtype, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=dtype, param_dtype=jnp.float32,
                      name=name)

