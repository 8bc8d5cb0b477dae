"""ResNet-50 for the perceptual loss: MAGVIT's layout, both converters, the loss MaskGIT uses.

The torchvision layout below is written out from torchvision's ResNet-50 (a bottleneck's
conv1 1x1, conv2 3x3 with the stride, conv3 1x1 to 4x; downsample = 1x1 conv + batch norm),
independently of the converter, so the converter is checked against torchvision's names and
shapes, not against itself.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsq_repro.converters import resnet50 as resnet50_converter
from fsq_repro.models import perceptual, resnet, weights


def torchvision_shapes() -> dict[str, tuple[int, ...]]:
  shapes = {"conv1.weight": (64, 3, 7, 7), "fc.weight": (1000, 2048), "fc.bias": (1000,)}

  def bn(name, channels):
    for leaf in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{name}.{leaf}"] = (channels,)
    shapes[f"{name}.num_batches_tracked"] = ()

  bn("bn1", 64)
  channels = 64
  for stage, blocks in enumerate((3, 4, 6, 3), start=1):
    width = 64 * 2**(stage - 1)
    for j in range(blocks):
      prefix = f"layer{stage}.{j}"
      shapes[f"{prefix}.conv1.weight"] = (width, channels, 1, 1)
      shapes[f"{prefix}.conv2.weight"] = (width, width, 3, 3)
      shapes[f"{prefix}.conv3.weight"] = (4 * width, width, 1, 1)
      for k, c in ((1, width), (2, width), (3, 4 * width)):
        bn(f"{prefix}.bn{k}", c)
      if j == 0:
        shapes[f"{prefix}.downsample.0.weight"] = (4 * width, channels, 1, 1)
        bn(f"{prefix}.downsample.1", 4 * width)
      channels = 4 * width
  return shapes


@pytest.fixture(scope="module")
def torch_state_dict():
  rng = np.random.default_rng(0)
  return {name: rng.normal(size=shape).astype(np.float32)
          for name, shape in torchvision_shapes().items()}


def test_features_and_logits_at_any_image_size():
  for size in (224, 64):
    images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    variables = jax.eval_shape(resnet.ResNet50().init, jax.random.key(0), images)
    features, logits = jax.eval_shape(resnet.ResNet50().apply, variables, images)
    assert features.shape == (2, 7, 7, 2048) and logits.shape == (2, 1000)  # resized to 224
  assert sum(np.prod(x.shape) for x in jax.tree.leaves(variables["params"])) == (
      25_557_032 + 2 * sum(shape[0] for name, shape in torchvision_shapes().items()
                           if name.endswith("running_mean")))  # + the frozen statistics


def test_torchvision_converter_maps_every_entry(torch_state_dict):
  params = resnet50_converter.params_from_torch_state_dict(torch_state_dict)
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  weight = torch_state_dict["layer3.2.conv2.weight"]  # OIHW
  np.testing.assert_array_equal(flat["stage3/block3/conv2/kernel"][1, 2, 17, 5],
                                weight[5, 17, 1, 2])
  np.testing.assert_array_equal(flat["stage2/block1/proj_bn/var"],
                                torch_state_dict["layer2.0.downsample.1.running_var"])
  np.testing.assert_array_equal(flat["init_conv/kernel"],
                                torch_state_dict["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(flat["head/kernel"], torch_state_dict["fc.weight"].T)
  with pytest.raises(ValueError, match="missing stage4/block3/conv3/kernel"):
    resnet50_converter.params_from_torch_state_dict(
        {k: v for k, v in torch_state_dict.items() if k != "layer4.2.conv3.weight"})
  with pytest.raises(ValueError, match="unexpected stage5/block1/conv1/kernel"):
    resnet50_converter.params_from_torch_state_dict(
        {**torch_state_dict, "layer5.0.conv1.weight": np.zeros((1, 1, 1, 1))})


def test_magvit_npy_converter_moves_batch_stats_into_the_frozen_norms(tmp_path):
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  ours = jax.eval_shape(resnet.ResNet50().init, jax.random.key(0), images)["params"]
  rng = np.random.default_rng(1)
  flat = {k: rng.normal(size=v.shape).astype(np.float32)
          for k, v in flax.traverse_util.flatten_dict(ours, sep="/").items()}
  # MAGVIT's resnet_v1: nn.BatchNorm keeps scale/bias in params, mean/var in batch_stats.
  stats = {k: v for k, v in flat.items() if k.endswith(("/mean", "/var"))}
  checkpoint = {"params": flax.traverse_util.unflatten_dict(
                    {k: v for k, v in flat.items() if k not in stats}, sep="/"),
                "batch_stats": flax.traverse_util.unflatten_dict(stats, sep="/")}
  path = tmp_path / "resnet50.npy"
  np.save(path, checkpoint, allow_pickle=True)
  params = resnet50_converter.params_from_magvit_npy(resnet50_converter.load_magvit_npy(path))
  converted = flax.traverse_util.flatten_dict(params, sep="/")
  assert converted.keys() == flat.keys()
  for key in ("stage1/block1/bn2/mean", "init_bn/scale", "stage4/block3/conv3/kernel"):
    np.testing.assert_array_equal(converted[key], flat[key])
  with pytest.raises(ValueError, match="'params' and 'batch_stats'"):
    resnet50_converter.params_from_magvit_npy({"params": checkpoint["params"]})


def test_torch_padding_is_symmetric_and_same_padding_is_flax_s():
  x = jax.random.normal(jax.random.key(0, impl="rbg"), (1, 8, 8, 2))
  kernel = jax.random.normal(jax.random.key(1, impl="rbg"), (3, 3, 2, 4))
  for padding, expected in (("torch", ((1, 1), (1, 1))), ("same", "SAME")):
    conv = resnet._conv(4, 3, 2, padding, "c")  # pylint: disable=protected-access
    got = conv.apply({"params": {"kernel": kernel}}, x)
    want = jax.lax.conv_general_dilated(x, kernel, (2, 2), expected,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("variant", sorted(resnet.VARIANTS))
def test_root_block_as_each_weight_source_computes_it(variant):
  """MAGVIT's root block: conv7x7/2 -> batch norm -> max pool (no ReLU, as resnet_v1.py is
  written); torchvision's: conv -> bn -> ReLU -> max pool, with symmetric padding and ImageNet
  normalisation. Checked by hand on the stem alone (no stages)."""
  fields = resnet.VARIANTS[variant]
  model = resnet.ResNet50(stage_sizes=(), **fields)
  images = jax.random.uniform(jax.random.key(0, impl="rbg"), (1, 224, 224, 3))
  variables = model.init(jax.random.key(1), images)
  rng = np.random.default_rng(3)
  params = {"init_conv": {"kernel": rng.normal(0, 0.1, (7, 7, 3, 64)).astype(np.float32)},
            "init_bn": {k: rng.normal(0, 1, (64,)).astype(np.float32) for k in
                        ("scale", "bias", "mean")} | {"var": np.full((64,), 4.0, np.float32)},
            "head": variables["params"]["head"]}
  features, _ = model.apply({"params": params}, images)
  x = np.asarray(images)
  if variant == "resnet50_torchvision":
    x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    conv_padding, pool_padding = ((3, 3), (3, 3)), ((0, 0), (1, 1), (1, 1), (0, 0))
  else:
    conv_padding, pool_padding = "SAME", "SAME"
  y = jax.lax.conv_general_dilated(jnp.asarray(x, jnp.float32), params["init_conv"]["kernel"],
                                   (2, 2), conv_padding,
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  bn = params["init_bn"]
  y = (y - bn["mean"]) / np.sqrt(bn["var"] + 1e-5) * bn["scale"] + bn["bias"]
  if variant == "resnet50_torchvision":
    y = jnp.maximum(y, 0)
  y = jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                            pool_padding)
  assert features.shape == (1, 56, 56, 64)
  np.testing.assert_allclose(features, y, rtol=1e-5, atol=1e-5)
  assert (float(features.min()) < 0) == (not fields["stem_relu"])


@pytest.mark.slow  # ResNet-50 at 224 px on a CPU
def test_resnet50_loss_is_the_mean_squared_feature_difference(tmp_path, torch_state_dict):
  params = resnet50_converter.params_from_torch_state_dict(torch_state_dict)
  # Keep the random network's activations in range: unit running variances, small kernels.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: np.ones_like(x) if jax.tree_util.keystr(path).endswith("['var']")
      else (x * 0.05 if x.ndim == 4 else x), params)
  path = str(tmp_path / "resnet50.msgpack")
  weights.save_params(path, params, network="resnet50_torchvision", source="random test")
  loss = perceptual.load("resnet50", path)
  x = jax.random.uniform(jax.random.key(2, impl="rbg"), (2, 32, 32, 3))
  y = jnp.clip(x + 0.1, 0, 1)
  model = resnet.ResNet50(**resnet.VARIANTS["resnet50_torchvision"])
  fx, _ = model.apply({"params": params}, x)
  fy, _ = model.apply({"params": params}, y)
  np.testing.assert_allclose(loss.distance(loss.params, x, y), jnp.mean((fx - fy)**2),
                             rtol=1e-5)
  assert float(loss.distance(loss.params, x, x)) == 0.0
