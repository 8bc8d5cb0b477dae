"""Converts published pretrained weights into our weight format (fsq_repro.models.weights).

  python scripts/convert_weights.py inception --torch=pt_inception-2015-12-05-6726825d.pth \
      --out=inception_v3_2015.msgpack
  python scripts/convert_weights.py inception --tf_graph=classify_image_graph_def.pb \
      --out=inception_v3_2015.msgpack
  python scripts/convert_weights.py lpips --torch=vgg16-397923af.pth --lin=vgg.pth \
      --out=lpips_vgg16.msgpack

--torch and --lin need PyTorch installed (only for this step); --tf_graph uses TensorFlow.
Point $FSQ_INCEPTION_WEIGHTS (or eval.inception_weights) and $FSQ_LPIPS_WEIGHTS (or
stage1.perceptual_weights) at the output files.
"""

import argparse
import hashlib
import os
import sys

from fsq_repro.converters import inception as inception_converter
from fsq_repro.converters import lpips as lpips_converter
from fsq_repro.converters import torch_files
from fsq_repro.models import inception, perceptual, weights


def _file_source(path: str) -> str:
  """File name and sha256, so every metric computed later can name its weights."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return f"{os.path.basename(path)} sha256={digest.hexdigest()}"


def convert_inception(args):
  """pytorch-fid's .pth or ADM's TF GraphDef -> (params, network name, source)."""
  if bool(args.torch) == bool(args.tf_graph):
    raise ValueError("inception: pass exactly one of --torch=<.pth> or --tf_graph=<.pb>")
  if args.torch:
    state_dict = torch_files.load_state_dict(args.torch)
    source = f"pytorch-fid {_file_source(args.torch)}"
  else:
    state_dict = inception_converter.load_tf_graph_def_state_dict(args.tf_graph)
    source = f"TF GraphDef {_file_source(args.tf_graph)}"
  params = inception_converter.params_from_torch_state_dict(state_dict)
  return params, inception.NETWORK_NAME, source


def convert_lpips(args):
  """torchvision's vgg16 .pth and LPIPS v0.1's vgg.pth -> (params, network name, source)."""
  if not (args.torch and args.lin):
    raise ValueError("lpips: pass --torch=<torchvision vgg16 .pth> and --lin=<LPIPS vgg.pth>")
  params = lpips_converter.params_from_torch_state_dicts(
      torch_files.load_state_dict(args.torch), torch_files.load_state_dict(args.lin))
  source = (f"torchvision vgg16 {_file_source(args.torch)} + LPIPS v0.1 lin "
            f"{_file_source(args.lin)}")
  return params, perceptual.NETWORK_NAME, source


# One entry per network; each takes the parsed flags and returns (params, name, source).
CONVERTERS = {
    "inception": convert_inception,
    "lpips": convert_lpips,
}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("network", choices=sorted(CONVERTERS))
  parser.add_argument("--torch", help="PyTorch state dict file (.pth)")
  parser.add_argument("--tf_graph", help="TensorFlow GraphDef file (.pb)")
  parser.add_argument("--lin", help="LPIPS v0.1 lin-layer state dict (lpips: vgg.pth)")
  parser.add_argument("--out", required=True, help="weight file to write")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  args = parser.parse_args(argv)
  if os.path.exists(args.out) and not args.overwrite:
    parser.error(f"--out={args.out} exists; pass --overwrite to replace it")
  for flag in ("torch", "tf_graph", "lin"):
    path = getattr(args, flag)
    if path and not os.path.isfile(path):
      parser.error(f"--{flag}={path} is not a file")
  try:
    params, network, source = CONVERTERS[args.network](args)
  except (ValueError, ImportError) as error:
    parser.error(str(error))
  weights.save_params(args.out, params, network=network, source=source)
  print(f"wrote {network} weights ({source}) to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
