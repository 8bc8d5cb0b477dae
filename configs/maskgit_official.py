"""The official MaskGIT ImageNet checkpoints (google-research/maskgit), converted to a workdir.

  python scripts/convert_weights.py maskgit --tokenizer=tokenizer_imagenet256_checkpoint \
      --transformer=maskgit_imagenet256_checkpoint --out=/data/runs/maskgit_official_256
  python -m fsq_repro.main --mode=eval --config=configs/maskgit_official.py \
      --workdir=/data/runs/maskgit_official_256 --config.dataset.data_dir=$TFDS_DIR \
      --config.eval.inception_weights=inception_v3_2015.msgpack

Arguments: image_size=256|512 (the 512 px checkpoints: 32 x 32 tokens, 1025 positions).
The converter picks the size from the checkpoint and writes this config into the workdir.

Where each value comes from (google-research/maskgit, commit 1db2359):
- Tokenizer: configs/vqgan_config.py: VQ, 1024 codes of dim 256 (embedding_dim), filters 128,
  channel multipliers [1, 1, 2, 2, 4], 2 residual blocks, GroupNorm, swish: our defaults.
- Transformer: configs/maskgit_class_cond_config.py: 24 layers, width 768, 16 heads, MLP
  3072, dropout 0.1: our defaults; 1000 classes (vocabulary 1024 + 1000 + 1).
- It was trained without label dropout, so guidance has no unconditional model to use:
  stage2.label_drop_rate = 0 and CFG 0 (sample.cfg, eval.cfg_sweep).
- Decoding: inference.py samples with 16 iterations (`num_iterations=16`) and
  `sample_choice_temperature` 4.5. (The FSQ paper samples its own models with 12.)
- Its min_masking_rate 0.5 and loss on masked tokens only are training settings: they matter
  only when fine-tuning (--config.stage2.init_from=<this workdir> in a new workdir).

Expected (FSQ paper, Figure 4, ADM suite, 50k samples at 256 px): FID 4.916, precision 0.836,
recall 0.489.
"""

from fsq_repro import config_lib


def get_config(arg: str | None = None):
  args = config_lib.parse_args(arg, {"image_size": 256})
  c, _ = config_lib.from_args("quantizer=vq,codebook_bits=10")
  if args["image_size"] not in (256, 512):
    raise ValueError(f"image_size={args['image_size']} has no official checkpoint; use 256 "
                     "or 512")
  c.dataset.image_size = args["image_size"]
  c.quantizer.codebook_dim = 256
  c.stage2.label_drop_rate = 0.0
  c.sample.num_steps = 16
  c.sample.choice_temperature = 4.5
  c.sample.cfg = 0.0
  c.eval.cfg_sweep = (0.0,)
  return c
