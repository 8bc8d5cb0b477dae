"""Inception-v3 FID weights from pytorch-fid's state dict or ADM's TF graph, into ours.

  params = inception.params_from_torch_state_dict(torch_files.load_state_dict(pth))
  params = inception.params_from_torch_state_dict(inception.load_tf_graph_def_state_dict(pb))

Both sources end in pytorch-fid's FIDInceptionV3 layout (torchvision names, OIHW kernels),
which converts into `fsq_repro.models.inception.InceptionV3` by renaming and transposing.
"""

import numpy as np

from fsq_repro.models.inception import BATCH_NORM_EPSILON, check_params


def _set(tree: dict, path: str, value) -> None:
  *parents, leaf = path.split("/")
  for key in parents:
    tree = tree.setdefault(key, {})
  tree[leaf] = value


# torch BasicConv2d leaves -> ours. torch's fc.bias is dropped: ADM's Inception Score
# multiplies pool_3 by the softmax weights alone.
_TORCH_LEAVES = {
    "conv.weight": "conv/kernel",
    "bn.weight": "bn/scale",
    "bn.bias": "bn/bias",
    "bn.running_mean": "bn/mean",
    "bn.running_var": "bn/var",
}
_TORCH_IGNORED = ("fc.bias",)


def params_from_torch_state_dict(state_dict: dict[str, np.ndarray]):
  """pytorch-fid's FIDInceptionV3 state dict (numpy arrays) -> our parameter tree.

  Conv weights go from OIHW to HWIO, fc.weight (1008, 2048) to a (2048, 1008) kernel.
  """
  params = {}
  for name, value in state_dict.items():
    if name in _TORCH_IGNORED or name.endswith("num_batches_tracked"):
      continue
    value = np.asarray(value, np.float32)
    if name == "fc.weight":
      _set(params, "fc/kernel", value.T)
      continue
    module, leaf = _split_torch_name(name)
    if leaf == "conv.weight":
      if value.ndim != 4:
        raise ValueError(f"state dict entry {name} has shape {value.shape}; expected OIHW")
      value = value.transpose(2, 3, 1, 0)
    _set(params, f"{module}/{_TORCH_LEAVES[leaf]}", value)
  check_params(params)
  return params


def _split_torch_name(name: str) -> tuple[str, str]:
  """'Mixed_5b.branch1x1.bn.running_mean' -> ('Mixed_5b/branch1x1', 'bn.running_mean')."""
  parts = name.split(".")
  leaf = ".".join(parts[-2:])
  if len(parts) < 3 or leaf not in _TORCH_LEAVES:
    raise ValueError(f"state dict entry {name!r} is not part of pytorch-fid's FIDInceptionV3")
  return "/".join(parts[:-2]), leaf


# TF graph scope of each conv inside a block -> torchvision's name for it.
_TF_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
            "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_TF_BRANCHES = {
    "A": {"conv": "branch1x1", "tower/conv": "branch5x5_1", "tower/conv_1": "branch5x5_2",
          "tower_1/conv": "branch3x3dbl_1", "tower_1/conv_1": "branch3x3dbl_2",
          "tower_1/conv_2": "branch3x3dbl_3", "tower_2/conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower/conv": "branch3x3dbl_1",
          "tower/conv_1": "branch3x3dbl_2", "tower/conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower/conv": "branch7x7_1", "tower/conv_1": "branch7x7_2",
          "tower/conv_2": "branch7x7_3", "tower_1/conv": "branch7x7dbl_1",
          "tower_1/conv_1": "branch7x7dbl_2", "tower_1/conv_2": "branch7x7dbl_3",
          "tower_1/conv_3": "branch7x7dbl_4", "tower_1/conv_4": "branch7x7dbl_5",
          "tower_2/conv": "branch_pool"},
    "D": {"tower/conv": "branch3x3_1", "tower/conv_1": "branch3x3_2",
          "tower_1/conv": "branch7x7x3_1", "tower_1/conv_1": "branch7x7x3_2",
          "tower_1/conv_2": "branch7x7x3_3", "tower_1/conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower/conv": "branch3x3_1",
          "tower/mixed/conv": "branch3x3_2a", "tower/mixed/conv_1": "branch3x3_2b",
          "tower_1/conv": "branch3x3dbl_1", "tower_1/conv_1": "branch3x3dbl_2",
          "tower_1/mixed/conv": "branch3x3dbl_3a", "tower_1/mixed/conv_1": "branch3x3dbl_3b",
          "tower_2/conv": "branch_pool"},
}
_TF_BLOCKS = (("mixed", "Mixed_5b", "A"), ("mixed_1", "Mixed_5c", "A"),
              ("mixed_2", "Mixed_5d", "A"), ("mixed_3", "Mixed_6a", "B"),
              ("mixed_4", "Mixed_6b", "C"), ("mixed_5", "Mixed_6c", "C"),
              ("mixed_6", "Mixed_6d", "C"), ("mixed_7", "Mixed_6e", "C"),
              ("mixed_8", "Mixed_7a", "D"), ("mixed_9", "Mixed_7b", "E"),
              ("mixed_10", "Mixed_7c", "E"))


