"""Inception-v3 "2015-12-05" FID network, as ADM's evaluator runs it, in Flax Linen.

The TF graph `classify_image_graph_def.pb` (1008 classes) that ADM and TTUR use, with the
block structure pytorch-fid reproduces as FIDInceptionV3: branch average pools exclude the
padding from the divisor, Mixed_7c's pool branch is a max pool, convs have no bias, batch
norm (eps 1e-3, frozen statistics) and ReLU follow each conv.

Parameter names follow torchvision (Conv2d_1a_3x3, Mixed_5b/branch1x1/conv, ...) so that
pytorch-fid's state dict converts by renaming and transposing. Batch-norm statistics are
ordinary parameters: the model has one plain parameter tree and no mutable state.
"""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fsq_repro.models import weights

NETWORK_NAME = "inception_v3_2015"
WEIGHTS_ENV_VAR = "FSQ_INCEPTION_WEIGHTS"
INPUT_SIZE = 299
NUM_CLASSES = 1008
POOL_FEATURES = 2048  # feature sizes, for callers that allocate
SPATIAL_CHANNELS = 7  # ADM's sFID keeps mixed_6/conv[..., :7]
SPATIAL_FEATURES = 17 * 17 * SPATIAL_CHANNELS
BATCH_NORM_EPSILON = 1e-3

# float32 at full precision everywhere: the GPU/TPU default for f32 convs and matmuls
# (TF32 or bf16 passes, ~1e-3 relative error) is far looser than the parity this network
# is checked to against pytorch-fid (~1e-6 relative).
_PRECISION = jax.lax.Precision.HIGHEST


# ------------------------------------------------------------------------- preprocessing


def _legacy_resize_weights(in_size: int, out_size: int):
  """TF1 ResizeBilinear (align_corners=False, half_pixel_centers=False) source taps.

  Source coordinate = dst * (in / out) with no half-pixel offset, computed in float32 as
  TF's kernel does; returns (lower index, upper index, weight of the upper tap).
  """
  scale = np.float32(in_size) / np.float32(out_size)
  source = np.arange(out_size, dtype=np.float32) * scale
  lower = np.floor(source)
  upper = np.minimum(np.ceil(source), in_size - 1)
  return lower.astype(np.int32), upper.astype(np.int32), source - lower


def resize_bilinear_tf1_legacy(images: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Resizes NHWC `images` to `size` = (height, width) like TF1's legacy bilinear resize.

  Not jax.image.resize, which samples at half-pixel centres and gives different pixels.
  The interpolation order (along width first, then height) is TF's.
  """
  images = jnp.asarray(images, jnp.float32)
  if images.ndim != 4:
    raise ValueError(f"images must be NHWC (4 dims), got shape {images.shape}")
  (top_i, bottom_i, y_lerp), (left_i, right_i, x_lerp) = (
      _legacy_resize_weights(images.shape[1], size[0]),
      _legacy_resize_weights(images.shape[2], size[1]))

  def along_width(rows):
    left, right = rows[:, :, left_i], rows[:, :, right_i]
    return left + (right - left) * x_lerp[:, None]

  top, bottom = along_width(images[:, top_i]), along_width(images[:, bottom_i])
  return top + (bottom - top) * y_lerp[:, None, None]


def preprocess(images: jax.Array) -> jax.Array:
  """Float images in [0, 255], NHWC, any size -> the network's 299x299 input in [-1, 1)."""
  images = jnp.asarray(images, jnp.float32)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be NHWC with 3 channels, got shape {images.shape}")
  if images.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
    # A 299 -> 299 legacy resize is the identity, so it is skipped.
    images = resize_bilinear_tf1_legacy(images, (INPUT_SIZE, INPUT_SIZE))
  return (images - 128.0) / 128.0


# ------------------------------------------------------------------------------ layers


def avg_pool_3x3_excluding_padding(x: jax.Array) -> jax.Array:
  """3x3, stride-1, SAME average pool whose divisor counts only in-image pixels (TF's)."""
  window, strides = (1, 3, 3, 1), (1, 1, 1, 1)
  padding = ((0, 0), (1, 1), (1, 1), (0, 0))
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, padding)
  ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
  count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, padding)
  return total / count


def _max_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
  """3x3 max pool: VALID at stride 2 (reductions), SAME at stride 1 (Mixed_7c)."""
  padding = "VALID" if stride == 2 else ((1, 1), (1, 1))
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


