"""ResNet-50 ImageNet weights into `fsq_repro.models.resnet.ResNet50`'s parameters.

Two sources (the weight file's network name records which, because they need different
padding and input normalisation, `resnet.VARIANTS`):
- torchvision's `resnet50-*.pth` state dict (MaskBit and TiTok re-implement MaskGIT's
  perceptual loss with it): conv1/bn1, layer{1..4}.{j}.{conv,bn}{1..3}, downsample.{0,1}, fc.
- the `.npy` that MAGVIT-style JAX ports load (`pretrained_model_utils.get_pretrained_model`:
  `np.load(f, allow_pickle=True).item()` -> {"params", "batch_stats"} in `resnet_v1` names).
"""

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from fsq_repro.models import resnet

TORCH_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def expected_shapes() -> dict[str, tuple[int, ...]]:
  """'stage1/block1/conv1/kernel' -> shape, for every parameter of ResNet50."""
  images = jax.ShapeDtypeStruct((1, resnet.INPUT_SIZE, resnet.INPUT_SIZE, 3), jnp.float32)
  params = jax.eval_shape(resnet.ResNet50().init, jax.random.key(0), images)["params"]
  return {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}


def check_params(params) -> None:
  """Raises ValueError unless `params` has exactly ResNet50's names and shapes."""
  found = {k: tuple(np.shape(v))
           for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}
  expected = expected_shapes()
  problems = [f"missing {p}" for p in sorted(expected.keys() - found.keys())]
  problems += [f"unexpected {p}" for p in sorted(found.keys() - expected.keys())]
  problems += [f"{p} has shape {found[p]}, expected {expected[p]}"
               for p in sorted(expected.keys() & found.keys()) if found[p] != expected[p]]
  if problems:
    more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
    raise ValueError(f"not ResNet-50 ImageNet parameters: {'; '.join(problems[:3])}{more}")


def _torch_module(name: str) -> str:
  """'layer2.0.downsample.1' -> 'stage2/block1/proj_bn'; 'conv1' -> 'init_conv'."""
  parts = name.split(".")
  if parts[0] in ("conv1", "bn1"):
    return {"conv1": "init_conv", "bn1": "init_bn"}[parts[0]]
  if parts[0] == "fc":
    return "head"
  if parts[0].startswith("layer") and len(parts) >= 3:
    block = f"stage{parts[0][5:]}/block{int(parts[1]) + 1}"
    if parts[2] == "downsample":
      return f"{block}/{ {'0': 'proj_conv', '1': 'proj_bn'}[parts[3]] }"
    return f"{block}/{parts[2]}"
  raise ValueError(f"state dict entry {name!r} is not part of torchvision's ResNet-50")


def params_from_torch_state_dict(state_dict: dict[str, np.ndarray]) -> dict:
  """torchvision ResNet-50 state dict (numpy arrays) -> our parameter tree."""
  flat = {}
  for name, value in state_dict.items():
    if name.endswith("num_batches_tracked"):
      continue
    module, leaf = name.rsplit(".", 1)
    path = _torch_module(module)
    value = np.asarray(value, np.float32)
    if path == "head":
      flat[f"head/{'kernel' if leaf == 'weight' else 'bias'}"] = value.T if leaf == "weight" \
          else value
    elif value.ndim == 4:  # OIHW -> HWIO
      flat[f"{path}/kernel"] = value.transpose(2, 3, 1, 0)
    else:
      flat[f"{path}/{TORCH_BN[leaf]}"] = value
  params = flax.traverse_util.unflatten_dict(flat, sep="/")
  check_params(params)
  return params


def params_from_magvit_npy(checkpoint: dict) -> dict:
  """{"params", "batch_stats"} of MAGVIT's resnet_v1.ResNet50 -> our parameter tree (batch
  statistics become the frozen batch norms' mean and var)."""
  if not isinstance(checkpoint, dict) or set(checkpoint) != {"params", "batch_stats"}:
    raise ValueError("a MAGVIT ResNet-50 .npy holds a dict with 'params' and 'batch_stats'")
  flat = flax.traverse_util.flatten_dict(checkpoint["params"], sep="/")
  for path, value in flax.traverse_util.flatten_dict(checkpoint["batch_stats"], sep="/").items():
    flat[path] = value
  params = flax.traverse_util.unflatten_dict(
      {k: np.asarray(v, np.float32) for k, v in flat.items()}, sep="/")
  check_params(params)
  return params


def load_magvit_npy(path: str) -> dict:
  return np.load(path, allow_pickle=True).item()