def tf_conv_scopes() -> dict[str, str]:
  """TF graph scope ('mixed_6/conv') -> torchvision module ('Mixed_6d.branch1x1')."""
  scopes = dict(_TF_STEM)
  for tf_block, torch_block, kind in _TF_BLOCKS:
    for tf_conv, torch_branch in _TF_BRANCHES[kind].items():
      scopes[f"{tf_block}/{tf_conv}"] = f"{torch_block}.{torch_branch}"
  return scopes


def torch_state_dict_from_graph_def(graph_def) -> dict[str, np.ndarray]:
  """ADM's `classify_image_graph_def.pb` GraphDef -> a state dict in pytorch-fid's layout.

  Reads the graph's constants: <scope>/conv2d_params (HWIO), <scope>/batchnorm/{gamma,
  beta,moving_mean,moving_variance}, softmax/weights (2048, 1008) and softmax/biases.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  nodes = {node.name: node for node in graph_def.node}
  constants = {name: tf.make_ndarray(node.attr["value"].tensor)
               for name, node in nodes.items() if node.op == "Const"}

  def constant(name):
    if name not in constants:
      raise ValueError(f"the graph has no constant {name!r}; is it classify_image_graph_def.pb?")
    return constants[name]

  state_dict = {}
  for scope, module in tf_conv_scopes().items():
    state_dict[f"{module}.conv.weight"] = constant(f"{scope}/conv2d_params").transpose(3, 2, 0, 1)
    bn = f"{scope}/batchnorm"
    gamma = constant(f"{bn}/gamma")
    if bn in nodes:
      attrs = nodes[bn].attr
      if not np.isclose(attrs["variance_epsilon"].f, BATCH_NORM_EPSILON):
        raise ValueError(f"{bn} has epsilon {attrs['variance_epsilon'].f}, expected 1e-3")
      if "scale_after_normalization" in attrs and not attrs["scale_after_normalization"].b:
        gamma = np.ones_like(gamma)  # the op ignores gamma
    state_dict[f"{module}.bn.weight"] = gamma
    state_dict[f"{module}.bn.bias"] = constant(f"{bn}/beta")
    state_dict[f"{module}.bn.running_mean"] = constant(f"{bn}/moving_mean")
    state_dict[f"{module}.bn.running_var"] = constant(f"{bn}/moving_variance")
  state_dict["fc.weight"] = constant("softmax/weights").T
  state_dict["fc.bias"] = constant("softmax/biases")
  return state_dict


def load_tf_graph_def_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads ADM's `classify_image_graph_def.pb` into pytorch-fid's state-dict layout."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  with open(path, "rb") as f:
    graph_def = tf.compat.v1.GraphDef.FromString(f.read())
  return torch_state_dict_from_graph_def(graph_def)
