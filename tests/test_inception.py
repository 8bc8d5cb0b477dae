"""FID Inception-v3: legacy resize, pooling, converters, weight files, output contract.

Weights are random and made here (the real ones cannot be downloaded in tests). The state
dict layout is written out independently from torchvision's Inception3 tables below, so
the converter is checked against torchvision's names and shapes, not against itself.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsq_repro.converters import inception as inception_converter
from fsq_repro.models import inception as inc
from fsq_repro.models import weights
from scripts import convert_weights


# ------------------------------------------- torchvision's FID Inception, as a shape table


def torch_conv_shapes() -> dict[str, tuple[int, int, int, int]]:
  """torchvision module name -> OIHW conv shape for pytorch-fid's FIDInceptionV3."""
  convs = {}

  def conv(name, cin, cout, kh, kw=None):
    convs[name] = (cout, cin, kh, kh if kw is None else kw)

  conv("Conv2d_1a_3x3", 3, 32, 3)
  conv("Conv2d_2a_3x3", 32, 32, 3)
  conv("Conv2d_2b_3x3", 32, 64, 3)
  conv("Conv2d_3b_1x1", 64, 80, 1)
  conv("Conv2d_4a_3x3", 80, 192, 3)
  for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
    conv(f"{name}.branch1x1", cin, 64, 1)
    conv(f"{name}.branch5x5_1", cin, 48, 1)
    conv(f"{name}.branch5x5_2", 48, 64, 5)
    conv(f"{name}.branch3x3dbl_1", cin, 64, 1)
    conv(f"{name}.branch3x3dbl_2", 64, 96, 3)
    conv(f"{name}.branch3x3dbl_3", 96, 96, 3)
    conv(f"{name}.branch_pool", cin, pool, 1)
  conv("Mixed_6a.branch3x3", 288, 384, 3)
  conv("Mixed_6a.branch3x3dbl_1", 288, 64, 1)
  conv("Mixed_6a.branch3x3dbl_2", 64, 96, 3)
  conv("Mixed_6a.branch3x3dbl_3", 96, 96, 3)
  for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
    conv(f"{name}.branch1x1", 768, 192, 1)
    conv(f"{name}.branch7x7_1", 768, c7, 1)
    conv(f"{name}.branch7x7_2", c7, c7, 1, 7)
    conv(f"{name}.branch7x7_3", c7, 192, 7, 1)
    conv(f"{name}.branch7x7dbl_1", 768, c7, 1)
    conv(f"{name}.branch7x7dbl_2", c7, c7, 7, 1)
    conv(f"{name}.branch7x7dbl_3", c7, c7, 1, 7)
    conv(f"{name}.branch7x7dbl_4", c7, c7, 7, 1)
    conv(f"{name}.branch7x7dbl_5", c7, 192, 1, 7)
    conv(f"{name}.branch_pool", 768, 192, 1)
  conv("Mixed_7a.branch3x3_1", 768, 192, 1)
  conv("Mixed_7a.branch3x3_2", 192, 320, 3)
  conv("Mixed_7a.branch7x7x3_1", 768, 192, 1)
  conv("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7)
  conv("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1)
  conv("Mixed_7a.branch7x7x3_4", 192, 192, 3)
  for name, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
    conv(f"{name}.branch1x1", cin, 320, 1)
    conv(f"{name}.branch3x3_1", cin, 384, 1)
    conv(f"{name}.branch3x3_2a", 384, 384, 1, 3)
    conv(f"{name}.branch3x3_2b", 384, 384, 3, 1)
    conv(f"{name}.branch3x3dbl_1", cin, 448, 1)
    conv(f"{name}.branch3x3dbl_2", 448, 384, 3)
    conv(f"{name}.branch3x3dbl_3a", 384, 384, 1, 3)
    conv(f"{name}.branch3x3dbl_3b", 384, 384, 3, 1)
    conv(f"{name}.branch_pool", cin, 192, 1)
  return convs


def random_torch_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
  """A random FIDInceptionV3 state dict whose activations stay O(1) through 94 layers."""
  rng = np.random.default_rng(seed)
  state = {}
  for module, (cout, cin, kh, kw) in torch_conv_shapes().items():
    he_std = np.sqrt(2.0 / (cin * kh * kw))
    state[f"{module}.conv.weight"] = rng.normal(0, he_std, (cout, cin, kh, kw))
    state[f"{module}.bn.weight"] = rng.uniform(0.5, 1.5, cout)
    state[f"{module}.bn.bias"] = rng.normal(0, 0.1, cout)
    state[f"{module}.bn.running_mean"] = rng.normal(0, 0.1, cout)
    state[f"{module}.bn.running_var"] = rng.uniform(0.5, 1.5, cout)
    state[f"{module}.bn.num_batches_tracked"] = np.array(0, np.int64)
  state["fc.weight"] = rng.normal(0, 0.02, (inc.NUM_CLASSES, inc.POOL_FEATURES))
  state["fc.bias"] = rng.normal(0, 0.02, inc.NUM_CLASSES)
  return {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in state.items()}


@pytest.fixture(scope="module")
def state_dict():
  return random_torch_state_dict()


@pytest.fixture(scope="module")
def params(state_dict):
  return inception_converter.params_from_torch_state_dict(state_dict)


# ---------------------------------------------------------------------- legacy resize


def brute_force_tf1_legacy_resize(images, out_h, out_w):
  """TF1 ResizeBilinear, align_corners=False, half_pixel_centers=False, pixel by pixel."""
  n, in_h, in_w, c = images.shape
  out = np.zeros((n, out_h, out_w, c), np.float32)
  scale_y = np.float32(in_h) / np.float32(out_h)
  scale_x = np.float32(in_w) / np.float32(out_w)
  for i in range(out_h):
    y = np.float32(i) * scale_y
    y0, y1 = int(np.floor(y)), min(int(np.ceil(y)), in_h - 1)
    wy = y - np.floor(y)
    for j in range(out_w):
      x = np.float32(j) * scale_x
      x0, x1 = int(np.floor(x)), min(int(np.ceil(x)), in_w - 1)
      wx = x - np.floor(x)
      top = images[:, y0, x0] + (images[:, y0, x1] - images[:, y0, x0]) * wx
      bottom = images[:, y1, x0] + (images[:, y1, x1] - images[:, y1, x0]) * wx
      out[:, i, j] = top + (bottom - top) * wy
  return out


@pytest.mark.parametrize("in_hw,out_hw", [((7, 5), (11, 4)), ((13, 9), (6, 4)),
                                          ((40, 64), (299, 299))])
def test_legacy_resize_matches_brute_force(in_hw, out_hw):
  images = np.random.default_rng(1).uniform(0, 255, (2, *in_hw, 3)).astype(np.float32)
  got = inc.resize_bilinear_tf1_legacy(jnp.asarray(images), out_hw)
  want = brute_force_tf1_legacy_resize(images, *out_hw)
  np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-3)


def test_legacy_resize_matches_tensorflow_kernel():
  tf = pytest.importorskip("tensorflow")
  images = np.random.default_rng(2).uniform(0, 255, (2, 256, 192, 3)).astype(np.float32)
  want = tf.raw_ops.ResizeBilinear(images=images, size=[299, 299], align_corners=False,
                                   half_pixel_centers=False).numpy()
  got = inc.resize_bilinear_tf1_legacy(jnp.asarray(images), (299, 299))
  np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-3)