class FrozenBatchNorm(nn.Module):
  """Inference batch norm; the running statistics are parameters like scale and bias."""

  epsilon: float = BATCH_NORM_EPSILON

  @nn.compact
  def __call__(self, x):
    channels = (x.shape[-1],)
    scale = self.param("scale", nn.initializers.ones, channels)
    bias = self.param("bias", nn.initializers.zeros, channels)
    mean = self.param("mean", nn.initializers.zeros, channels)
    var = self.param("var", nn.initializers.ones, channels)
    return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


class ConvBN(nn.Module):
  """torchvision's BasicConv2d: conv (no bias), batch norm, ReLU.

  `padding` is (pad_h, pad_w) on both sides, as in torch's Conv2d(padding=...).
  """

  features: int
  kernel_size: tuple[int, int]
  stride: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    pad_h, pad_w = self.padding
    x = nn.Conv(self.features, self.kernel_size, strides=self.stride,
                padding=((pad_h, pad_h), (pad_w, pad_w)), use_bias=False,
                precision=_PRECISION, name="conv")(x)
    return nn.relu(FrozenBatchNorm(name="bn")(x))


# ------------------------------------------------------------------------------ blocks


class InceptionA(nn.Module):
  """35x35 block (Mixed_5b..5d)."""

  pool_features: int

  @nn.compact
  def __call__(self, x):
    branch1x1 = ConvBN(64, (1, 1), name="branch1x1")(x)
    branch5x5 = ConvBN(48, (1, 1), name="branch5x5_1")(x)
    branch5x5 = ConvBN(64, (5, 5), padding=(2, 2), name="branch5x5_2")(branch5x5)
    branch3x3dbl = ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
    branch3x3dbl = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(branch3x3dbl)
    branch_pool = ConvBN(self.pool_features, (1, 1), name="branch_pool")(
        avg_pool_3x3_excluding_padding(x))
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
  """35x35 -> 17x17 reduction (Mixed_6a)."""

  @nn.compact
  def __call__(self, x):
    branch3x3 = ConvBN(384, (3, 3), stride=2, name="branch3x3")(x)
    branch3x3dbl = ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
    branch3x3dbl = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = ConvBN(96, (3, 3), stride=2, name="branch3x3dbl_3")(branch3x3dbl)
    return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_3x3(x, 2)], axis=-1)


