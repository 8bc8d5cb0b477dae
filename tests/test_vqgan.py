"""Tests of the Stage I autoencoder (both quantizers) and the StyleGAN discriminator."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsq_repro.models import vqgan
from fsq_repro.models.discriminator import Discriminator, blur_downsample
from fsq_repro.models.factory import count_params
from fsq_repro.models.vqgan import Autoencoder
from fsq_repro.quantizers import FiniteScalarQuantizer, VectorQuantizer

IMAGE_SIZE = 16
MULTIPLIERS = (1, 2)  # downsampling factor 2: 16x16 images -> 8x8 tokens
TOKENS = 8
QUANTIZERS = {
    "fsq": lambda: FiniteScalarQuantizer(levels=(8, 5, 5, 5)),
    "vq": lambda: VectorQuantizer(codebook_size=32, codebook_dim=4),
}
CODEBOOK_SIZES = {"fsq": 8 * 5 * 5 * 5, "vq": 32}


def rng_key(seed):
  # The "rbg" generator compiles far faster than threefry on CPU; tests only need variety.
  return jax.random.key(seed, impl="rbg")


def tiny_autoencoder(quantizer_name, **overrides):
  fields = dict(quantizer=QUANTIZERS[quantizer_name](), filters=8,
                channel_multipliers=MULTIPLIERS, num_res_blocks=1, num_groups=4)
  fields.update(overrides)
  return Autoencoder(**fields)


def random_images(seed, batch=2, size=IMAGE_SIZE):
  images = np.random.default_rng(seed).uniform(size=(batch, size, size, 3))
  return jnp.asarray(images, jnp.float32)


@pytest.fixture(scope="module", params=sorted(QUANTIZERS))
def autoencoder_setup(request):
  """(quantizer name, model, images, variables, eval reconstructions, eval quantizer output)."""
  name = request.param
  model = tiny_autoencoder(name)
  images = random_images(0)
  variables = jax.jit(lambda x: model.init(rng_key(0), x, train=False))(images)
  reconstructions, out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
  return name, model, images, variables, reconstructions, out


# --- autoencoder --------------------------------------------------------------------------


def test_shapes_dtypes_and_float32_params(autoencoder_setup):
  name, model, images, variables, reconstructions, out = autoencoder_setup
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  assert reconstructions.shape == images.shape and reconstructions.dtype == jnp.float32
  assert out.indices.shape == (2, TOKENS, TOKENS) and out.indices.dtype == jnp.int32
  assert 0 <= int(out.indices.min()) and int(out.indices.max()) < CODEBOOK_SIZES[name]
  assert out.loss.shape == () and out.loss.dtype == jnp.float32
  zq, _ = jax.jit(lambda v, x: model.apply(v, x, method=Autoencoder.encode))(variables, images)
  assert zq.shape == (2, TOKENS, TOKENS, 4) and zq.dtype == jnp.float32


def test_maskgit_bias_layout(autoencoder_setup):
  """MaskGIT: no bias in the first encoder conv and in residual blocks; bias elsewhere."""
  params = autoencoder_setup[3]["params"]
  encoder, decoder = params["encoder"], params["decoder"]
  assert set(encoder["conv_in"]) == {"kernel"}
  assert set(encoder["conv_out"]) == {"kernel", "bias"}
  assert encoder["conv_out"]["kernel"].shape == (1, 1, 16, 4)  # 1x1 to the latent dim
  assert set(decoder["conv_in"]) == {"kernel", "bias"}
  assert set(decoder["level1_upsample_conv"]) == {"kernel", "bias"}
  assert "level0_upsample_conv" not in decoder
  assert decoder["conv_out"]["kernel"].shape == (3, 3, 8, 3)
  block = encoder["level1_block0"]  # 8 -> 16 channels: a 1x1 conv of the block's output
  assert set(block["Conv_0"]) == set(block["Conv_1"]) == {"kernel"}
  assert block["skip"]["kernel"].shape == (1, 1, 16, 16)
  assert "skip" not in encoder["mid_block0"]  # 16 -> 16: identity skip


def test_decode_indices_matches_forward_reconstruction(autoencoder_setup):
  _, model, _, variables, reconstructions, out = autoencoder_setup
  from_tokens = jax.jit(lambda v, i: model.apply(v, i, method=Autoencoder.decode_indices))(
      variables, out.indices)
  np.testing.assert_allclose(from_tokens, reconstructions, rtol=1e-5, atol=1e-5)


def test_bfloat16_model_quantizes_float32_latents(autoencoder_setup):
  name, _, images, variables, _, _ = autoencoder_setup
  model = tiny_autoencoder(name, dtype=jnp.bfloat16)  # same params tree, bfloat16 compute

  def forward_recording_quantizer_input(variables, images):
    quantizer_inputs = []

    def record(next_fun, args, kwargs, context):
      if context.module.name == "quantizer" and context.method_name == "__call__":
        quantizer_inputs.append(args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      reconstructions, out = model.apply(variables, images, train=False)
    return quantizer_inputs, reconstructions, out

  (z,), reconstructions, out = jax.jit(forward_recording_quantizer_input)(variables, images)
  assert z.dtype == jnp.float32 and reconstructions.dtype == jnp.float32
  # The encoder ran in bfloat16: its float32-cast output holds only bfloat16 values.
  np.testing.assert_array_equal(z, z.astype(jnp.bfloat16).astype(jnp.float32))
  assert not np.array_equal(z, jnp.round(z))  # ...and is not trivially integer-valued
  quantizer_variables = {"params": variables["params"].get("quantizer", {})}
  _, expected = jax.jit(QUANTIZERS[name]().apply)(quantizer_variables, z)
  np.testing.assert_array_equal(out.indices, expected.indices)


def test_straight_through_gradients_reach_the_encoder(autoencoder_setup):
  _, model, images, variables, _, _ = autoencoder_setup

  def reconstruction_loss(params):
    reconstructions, _ = model.apply({"params": params}, images, train=True)
    return jnp.mean((reconstructions - images)**2)  # no quantizer loss: only the STE path

  grads = jax.jit(jax.grad(reconstruction_loss))(variables["params"])
  for layer in ("conv_in", "conv_out"):
    assert float(jnp.linalg.norm(grads["encoder"][layer]["kernel"])) > 0.0


def test_rejects_bad_inputs_and_configs():
  model = tiny_autoencoder("fsq")
  images = jax.ShapeDtypeStruct((1, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32)
  odd_images = jax.ShapeDtypeStruct((1, 15, 16, 3), jnp.float32)
  init = lambda m, x: jax.eval_shape(lambda x: m.init(rng_key(0), x, train=False), x)
  with pytest.raises(ValueError, match="divisible by the downsampling factor 2"):
    init(model, odd_images)
  with pytest.raises(ValueError, match="channel_multipliers"):
    init(tiny_autoencoder("fsq", channel_multipliers=()), images)
  with pytest.raises(ValueError, match="num_groups=3"):
    init(tiny_autoencoder("fsq", num_groups=3), images)


def test_nearest_upsampling_matches_jax_image_resize():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 5, 4)), jnp.float32)
  expected = jax.image.resize(x, (2, 6, 10, 4), method="nearest")
  np.testing.assert_array_equal(vqgan._upsample(x), expected)


# --- discriminator ------------------------------------------------------------------------


def tiny_discriminator():
  return Discriminator(image_size=IMAGE_SIZE, max_filters=8)


def test_discriminator_gives_one_logit_per_image_and_sees_position():
  model = tiny_discriminator()
  images = random_images(4, batch=3)
  variables = jax.jit(model.init)(rng_key(0), images)
  logits = jax.jit(model.apply)(variables, images)
  assert logits.shape == (3,) and logits.dtype == jnp.float32
  assert len(set(np.round(np.asarray(logits), 6))) == 3  # different images, different logits
  shifted = jax.jit(model.apply)(variables, jnp.roll(images, 5, axis=2))
  assert np.all(np.abs(np.asarray(shifted - logits)) > 1e-6)  # a flattening head sees position


def test_discriminator_widths_and_blocks_follow_maskgit_table():
  model = Discriminator(image_size=128)
  assert [model.filters_at(r) for r in (128, 64, 32, 4)] == [128, 256, 512, 512]
  params = jax.eval_shape(model.init, rng_key(0),
                          jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.float32))["params"]
  assert sorted(k for k in params if k.startswith("to_")) == [
      "to_16px", "to_32px", "to_4px", "to_64px", "to_8px"]
  assert params["to_64px"]["shortcut"]["kernel"].shape == (1, 1, 128, 256)
  assert "bias" not in params["to_64px"]["shortcut"]
  assert params["dense"]["kernel"].shape == (4 * 4 * 512, 512)


def test_discriminator_rejects_mismatched_images():
  init = lambda m, size: jax.eval_shape(
      m.init, rng_key(0), jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  with pytest.raises(ValueError, match="image_size=16"):
    init(tiny_discriminator(), 32)
  with pytest.raises(ValueError, match="power of two"):
    init(Discriminator(image_size=48), 48)


def test_blur_downsample_matches_brute_force():
  x = np.random.default_rng(5).normal(size=(2, 8, 6, 3))
  taps = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  expected = np.zeros((2, 4, 3, 3))
  for i in range(4):
    for j in range(3):
      window = padded[:, 2 * i:2 * i + 4, 2 * j:2 * j + 4, :]
      expected[:, i, j, :] = np.einsum("bhwc,hw->bc", window, taps)
  np.testing.assert_allclose(blur_downsample(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-6)


# --- paper configurations (abstract shapes only: nothing is materialised) ------------------
# The counts are written out from the architecture (MaskGIT's vqgan_tokenizer.py and
# discriminator.py, as REFERENCE.md and the module docstrings describe them), layer by layer,
# without Flax: a change to the networks that changes their shapes fails here.


def conv(kernel, cin, cout, bias):
  return kernel * kernel * cin * cout + (cout if bias else 0)


def res_block(cin, cout):
  """GN(cin) conv3x3 GN(cout) conv3x3, no conv biases; if cin != cout a bias-free 1x1 conv
  of the block's output (cout -> cout), as MaskGIT's ResBlock."""
  return 2 * cin + conv(3, cin, cout, False) + 2 * cout + conv(3, cout, cout, False) + (
      conv(1, cout, cout, False) if cin != cout else 0)


def tokenizer_param_count(latent_dim, filters=128, multipliers=(1, 1, 2, 2, 4), blocks=2):
  widths = [filters * m for m in multipliers]
  encoder, width = conv(3, 3, filters, False), filters
  for level_width in widths:
    for _ in range(blocks):
      encoder, width = encoder + res_block(width, level_width), level_width
  encoder += blocks * res_block(width, width) + 2 * width + conv(1, width, latent_dim, True)
  decoder = conv(3, latent_dim, width, True) + blocks * res_block(width, width)
  for level in reversed(range(len(widths))):
    for _ in range(blocks):
      decoder, width = decoder + res_block(width, widths[level]), widths[level]
    if level > 0:
      decoder += conv(3, width, width, True)  # after the nearest-neighbour upsampling
  decoder += 2 * width + conv(3, width, 3, True)
  return encoder + decoder


def discriminator_param_count(image_size, max_filters=512):
  width_at = lambda r: max_filters if r <= 32 else max_filters * 32 // r
  width, count, resolution = width_at(image_size), conv(3, 3, width_at(image_size), True), image_size
  while resolution > 4:
    resolution //= 2
    out = width_at(resolution)
    count += conv(3, width, width, True) + conv(3, width, out, True) + conv(1, width, out, False)
    width = out
  return (count + conv(3, width, width, True) + (4 * 4 * width * width + width)
          + (width + 1))


def abstract_param_count(model, image_size, **kwargs):
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return count_params(jax.eval_shape(
      lambda x: model.init(rng_key(0), x, **kwargs), images)["params"])


@pytest.mark.parametrize("image_size", [128, 256])
def test_paper_config_parameter_counts(image_size):
  fsq = Autoencoder(quantizer=FiniteScalarQuantizer(levels=(8, 5, 5, 5)))
  vq = Autoencoder(quantizer=VectorQuantizer(codebook_size=1024, codebook_dim=256))
  assert abstract_param_count(fsq, image_size, train=False) == tokenizer_param_count(4)
  assert abstract_param_count(vq, image_size, train=False) == (
      tokenizer_param_count(256) + 1024 * 256) == 54_515_587  # the official VQ tokenizer
  assert abstract_param_count(Discriminator(image_size), image_size) == (
      discriminator_param_count(image_size))


def test_tiny_config_parameter_count_matches_the_closed_form():
  # filters 8, widths (8, 16), one block per level, FSQ (8, 5, 5, 5) = 4 latent channels.
  assert tokenizer_param_count(4, filters=8, multipliers=(1, 2), blocks=1) == (
      abstract_param_count(tiny_autoencoder("fsq"), IMAGE_SIZE, train=False))


def test_model_docstrings_quote_the_computed_parameter_counts():
  from configs import maskgit_256, tradeoff_128  # pylint: disable=import-outside-toplevel
  from fsq_repro.models import discriminator, transformer  # pylint: disable=import-outside-toplevel
  from scripts import param_counts  # pylint: disable=import-outside-toplevel
  fsq = param_counts.counts(maskgit_256.get_config("quantizer=fsq"), num_classes=1000)
  vq = param_counts.counts(maskgit_256.get_config("quantizer=vq"), num_classes=1000)
  at_128 = param_counts.counts(tradeoff_128.get_config("quantizer=vq"), num_classes=1000)
  assert vq["tokenizer"] == 54_515_587  # the official VQ tokenizer (REFERENCE.md)
  for count in (fsq["tokenizer"], vq["tokenizer"]):
    assert f"{count:,}" in vqgan.__doc__
  for count in (at_128["discriminator"], vq["discriminator"]):
    assert f"{count:,} parameters at" in discriminator.__doc__ or f"{count:,} at" in \
        discriminator.__doc__
  assert f"{vq['transformer']:,} parameters" in transformer.__doc__