def test_legacy_resize_is_not_half_pixel_resize():
  images = np.random.default_rng(3).uniform(0, 255, (1, 256, 256, 3)).astype(np.float32)
  legacy = inc.resize_bilinear_tf1_legacy(jnp.asarray(images), (299, 299))
  half_pixel = jax.image.resize(jnp.asarray(images), (1, 299, 299, 3), "bilinear")
  assert float(jnp.max(jnp.abs(legacy - half_pixel))) > 10.0
  # Legacy resize puts output (0, 0) exactly on input (0, 0); half-pixel does not.
  np.testing.assert_array_equal(np.asarray(legacy[0, 0, 0]), images[0, 0, 0])


def test_preprocess_scales_and_skips_identity_resize():
  images = np.random.default_rng(4).uniform(0, 255, (1, 299, 299, 3)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(inc.preprocess(images)), (images - 128) / 128)
  np.testing.assert_array_equal(
      np.asarray(inc.resize_bilinear_tf1_legacy(images, (299, 299))), images)
  with pytest.raises(ValueError, match="3 channels"):
    inc.preprocess(np.zeros((1, 32, 32, 1), np.float32))


# ---------------------------------------------------------------------------- pooling


def test_avg_pool_excludes_padding_from_divisor():
  ones = jnp.ones((1, 3, 3, 1))
  np.testing.assert_array_equal(np.asarray(inc.avg_pool_3x3_excluding_padding(ones)), 1.0)
  x = np.random.default_rng(5).normal(size=(2, 4, 5, 3)).astype(np.float32)
  want = np.zeros_like(x)
  for i in range(4):
    for j in range(5):
      window = x[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
      want[:, i, j] = window.mean(axis=(1, 2))
  got = inc.avg_pool_3x3_excluding_padding(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)
  # The corner averages 4 pixels, not 4 pixels and 5 zeros.
  np.testing.assert_allclose(float(got[0, 0, 0, 0]), x[0, :2, :2, 0].mean(), rtol=1e-6)


# ------------------------------------------------------------------------- converters


def test_torch_converter_maps_every_entry_to_the_model_tree(state_dict, params):
  variables = jax.eval_shape(inc.InceptionV3().init, jax.random.key(0),
                             jnp.zeros((1, 75, 75, 3)))
  model_shapes = jax.tree.map(lambda leaf: leaf.shape, variables["params"])
  assert jax.tree.map(np.shape, params) == model_shapes
  # 94 BasicConv2d (kernel + 4 batch-norm leaves) and the softmax kernel.
  assert len(jax.tree.leaves(params)) == 94 * 5 + 1
  weight = state_dict["Mixed_6d.branch7x7_2.conv.weight"]  # OIHW (160, 160, 1, 7)
  kernel = params["Mixed_6d"]["branch7x7_2"]["conv"]["kernel"]  # HWIO (1, 7, 160, 160)
  np.testing.assert_array_equal(kernel[0, 5, 17, 42], weight[42, 17, 0, 5])
  bn = params["Mixed_7c"]["branch_pool"]["bn"]
  for ours, theirs in (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"),
                       ("var", "running_var")):
    np.testing.assert_array_equal(bn[ours], state_dict[f"Mixed_7c.branch_pool.bn.{theirs}"])
  np.testing.assert_array_equal(params["fc"]["kernel"], state_dict["fc.weight"].T)


def test_torch_converter_rejects_other_networks(state_dict):
  missing = {k: v for k, v in state_dict.items() if not k.startswith("Mixed_7c.branch1x1.")}
  with pytest.raises(ValueError, match="missing Mixed_7c/branch1x1/conv/kernel"):
    inception_converter.params_from_torch_state_dict(missing)
  with pytest.raises(ValueError, match="AuxLogits"):
    inception_converter.params_from_torch_state_dict({**state_dict, "AuxLogits.fc.weight": np.zeros((2, 2))})
  thousand = {**state_dict, "fc.weight": np.zeros((1000, 2048), np.float32)}
  with pytest.raises(ValueError, match=r"fc/kernel has shape \(2048, 1000\)"):
    inception_converter.params_from_torch_state_dict(thousand)


def fake_classify_image_graph_def(state_dict, *, scale_after_normalization=True):
  """A GraphDef with the constants and batch-norm ops of ADM's graph, from a state dict."""
  tf = pytest.importorskip("tensorflow")
  graph_def = tf.compat.v1.GraphDef()

  def add_constant(name, value):
    node = graph_def.node.add(name=name, op="Const")
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.asarray(value, np.float32)))

  for scope, module in inception_converter.tf_conv_scopes().items():
    add_constant(f"{scope}/conv2d_params",
                 state_dict[f"{module}.conv.weight"].transpose(2, 3, 1, 0))
    for tf_leaf, torch_leaf in (("gamma", "weight"), ("beta", "bias"),
                                ("moving_mean", "running_mean"),
                                ("moving_variance", "running_var")):
      add_constant(f"{scope}/batchnorm/{tf_leaf}", state_dict[f"{module}.bn.{torch_leaf}"])
    bn = graph_def.node.add(name=f"{scope}/batchnorm", op="BatchNormWithGlobalNormalization")
    bn.attr["variance_epsilon"].f = 1e-3
    bn.attr["scale_after_normalization"].b = scale_after_normalization
  add_constant("softmax/weights", state_dict["fc.weight"].T)
  add_constant("softmax/biases", state_dict["fc.bias"])
  return graph_def


