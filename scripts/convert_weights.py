"""Converts published pretrained weights into our weight format (fsq_repro.models.weights).

  python scripts/convert_weights.py inception --torch=pt_inception-2015-12-05-6726825d.pth \
      --out=inception_v3_2015.msgpack
  python scripts/convert_weights.py inception --tf_graph=classify_image_graph_def.pb \
      --out=inception_v3_2015.msgpack

--torch needs PyTorch installed (only for this step); --tf_graph uses TensorFlow. Point
$FSQ_INCEPTION_WEIGHTS (or the eval config) at the output file.
"""

import argparse
import hashlib
import os
import sys

from fsq_repro.models import inception
from fsq_repro.models import weights


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
    state_dict = inception.load_torch_state_dict(args.torch)
    source = f"pytorch-fid {_file_source(args.torch)}"
  else:
    state_dict = inception.load_tf_graph_def_state_dict(args.tf_graph)
    source = f"TF GraphDef {_file_source(args.tf_graph)}"
  params = inception.params_from_torch_state_dict(state_dict)
  return params, inception.NETWORK_NAME, source


# One entry per network; each takes the parsed flags and returns (params, name, source).
CONVERTERS = {
    "inception": convert_inception,
}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("network", choices=sorted(CONVERTERS))
  parser.add_argument("--torch", help="PyTorch state dict file (.pth)")
  parser.add_argument("--tf_graph", help="TensorFlow GraphDef file (.pb)")
  parser.add_argument("--out", required=True, help="weight file to write")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  args = parser.parse_args(argv)
  if os.path.exists(args.out) and not args.overwrite:
    parser.error(f"--out={args.out} exists; pass --overwrite to replace it")
  for flag in ("torch", "tf_graph"):
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
