"""Tests of LPIPS-VGG16 and its converter, with synthetic weights in the torch layouts."""

import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsq_repro.converters import lpips as lpips_converter
from fsq_repro.converters import torch_files
from fsq_repro.models import perceptual, weights
from fsq_repro.models.perceptual import LPIPS
from scripts import convert_weights

SIZE = 16  # the smallest size at which relu5_3 (after four 2x2 pools) is non-empty


def synthetic_torch_state_dicts(seed=0):
  """torchvision-vgg16-like and LPIPS-v0.1-like state dicts of random numpy arrays."""
  rng = np.random.default_rng(seed)
  vgg = {"classifier.0.weight": np.zeros((4, 4), np.float32)}  # ignored by the converter
  in_channels = 3
  for stage in perceptual.VGG16_STAGES:
    for _, index, channels in stage:
      fan_in = in_channels * 9
      vgg[f"features.{index}.weight"] = (
          rng.normal(size=(channels, in_channels, 3, 3)) * np.sqrt(2.0 / fan_in)
      ).astype(np.float32)
      vgg[f"features.{index}.bias"] = rng.normal(scale=0.1, size=channels).astype(np.float32)
      in_channels = channels
  lin = {f"lin{i}.model.1.weight": rng.uniform(size=(1, c, 1, 1)).astype(np.float32)
         for i, c in enumerate(perceptual.FEATURE_CHANNELS)}
  return vgg, lin


@pytest.fixture(scope="module")
def torch_weights():
  return synthetic_torch_state_dicts()


@pytest.fixture(scope="module")
def params(torch_weights):
  return lpips_converter.params_from_torch_state_dicts(*torch_weights)


def random_images(seed, batch):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(batch, SIZE, SIZE, 3)),
                     jnp.float32)


def test_converted_params_match_the_module_tree(params):
  abstract = jax.eval_shape(LPIPS().init, jax.random.key(0, impl="rbg"),
                            random_images(0, 1), random_images(1, 1))["params"]
  assert jax.tree.structure(abstract) == jax.tree.structure(params)
  for expected, converted in zip(jax.tree.leaves(abstract), jax.tree.leaves(params)):
    assert expected.shape == converted.shape
  assert params["vgg"]["conv5_3"]["kernel"].shape == (3, 3, 512, 512)
  assert params["lin2"]["kernel"].shape == (1, 1, 256, 1)


def brute_force_conv_relu(x, weight_oihw, bias):
  """relu(torch-style 3x3 cross-correlation with zero padding 1) of NHWC x."""
  height, width = x.shape[1:3]
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros(x.shape[:3] + (weight_oihw.shape[0],))
  for dy in range(3):
    for dx in range(3):
      window = padded[:, dy:dy + height, dx:dx + width, :]
      out += np.einsum("bhwi,oi->bhwo", window, weight_oihw[:, :, dy, dx])
  return np.maximum(out + bias, 0.0)


def normalize(f):
  return f / (np.sqrt(np.sum(f**2, axis=-1, keepdims=True)) + 1e-10)


def test_distances_and_features_match_numpy_reference(params, torch_weights):
  vgg, lin = torch_weights
  x, y = random_images(2, 2), random_images(3, 2)
  images = jnp.concatenate([x, y, x])
  targets = jnp.concatenate([y, x, x])
  distances, state = jax.jit(lambda p, a, b: LPIPS().apply(
      {"params": p}, a, b, capture_intermediates=True))(params, images, targets)
  features = [np.asarray(f, np.float64) for f in state["intermediates"]["vgg"]["__call__"][0]]

  # Stage 1 against a brute-force torch-layout convolution: checks OIHW -> HWIO, the
  # features.N indexing, [0, 1] -> [-1, 1] and LPIPS's shift/scale.
  both = np.concatenate([images, targets]).astype(np.float64)
  scaled = (2.0 * both - 1.0 - np.array(perceptual.LPIPS_SHIFT)) / np.array(perceptual.LPIPS_SCALE)
  relu1_1 = brute_force_conv_relu(scaled, vgg["features.0.weight"], vgg["features.0.bias"])
  relu1_2 = brute_force_conv_relu(relu1_1, vgg["features.2.weight"], vgg["features.2.bias"])
  np.testing.assert_allclose(features[0], relu1_2, rtol=1e-4, atol=1e-4)

  # The LPIPS head in numpy from the network's own features.
  batch = images.shape[0]
  expected = np.zeros(batch)
  for i, f in enumerate(features):
    weight = lin[f"lin{i}.model.1.weight"].reshape(-1)
    squared_difference = (normalize(f[:batch]) - normalize(f[batch:]))**2
    expected += np.mean(squared_difference @ weight, axis=(1, 2))
  np.testing.assert_allclose(distances, expected, rtol=1e-4, atol=1e-6)

  d_xy, d_yx, d_xx = np.split(np.asarray(distances), 3)
  # Zero up to float rounding (the two copies sit at different batch positions).
  np.testing.assert_allclose(d_xx, 0.0, atol=1e-10)
  np.testing.assert_allclose(d_xy, d_yx, rtol=1e-6)
  assert np.all(d_xy > 1e-3)