def test_tf_graph_converter_matches_torch_converter(state_dict, params):
  from_graph = inception_converter.torch_state_dict_from_graph_def(fake_classify_image_graph_def(state_dict))
  jax.tree.map(np.testing.assert_array_equal,
               inception_converter.params_from_torch_state_dict(from_graph), params)
  unscaled = inception_converter.torch_state_dict_from_graph_def(
      fake_classify_image_graph_def(state_dict, scale_after_normalization=False))
  np.testing.assert_array_equal(unscaled["Mixed_6d.branch1x1.bn.weight"], np.ones(192))


# ---------------------------------------------------------------------- weight files


def test_weights_file_round_trip(tmp_path, params):
  path = str(tmp_path / "inception.msgpack")
  inc.save_inception_params(path, params, source="random test weights")
  jax.tree.map(np.testing.assert_array_equal, inc.load_inception_params(path), params)
  other = str(tmp_path / "other.msgpack")
  weights.save_params(other, params, network="lpips_vgg", source="test")
  with pytest.raises(ValueError, match="lpips_vgg"):
    inc.load_inception_params(other)


def test_find_inception_weights(tmp_path, monkeypatch):
  explicit, from_env = tmp_path / "a.msgpack", tmp_path / "b.msgpack"
  explicit.write_bytes(b"x")
  from_env.write_bytes(b"x")
  monkeypatch.delenv(inc.WEIGHTS_ENV_VAR, raising=False)
  assert inc.find_inception_weights(None) is None
  monkeypatch.setenv(inc.WEIGHTS_ENV_VAR, str(from_env))
  assert inc.find_inception_weights(None) == str(from_env)
  assert inc.find_inception_weights(str(explicit)) == str(explicit)
  with pytest.raises(ValueError, match="path="):
    inc.find_inception_weights(str(tmp_path / "missing"))
  monkeypatch.setenv(inc.WEIGHTS_ENV_VAR, str(tmp_path / "missing"))
  with pytest.raises(ValueError, match=inc.WEIGHTS_ENV_VAR):
    inc.find_inception_weights(None)


