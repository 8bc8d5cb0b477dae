"""UViM colorization on ImageNet at 512 px: Table 2's colorization rows (FSQ paper, Sec. 4.4).

  python scripts/sweep.py --config=configs/uvim_colorization.py --root=/data/runs/uvim_color --print
  python -m fsq_repro.main --mode=stage1 --config=configs/uvim_colorization.py:quantizer=fsq \
      --workdir=/data/runs/uvim_color/fsq_seed0 \
      --config.stage2.encoder_init=/data/vit/L_16-i21k.npz    # (Stage II's encoder)

Arguments: quantizer=fsq|vq (FSQ [7,5,5,5,5], 4375 codes, or UViM's 4096-word EMA VQ with
splitting), splitting=0|1 (VQ), context=0|1 (the gray image in Stage I's encoder and
decoder), seed=k (Stage II). big_vision's recipe: inception crops and flips; Stage I 100
epochs of train[4096:] at batch 1024 (lr 4e-4, wd 4e-5, 4k warmup, cosine, clip 1); Stage II 50 epochs at batch 512 (lr 1e-3,
encoder x0.1, wd 1e-6, no clipping) from the AugReg ImageNet-21k ViT-L/16; evaluation:
ColTran's FID-5k with greedy sampling (temperature 1e-7).

Sizes (`python scripts/param_counts.py --config=configs/uvim_colorization.py:quantizer=vq`):
Stage I 132,701,952 parameters with VQ, 131,529,221 with FSQ (big_vision: ~133M); Stage II
715,729,921 with VQ's 4097 tokens, 716,301,592 with FSQ's 4376 (big_vision: ~716M).
Expected (Table 2, FID-5k): VQ 16.90 +- 0.056, FSQ 17.55 +- 0.057, usage 100% for both;
Stage I oracle 15.59. Needs imagenet2012 prepared for TFDS (README) and the FID Inception
weights (scripts/convert_weights.py inception).
"""

from fsq_repro import uvim_config


def get_config(arg: str | None = None):
  c, _ = uvim_config.from_args(arg)
  return c


def get_sweep() -> list[dict]:
  """Table 2's colorization rows (VQ, FSQ), three Stage II seeds each sharing a Stage I."""
  return uvim_config.seeded_sweep((("vq", "quantizer=vq"), ("fsq", "quantizer=fsq")))