@pytest.mark.slow  # VGG16's gradient: a compile of twenty seconds
def test_gradients_with_respect_to_images_are_finite_and_nonzero(params):
  x, y = random_images(4, 1), random_images(5, 1)
  grad = jax.jit(jax.grad(lambda a: jnp.sum(LPIPS().apply({"params": params}, a, y))))(x)
  assert np.all(np.isfinite(grad)) and float(jnp.abs(grad).max()) > 0


def test_converter_rejects_wrong_weights(torch_weights):
  vgg, lin = torch_weights
  with pytest.raises(ValueError, match="'features.28.bias'"):
    lpips_converter.params_from_torch_state_dicts(
        {k: v for k, v in vgg.items() if k != "features.28.bias"}, lin)
  with pytest.raises(ValueError, match="features.0.weight has shape"):
    lpips_converter.params_from_torch_state_dicts(
        dict(vgg, **{"features.0.weight": np.zeros((64, 3, 5, 5))}), lin)
  with pytest.raises(ValueError, match="lin3.model.1.weight has negative entries"):
    lpips_converter.params_from_torch_state_dicts(
        vgg, dict(lin, **{"lin3.model.1.weight": -lin["lin3.model.1.weight"]}))


def fake_torch(files: dict):
  """A stand-in `torch` module whose load() returns {name: tensor-like} of `files`."""
  tensor = lambda array: types.SimpleNamespace(detach=lambda: types.SimpleNamespace(
      numpy=lambda: array))
  return types.SimpleNamespace(load=lambda path, map_location, weights_only: {
      name: tensor(array) for name, array in files[path.split("/")[-1]].items()})


def test_convert_weights_cli_writes_a_loadable_lpips_file(tmp_path, monkeypatch, torch_weights,
                                                         params):
  vgg, lin = torch_weights
  monkeypatch.setitem(sys.modules, "torch", fake_torch({"vgg16.pth": vgg, "vgg.pth": lin}))
  for name in ("vgg16.pth", "vgg.pth"):
    (tmp_path / name).write_bytes(b"stand-in")
  out = str(tmp_path / "lpips_vgg16.msgpack")
  assert convert_weights.main(["lpips", f"--torch={tmp_path / 'vgg16.pth'}",
                               f"--lin={tmp_path / 'vgg.pth'}", f"--out={out}"]) == 0
  loaded = perceptual.load_lpips_params(out)
  assert jax.tree.structure(loaded) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


def test_reading_torch_files_without_torch_says_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
  with pytest.raises(ImportError, match="pip install torch"):
    torch_files.load_state_dict("a.pth")


def test_weight_lookup_and_status_line(tmp_path, monkeypatch):
  monkeypatch.delenv(perceptual.WEIGHTS_ENV_VARS["lpips"], raising=False)
  present = tmp_path / "lpips.msgpack"
  present.write_bytes(b"x")
  missing = str(tmp_path / "nothing_here.msgpack")
  assert perceptual.find_weights("lpips", str(present)) == str(present)
  assert perceptual.find_weights("lpips", None) is None
  # A path that is given but missing is an error, never a silent "off".
  with pytest.raises(ValueError, match=f"stage1.perceptual_weights='{missing}' is not a file"):
    perceptual.find_weights("lpips", missing)
  monkeypatch.setenv(perceptual.WEIGHTS_ENV_VARS["lpips"], str(present))
  assert perceptual.find_weights("lpips", None) == str(present)
  other = tmp_path / "other.msgpack"
  other.write_bytes(b"y")
  assert perceptual.find_weights("lpips", str(other)) == str(other)  # an explicit path wins
  monkeypatch.setenv(perceptual.WEIGHTS_ENV_VARS["lpips"], missing)
  with pytest.raises(ValueError, match=r"\$FSQ_LPIPS_WEIGHTS="):
    perceptual.find_weights("lpips", None)
  assert perceptual.status(None) == "perceptual loss: off (stage1.perceptual_loss='none')"


def test_a_perceptual_loss_without_weights_says_how_to_get_them(monkeypatch):
  monkeypatch.delenv(perceptual.WEIGHTS_ENV_VARS["resnet50"], raising=False)
  with pytest.raises(ValueError) as error:
    perceptual.check_available("resnet50")
  message = str(error.value)
  assert "stage1.perceptual_loss='resnet50' needs its ImageNet weights" in message
  assert "scripts/convert_weights.py resnet50 --torch=" in message
  assert "--config.stage1.perceptual_loss=none" in message and "\n" not in message
  perceptual.check_available("none")
  assert perceptual.load("none") is None
  with pytest.raises(ValueError, match="stage1.perceptual_loss='vgg' is unknown"):
    perceptual.check_available("vgg")


def test_lpips_loss_is_the_batch_mean_distance(tmp_path, params):
  path = str(tmp_path / "lpips.msgpack")
  weights.save_params(path, params, network=perceptual.NETWORK_NAME, source="test")
  loss = perceptual.load("lpips", path)
  assert loss.kind == "lpips" and path in perceptual.status(loss)
  x, y = random_images(4, 2), random_images(5, 2)
  np.testing.assert_allclose(loss.distance(loss.params, x, y),
                             np.mean(LPIPS().apply({"params": params}, x, y)), rtol=1e-6)
