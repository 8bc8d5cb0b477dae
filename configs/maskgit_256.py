"""Figure 4: MaskGIT on ImageNet 256x256 with FSQ L = [8, 5, 5, 5] against VQ with 1024 codes.

Recipe (Sec. 4.3, App. A.4.3): Stage I 1M steps at batch 512; Stage II 2.5M steps at batch
256 (16 x 16 tokens); VQ with MaskGIT's entropy loss (weight 0.1). Sampling FID, precision
and recall are swept over the CFG weight alpha in 0 .. 0.25; `sample.cfg` defaults to the
paper's best alpha, 0.2 for FSQ and 0.1 for VQ.

Arguments: quantizer=fsq|vq; codebook_bits=k (FSQ: App. A.4.1 levels for 2^k; VQ: 2^k codes);
levels=8-5-5-5 (explicit FSQ levels, overrides codebook_bits).

One run, one GPU (ImageNet prepared for TFDS under $TFDS_DIR; the Inception and ResNet-50
weights converted with scripts/convert_weights.py, the latter for the perceptual loss):

  for mode in stage1 stage2 eval; do
    python -m fsq_repro.main --mode=$mode --config=configs/maskgit_256.py:quantizer=fsq \
        --workdir=/data/runs/maskgit_256/fsq_2p10 \
        --config.dataset.data_dir=$TFDS_DIR \
        --config.eval.inception_weights=inception_v3_2015.msgpack \
        --config.stage1.perceptual_weights=resnet50.msgpack
  done

Both runs, then the figure:

  python scripts/sweep.py --config=configs/maskgit_256.py --root=/data/runs/maskgit_256 --run \
      -- --config.dataset.data_dir=$TFDS_DIR \
         --config.eval.inception_weights=inception_v3_2015.msgpack \
         --config.stage1.perceptual_weights=resnet50.msgpack
  python scripts/plot_figures.py --sweep=/data/runs/maskgit_256 --out=figures/maskgit_256

TPU pod (one gcloud line per stage; every worker runs the same command, so the root must be
storage all workers share, e.g. a Filestore or gcsfuse mount):

  python scripts/sweep.py --config=configs/maskgit_256.py --root=/mnt/shared/maskgit_256 \
      --tpu=fsq-v4-64 --zone=us-central2-b -- --config.dataset.data_dir=/mnt/shared/tfds \
      --config.stage1.perceptual_weights=/mnt/shared/resnet50.msgpack

Hardware and time (estimated from FLOP counts at ~40% utilisation, not measured): per run,
Stage I ~6e20 FLOPs and Stage II ~3e20 FLOPs; ~3 days on a TPU v4-64 (32 chips), ~50 days
on one H100 (float32 via TF32), so this figure is a pod job. Evaluation (50k reconstructions,
6 CFG values x 50k samples) adds ~1 hour per run on one H100.

Expected (paper Fig. 4, ADM evaluation suite, 50k samples, best alpha):
  VQ  (1024 codes), alpha 0.1: FID 4.509, precision 0.860, recall 0.465, codebook usage 81%.
  FSQ [8, 5, 5, 5], alpha 0.2: FID 4.534, precision 0.864, recall 0.453, codebook usage 100%.
  For context: official MaskGIT checkpoint 4.916 / 0.836 / 0.489; ADM 4.59 / 0.83 / 0.52.
"""

from fsq_repro import config_lib

BEST_CFG = {"fsq": 0.2, "vq": 0.1}  # the paper's best alpha at 256 px


def get_config(arg: str | None = None):
  c, _ = config_lib.from_args(arg)  # Figure 3's recipe; what Figure 4 changes follows
  c.dataset.image_size = 256  # 16 x 16 tokens with the 16x downsampling tokenizer
  c.stage1.num_train_steps = 1_000_000
  c.stage1.batch_size = 512
  c.stage2.num_train_steps = 2_500_000
  c.sample.cfg = BEST_CFG[c.quantizer.kind]
  return c


def get_sweep() -> list[dict]:
  return [{"name": f"{quantizer}_2p10", "arg": f"quantizer={quantizer},codebook_bits=10"}
          for quantizer in ("fsq", "vq")]