def test_convert_weights_cli_from_tf_graph(tmp_path, capsys, state_dict, params):
  graph = tmp_path / "classify_image_graph_def.pb"
  graph.write_bytes(fake_classify_image_graph_def(state_dict).SerializeToString())
  out = tmp_path / "inception.msgpack"
  argv = ["inception", f"--tf_graph={graph}", f"--out={out}"]
  assert convert_weights.main(argv) == 0
  jax.tree.map(np.testing.assert_array_equal, inc.load_inception_params(str(out)), params)
  with pytest.raises(SystemExit):
    convert_weights.main(argv)  # refuses to overwrite
  assert "exists" in capsys.readouterr().err


# ---------------------------------------------------------------------------- forward


def test_outputs_match_the_adm_contract(params):
  images = np.random.default_rng(6).uniform(0, 255, (2, 64, 48, 3)).astype(np.float32)
  in_mixed_6d_branch1x1 = lambda module, _: module.path == ("Mixed_6d", "branch1x1")
  apply = jax.jit(lambda p, x: inc.InceptionV3().apply(
      {"params": p}, x, capture_intermediates=in_mixed_6d_branch1x1))
  out, state = apply(params, images)
  assert out["pool_3"].shape == (2, 2048)
  assert out["spatial"].shape == (2, 2023)
  assert out["logits"].shape == (2, 1008)
  assert np.all(np.isfinite(out["pool_3"])) and np.all(out["pool_3"] >= 0)  # mean of ReLUs
  assert 0.01 < float(jnp.std(out["pool_3"])) < 100  # the random net neither dies nor blows up
  mixed_6_conv = state["intermediates"]["Mixed_6d"]["branch1x1"]["__call__"][0]
  assert mixed_6_conv.shape == (2, 17, 17, 192)
  np.testing.assert_array_equal(out["spatial"][1].reshape(17, 17, 7), mixed_6_conv[1, ..., :7])
  np.testing.assert_allclose(out["logits"], np.asarray(out["pool_3"]) @ params["fc"]["kernel"],
                             rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------- parity with pytorch-fid


@pytest.mark.slow
def test_pool_3_matches_pytorch_fid(monkeypatch):
  torch = pytest.importorskip("torch")
  pytorch_fid_inception = pytest.importorskip("pytorch_fid.inception")
  state = random_torch_state_dict(seed=7)
  # pytorch-fid builds FIDInceptionV3 and loads its weights strictly (names and shapes
  # must match); hand it ours instead of downloading.
  monkeypatch.setattr(pytorch_fid_inception, "load_state_dict_from_url",
                      lambda *args, **kwargs: {k: torch.from_numpy(v) for k, v in state.items()})
  torch_net = pytorch_fid_inception.InceptionV3(resize_input=False, normalize_input=False)
  torch_net.eval()

  mixed_6d_branch1x1 = torch_net.blocks[2][6].branch1x1  # TF's mixed_6/conv
  captured = []
  mixed_6d_branch1x1.register_forward_hook(lambda module, args, out: captured.append(out))

  images = np.random.default_rng(8).uniform(0, 255, (2, 299, 299, 3)).astype(np.float32)
  with torch.no_grad():
    normalized = torch.from_numpy((images - 128) / 128).permute(0, 3, 1, 2)
    want_pool_3 = torch_net(normalized)[0].reshape(2, -1).numpy()
  want_spatial = captured[0].permute(0, 2, 3, 1)[..., :7].reshape(2, -1).numpy()
  got = inc.InceptionV3().apply({"params": inception_converter.params_from_torch_state_dict(state)}, images)
  for name, want in (("pool_3", want_pool_3), ("spatial", want_spatial)):
    diff = float(np.max(np.abs(np.asarray(got[name]) - want)))
    print(f"{name} max abs difference vs pytorch-fid: {diff:.3g} "
          f"(max |{name}| {np.abs(want).max():.3g})")
    np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_convert_weights_cli_from_torch_pth(tmp_path, state_dict, params):
  torch = pytest.importorskip("torch")
  pth = tmp_path / "pt_inception-2015-12-05-test.pth"
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}, pth)
  out = tmp_path / "inception.msgpack"
  assert convert_weights.main(["inception", f"--torch={pth}", f"--out={out}"]) == 0
  jax.tree.map(np.testing.assert_array_equal, inc.load_inception_params(str(out)), params)
