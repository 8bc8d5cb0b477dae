"""Converts published pretrained weights into our weight format (fsq_repro.models.weights).

  python scripts/convert_weights.py inception --torch=pt_inception-2015-12-05-6726825d.pth \
      --out=inception_v3_2015.msgpack
  python scripts/convert_weights.py inception --tf_graph=classify_image_graph_def.pb \
      --out=inception_v3_2015.msgpack
  python scripts/convert_weights.py lpips --torch=vgg16-397923af.pth --lin=vgg.pth \
      --out=lpips_vgg16.msgpack
  python scripts/convert_weights.py resnet50 --torch=resnet50-0676ba61.pth --out=resnet50.msgpack
  python scripts/convert_weights.py resnet50 --magvit_npy=resnet50.npy --out=resnet50.msgpack
  python scripts/convert_weights.py maskgit --tokenizer=tokenizer_imagenet256_checkpoint \
      --transformer=maskgit_imagenet256_checkpoint --out=/data/runs/maskgit_official_256

`maskgit` writes a run directory (Stage I and Stage II checkpoints and configs) that
fsq_repro.api, --mode=sample and --mode=eval read as any finished run, with
configs/maskgit_official.py (image_size from the checkpoint; --config to give another).

--torch and --lin need PyTorch installed (only for this step); --tf_graph uses TensorFlow.
Point $FSQ_INCEPTION_WEIGHTS (or eval.inception_weights), $FSQ_RESNET50_WEIGHTS and
$FSQ_LPIPS_WEIGHTS (or stage1.perceptual_weights) at the output files. The ResNet-50 file
records its source (torchvision or MAGVIT), which sets the network's padding and input
normalisation.
"""

import argparse
import hashlib
import os
import sys

from fsq_repro import config_lib
from fsq_repro.converters import inception as inception_converter
from fsq_repro.converters import lpips as lpips_converter
from fsq_repro.converters import maskgit as maskgit_converter
from fsq_repro.converters import resnet50 as resnet50_converter
from fsq_repro.converters import torch_files
from fsq_repro.models import inception, perceptual, weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def convert_resnet50(args):
  """torchvision's resnet50 .pth or MAGVIT's resnet50 .npy -> (params, network name, source)."""
  if bool(args.torch) == bool(args.magvit_npy):
    raise ValueError("resnet50: pass exactly one of --torch=<.pth> or --magvit_npy=<.npy>")
  if args.torch:
    params = resnet50_converter.params_from_torch_state_dict(
        torch_files.load_state_dict(args.torch))
    return params, "resnet50_torchvision", f"torchvision {_file_source(args.torch)}"
  params = resnet50_converter.params_from_magvit_npy(
      resnet50_converter.load_magvit_npy(args.magvit_npy))
  return params, "resnet50_magvit", f"MAGVIT-style .npy {_file_source(args.magvit_npy)}"


def official_config_spec(transformer_variables: dict) -> str:
  """configs/maskgit_official.py at the image size of the transformer's positions (16 px per
  token: 257 positions -> 256 px, 1025 -> 512 px)."""
  positions = maskgit_converter.transformer_sizes(transformer_variables)["positions"]
  side = int(round((positions - 1)**0.5)) * 16
  return os.path.join(REPO, "configs", f"maskgit_official.py:image_size={side}")


def convert_maskgit(args) -> str:
  """Official MaskGIT tokenizer + transformer checkpoints -> a run directory; returns a line."""
  if not (args.tokenizer and args.transformer):
    raise ValueError("maskgit: pass --tokenizer=<tokenizer_imagenet*_checkpoint> and "
                     "--transformer=<maskgit_imagenet*_checkpoint>")
  tokenizer = maskgit_converter.read_official_checkpoint(args.tokenizer)
  transformer = maskgit_converter.read_official_checkpoint(args.transformer)
  spec = args.config or official_config_spec(transformer)
  config = config_lib.load_config(spec)
  sources = {"stage1": f"MaskGIT {_file_source(args.tokenizer)}",
             "stage2": f"MaskGIT {_file_source(args.transformer)}"}
  layout = maskgit_converter.write_workdir(args.out, config, tokenizer, transformer, sources)
  return (f"wrote the converted MaskGIT run ({config.dataset.image_size} px, "
          f"{layout['codebook_size']} codes, {layout['num_classes']} classes, config {spec}) "
          f"to {args.out}")


# One entry per network; each takes the parsed flags and returns (params, name, source), or
# writes a run directory itself and returns the line to print.
CONVERTERS = {
    "inception": convert_inception,
    "lpips": convert_lpips,
    "maskgit": convert_maskgit,
    "resnet50": convert_resnet50,
}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("network", choices=sorted(CONVERTERS))
  parser.add_argument("--torch", help="PyTorch state dict file (.pth)")
  parser.add_argument("--tf_graph", help="TensorFlow GraphDef file (.pb)")
  parser.add_argument("--lin", help="LPIPS v0.1 lin-layer state dict (lpips: vgg.pth)")
  parser.add_argument("--magvit_npy", help="resnet50: a MAGVIT-style {params, batch_stats} .npy")
  parser.add_argument("--tokenizer", help="official MaskGIT tokenizer checkpoint (maskgit)")
  parser.add_argument("--transformer", help="official MaskGIT transformer checkpoint (maskgit)")
  parser.add_argument("--config", help="maskgit: the run's config file[:arguments] (default: "
                      "configs/maskgit_official.py at the checkpoint's image size)")
  parser.add_argument("--out", required=True, help="weight file (or, maskgit, run directory) "
                      "to write")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  args = parser.parse_args(argv)
  if os.path.exists(args.out) and not args.overwrite:
    parser.error(f"--out={args.out} exists; pass --overwrite to replace it")
  for flag in ("torch", "tf_graph", "lin", "magvit_npy", "tokenizer", "transformer"):
    path = getattr(args, flag)
    if path and not os.path.isfile(path):
      parser.error(f"--{flag}={path} is not a file")
  try:
    converted = CONVERTERS[args.network](args)
  except (ValueError, ImportError) as error:
    parser.error(str(error))
  if isinstance(converted, str):
    print(converted)
    return 0
  params, network, source = converted
  weights.save_params(args.out, params, network=network, source=source)
  print(f"wrote {network} weights ({source}) to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
