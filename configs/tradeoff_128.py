"""Figure 3: the VQ / FSQ trade-off study on ImageNet 128x128 (Sec. 4.2, App. A.4.1).

Recipe (the paper's): MaskGIT's tokenizer and transformer at 128 px (8 x 8 tokens).
Stage I: 500k steps at batch 256 (~100 epochs of ImageNet-1k). Stage II: 1M steps at
batch 256 (~200 epochs). VQ uses MaskGIT's entropy loss, weight 0.1. Sizes 2^4 .. 2^16:
FSQ with the App. A.4.1 levels, VQ with 2^k codes at the same k, plus FSQ runs whose
levels are all 4 (some L_i < 5) at 2^8, 2^10 and 2^12 against the table's levels.

Where the recipe's choices come from (config_lib.base_config; google-research/maskgit and
google-research/magvit, as REFERENCE.md records them):
- Tokenizer residual blocks: maskgit's vqgan_tokenizer.py ResBlock, whose width-changing skip
  is a 1x1 conv of the block's output (models/vqgan.py); the official checkpoints load.
- stage1.perceptual_loss="resnet50", weight 0.1: maskgit's configs/vqgan_config.py
  (perceptual_loss_weight 0.1, perceptual_loss_on_logit=False) with MAGVIT's
  calculate_perceptual_loss_on_pretrained: mean squared difference of the 7 x 7 x 2048
  ResNet-50 feature maps at 224 px. The ImageNet weights must be converted; no weights, no run.
- stage2.tokens="online": MAGVIT's Stage II trainer tokenizes each freshly augmented batch
  with the frozen tokenizer; the paper trains Stage II for 200 epochs, so one fixed crop per
  image ("precomputed") would see far less augmentation than the paper's models did.
- stage2.loss_reduction="per_example": maskgit's libml/losses.py averages each example's
  masked tokens, then the batch.
- quantizer.entropy_group_size=0 (global batch): MaskGIT computed VQ's entropy statistics per
  device under pmap, over its per-core batch, which is not published; the global batch is the
  better estimator and does not depend on the device count. Set it to k to compute them over
  groups of k examples, as a k-example-per-core pmap would.
- stage2.min_mask_fraction=0.45 and CFG label dropout 0.1: the FSQ paper's (any bound above
  0.2 stabilises training; maskgit_class_cond_config.py has min_masking_rate 0.5 and trains
  without label dropout, so it has no unconditional model to guide with).

Arguments: quantizer=fsq|vq; codebook_bits=k (FSQ: App. A.4.1 levels for 2^k; VQ: 2^k codes);
levels=8-5-5-5 (explicit FSQ levels, overrides codebook_bits).

One run, one GPU (ImageNet prepared for TFDS under $TFDS_DIR; the Inception and ResNet-50
weights converted with scripts/convert_weights.py, the latter for the perceptual loss):

  for mode in stage1 stage2 eval; do
    python -m fsq_repro.main --mode=$mode \
        --config=configs/tradeoff_128.py:quantizer=fsq,codebook_bits=12 \
        --workdir=/data/runs/tradeoff_128/fsq_2p12 \
        --config.dataset.data_dir=$TFDS_DIR \
        --config.eval.inception_weights=inception_v3_2015.msgpack \
        --config.stage1.perceptual_weights=resnet50.msgpack
  done

The whole figure (every run of get_sweep(), one after another; rerunning resumes):

  python scripts/sweep.py --config=configs/tradeoff_128.py --root=/data/runs/tradeoff_128 --run \
      -- --config.dataset.data_dir=$TFDS_DIR \
         --config.eval.inception_weights=inception_v3_2015.msgpack \
         --config.stage1.perceptual_weights=resnet50.msgpack
  python scripts/plot_figures.py --sweep=/data/runs/tradeoff_128 --out=figures/tradeoff_128

TPU pod (prints one gcloud line per stage; every worker runs the same command, so the root
must be storage all workers share, e.g. a Filestore or gcsfuse mount):

  python scripts/sweep.py --config=configs/tradeoff_128.py --root=/mnt/shared/tradeoff_128 \
      --tpu=fsq-v4-32 --zone=us-central2-b -- --config.dataset.data_dir=/mnt/shared/tfds \
      --config.stage1.perceptual_weights=/mnt/shared/resnet50.msgpack

Hardware and time (estimated from FLOP counts at ~40% utilisation, not measured): per run,
Stage I ~4e19 FLOPs and Stage II ~3e19 FLOPs (with the frozen tokenizer's forward pass);
~4 days on one H100 (float32 via TF32), ~11 hours on a TPU v4-32 (16 chips). The 21 runs:
~3 GPU months, or ~10 days of a v4-32. Evaluation (50k reconstructions, 6 CFG values x 50k
samples) adds under an hour per run on one H100.

Expected (paper Fig. 3; read off the plots, no table): FSQ reconstruction FID keeps improving
with |C|; VQ's is best near 2^11, where its usage starts falling, below 50% above 2^11 (never
more than ~2^10 codes used); FSQ usage ~100% up to 2^14 and > 2^15 codes used at 2^16; FSQ
sampling FID better than VQ above 2^10, saturating from ~2^12; compression cost grows with
|C| and is slightly higher for FSQ; levels with L_i < 5 give worse sampling FID (App. A.4.1).
"""

import math

from fsq_repro import config_lib
from fsq_repro.quantizers import fsq as fsq_lib

CODEBOOK_BITS = tuple(round(math.log2(size)) for size in sorted(fsq_lib.LEVELS_FOR_CODEBOOK_SIZE))
# Equal-size alternatives to the table's levels with every L_i < 5: 4^4, 4^5 and 4^6 codes.
SMALL_LEVELS = ((4, 4, 4, 4), (4, 4, 4, 4, 4), (4, 4, 4, 4, 4, 4))


def get_config(arg: str | None = None):
  c, _ = config_lib.from_args(arg)  # the defaults are this figure's recipe
  return c


def get_sweep() -> list[dict]:
  runs = [{"name": f"{quantizer}_2p{bits}", "arg": f"quantizer={quantizer},codebook_bits={bits}"}
          for quantizer in ("fsq", "vq") for bits in CODEBOOK_BITS]
  for levels in SMALL_LEVELS:
    text = "-".join(str(l) for l in levels)
    runs.append({"name": f"fsq_L{text}", "arg": f"quantizer=fsq,levels={text}"})
  return runs