class InceptionC(nn.Module):
  """17x17 block (Mixed_6b..6e) with factorised 7x7 convs.

  Returns (block output, branch1x1 output): the latter of Mixed_6d is the TF graph's
  `mixed_6/conv`, which sFID reads.
  """

  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    branch1x1 = ConvBN(192, (1, 1), name="branch1x1")(x)
    branch7x7 = ConvBN(c7, (1, 1), name="branch7x7_1")(x)
    branch7x7 = ConvBN(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(branch7x7)
    branch7x7 = ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7_3")(branch7x7)
    dbl = ConvBN(c7, (1, 1), name="branch7x7dbl_1")(x)
    dbl = ConvBN(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(dbl)
    dbl = ConvBN(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(dbl)
    dbl = ConvBN(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(dbl)
    dbl = ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(dbl)
    branch_pool = ConvBN(192, (1, 1), name="branch_pool")(avg_pool_3x3_excluding_padding(x))
    out = jnp.concatenate([branch1x1, branch7x7, dbl, branch_pool], axis=-1)
    return out, branch1x1


class InceptionD(nn.Module):
  """17x17 -> 8x8 reduction (Mixed_7a)."""

  @nn.compact
  def __call__(self, x):
    branch3x3 = ConvBN(192, (1, 1), name="branch3x3_1")(x)
    branch3x3 = ConvBN(320, (3, 3), stride=2, name="branch3x3_2")(branch3x3)
    branch7x7x3 = ConvBN(192, (1, 1), name="branch7x7x3_1")(x)
    branch7x7x3 = ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(branch7x7x3)
    branch7x7x3 = ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(branch7x7x3)
    branch7x7x3 = ConvBN(192, (3, 3), stride=2, name="branch7x7x3_4")(branch7x7x3)
    return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nn.Module):
  """8x8 block (Mixed_7b, 7c). The FID graph's Mixed_7c pools with max, not average."""

  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    branch1x1 = ConvBN(320, (1, 1), name="branch1x1")(x)
    branch3x3 = ConvBN(384, (1, 1), name="branch3x3_1")(x)
    branch3x3 = jnp.concatenate([
        ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(branch3x3),
        ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(branch3x3)], axis=-1)
    dbl = ConvBN(448, (1, 1), name="branch3x3dbl_1")(x)
    dbl = ConvBN(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(dbl)
    dbl = jnp.concatenate([
        ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(dbl),
        ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(dbl)], axis=-1)
    pooled = _max_pool_3x3(x, 1) if self.max_pool else avg_pool_3x3_excluding_padding(x)
    branch_pool = ConvBN(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([branch1x1, branch3x3, dbl, branch_pool], axis=-1)


class InceptionV3(nn.Module):
  """The FID Inception. Input: float images in [0, 255], NHWC, any size.

  Returns {'pool_3': (B, 2048) spatial mean of Mixed_7c, 'spatial': (B, 2023)
  mixed_6/conv[..., :7] flattened in H, W, C order, 'logits': (B, 1008) pool_3 @ W_softmax
  without the bias, as ADM's Inception Score computes them}.
  """

  @nn.compact
  def __call__(self, images):
    x = preprocess(images)
    x = ConvBN(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
    x = ConvBN(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = ConvBN(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3(x, 2)
    x = ConvBN(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = ConvBN(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3(x, 2)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x, _ = InceptionC(128, name="Mixed_6b")(x)
    x, _ = InceptionC(160, name="Mixed_6c")(x)
    x, mixed_6_conv = InceptionC(160, name="Mixed_6d")(x)
    x, _ = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    pool_3 = jnp.mean(x, axis=(1, 2))
    spatial = mixed_6_conv[..., :SPATIAL_CHANNELS].reshape(x.shape[0], -1)
    logits = nn.Dense(NUM_CLASSES, use_bias=False, precision=_PRECISION, name="fc")(pool_3)
    return {"pool_3": pool_3, "spatial": spatial, "logits": logits}


# -------------------------------------------------------------------------- parameters


@functools.cache
def expected_param_shapes() -> dict[str, tuple[int, ...]]:
  """'Mixed_5b/branch1x1/conv/kernel' -> shape, for every parameter of InceptionV3."""
  images = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  variables = jax.eval_shape(InceptionV3().init, jax.random.key(0), images)
  return {path: tuple(leaf.shape) for path, leaf in _flatten(variables["params"]).items()}


def check_params(params) -> None:
  """Raises ValueError unless `params` has exactly InceptionV3's names and shapes."""
  found = {path: tuple(np.shape(leaf)) for path, leaf in _flatten(params).items()}
  expected = expected_param_shapes()
  problems = [f"missing {p}" for p in sorted(expected.keys() - found.keys())]
  problems += [f"unexpected {p}" for p in sorted(found.keys() - expected.keys())]
  problems += [f"{p} has shape {found[p]}, expected {expected[p]}"
               for p in sorted(expected.keys() & found.keys()) if found[p] != expected[p]]
  if problems:
    more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
    raise ValueError(f"not FID Inception-v3 parameters: {'; '.join(problems[:5])}{more}")


def _flatten(tree, prefix=""):
  if isinstance(tree, dict):
    flat = {}
    for key, value in tree.items():
      flat.update(_flatten(value, f"{prefix}{key}/"))
    return flat
  return {prefix[:-1]: tree}


# ---------------------------------------------------------------------------- weights


def find_inception_weights(path: str | None = None) -> str | None:
  """The converted weight file: `path`, else $FSQ_INCEPTION_WEIGHTS, else None."""
  for source, candidate in (("path", path), (WEIGHTS_ENV_VAR, os.environ.get(WEIGHTS_ENV_VAR))):
    if candidate:
      if not os.path.isfile(candidate):
        raise ValueError(
            f"{source}={candidate!r} is not a file; point it at the output of "
            "`python scripts/convert_weights.py inception ...`")
      return candidate
  return None


def save_inception_params(path: str, params, *, source: str) -> None:
  """Writes converted parameters in our weight format, tagged with their origin."""
  check_params(params)
  weights.save_params(path, params, network=NETWORK_NAME, source=source)


def load_inception_params(path: str):
  """Reads a file written by `save_inception_params` and checks every shape."""
  params = weights.load_params(path, network=NETWORK_NAME)
  check_params(params)
  return params
