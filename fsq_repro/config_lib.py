"""The config: its defaults, the "key=value" arguments of configs/*.py, and its checks.

The defaults are the paper's Figure 3 recipe (MaskGIT's tokenizer and transformer at
128 px). Files under configs/ start from `from_args(arg)` (the defaults with the quantizer
the arguments name) and set only what differs. `validate` runs before any compilation and
raises ValueError with one line that names the field and the fix.
"""

import importlib.util

import ml_collections

from fsq_repro.eval import precision_recall
from fsq_repro.models import cpu_conv, factory, perceptual, transformer
from fsq_repro.train import masking
from fsq_repro.quantizers import fsq as fsq_lib


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "imagenet2012"
  c.dataset.image_size = 128
  c.dataset.data_dir = ml_collections.FieldReference(None, field_type=str)
  c.dataset.train_split = "train"
  c.dataset.eval_split = "validation"
  # Grain threads building training batches ahead of the step, or worker processes instead
  # (each process of a multi-host run has its own). What they build does not depend on them.
  c.dataset.num_threads = 2
  c.dataset.num_workers = 0

  c.quantizer = ml_collections.ConfigDict()
  c.quantizer.kind = "fsq"  # "fsq" or "vq"
  c.quantizer.levels = (8, 5, 5, 5)  # FSQ
  c.quantizer.variant = "paper"  # FSQ: "paper" or "atanh" (the PyTorch port)
  c.quantizer.eps = 1e-3
  # VQ's number of codes. FSQ has prod(levels) codes and leaves this None (factory.codebook_size).
  c.quantizer.codebook_size = ml_collections.FieldReference(None, field_type=int)
  c.quantizer.codebook_dim = 256  # VQ
  c.quantizer.commitment_cost = 0.25
  c.quantizer.entropy_loss_weight = 0.1
  c.quantizer.entropy_temperature = 0.01
  c.quantizer.split_every_steps = 0  # VQ: UViM-style splitting of unused codes; 0 = off
  # VQ: the entropy loss's statistics over groups of this many examples (MaskGIT computed
  # them per device under pmap, so over its per-core batch); 0 = the global batch, the better
  # estimator and the paper configs' choice: MaskGIT's per-core batch is not published.
  c.quantizer.entropy_group_size = 0

  c.model = ml_collections.ConfigDict()  # Stage I networks
  c.model.name = "maskgit_vqgan"  # factory.TOKENIZERS
  c.model.filters = 128
  c.model.channel_multipliers = (1, 1, 2, 2, 4)
  c.model.num_res_blocks = 2
  c.model.num_groups = 32
  c.model.disc_channel_multiplier = 1
  c.model.disc_max_filters = 512
  c.model.dtype = "float32"  # compute dtype; "bfloat16" for mixed precision
  c.model.remat = False  # recompute residual blocks in the backward pass: less memory
  c.model.kernel_gradient = "auto"  # cpu_conv.KERNEL_GRADIENTS: "auto" (fast on CPU) or "xla"

  c.stage1 = ml_collections.ConfigDict()
  c.stage1.num_train_steps = 500_000  # ~100 epochs of ImageNet at batch 256
  c.stage1.batch_size = 256  # global
  c.stage1.learning_rate = 1e-4
  c.stage1.warmup_steps = 0
  c.stage1.adam_b1 = 0.0
  c.stage1.adam_b2 = 0.99
  c.stage1.ema_decay = 0.999
  c.stage1.reconstruction_weight = 1.0
  c.stage1.generator_weight = 0.1
  c.stage1.r1_weight = 10.0
  # MaskGIT's perceptual loss: ResNet-50 feature maps, weight 0.1 (models/perceptual.py).
  # "lpips" is LPIPS-VGG16; "none" trains without one. The weights are a converted file.
  c.stage1.perceptual_loss = "resnet50"
  c.stage1.perceptual_weight = 0.1
  c.stage1.perceptual_weights = ml_collections.FieldReference(None, field_type=str)
  c.stage1.lecam_weight = 0.0
  c.stage1.lecam_ema_decay = 0.999
  c.stage1.log_every_steps = 100
  c.stage1.image_every_steps = 5000
  c.stage1.checkpoint_every_steps = 5000
  c.stage1.keep_checkpoints = 3

  # Stage II reads the Stage I checkpoint from here (default: the same workdir).
  c.stage1_workdir = ml_collections.FieldReference(None, field_type=str)

  c.stage2 = ml_collections.ConfigDict()  # MaskGIT transformer on frozen tokens
  c.stage2.model = "maskgit_transformer"  # factory.TRANSFORMERS
  c.stage2.num_train_steps = 1_000_000  # ~200 epochs of ImageNet at batch 256
  c.stage2.batch_size = 256
  c.stage2.hidden_size = 768
  c.stage2.num_layers = 24
  c.stage2.num_heads = 16
  c.stage2.mlp_dim = 3072
  c.stage2.dropout_rate = 0.1
  c.stage2.dtype = "float32"
  c.stage2.remat = False  # recompute each layer in the backward pass: less memory
  # Attention scores (models/transformer.py, SelfAttention): "custom_vjp" (MaskGIT's softmax
  # attention with dropout on the probabilities, its backward written to keep only the
  # probabilities; on a CPU one group of heads per core), "flax" (flax's dot_product_attention
  # differentiated by JAX: the reference) or "dot_product_attention"
  # (jax.nn.dot_product_attention: the backend's fused kernel, cuDNN flash attention on GPUs;
  # no dropout, so training steps with dropout_rate > 0 take the custom_vjp path and
  # sampling/evaluation use the fused one). All three give the same results to round-off.
  c.stage2.attention = "custom_vjp"
  c.stage2.learning_rate = 1e-4
  c.stage2.warmup_steps = 5000
  c.stage2.adam_b1 = 0.9
  c.stage2.adam_b2 = 0.96
  c.stage2.weight_decay = 0.045  # kernels only
  c.stage2.grad_clip_norm = 1.0
  c.stage2.label_smoothing = 0.1
  c.stage2.min_mask_fraction = 0.45  # the FSQ paper's lower bound on the masked fraction
  c.stage2.label_drop_rate = 0.1  # CFG: class token replaced by MASK
  # MaskGIT's libml/losses.py: each example's mean over its masked tokens, then the batch
  # mean ("token": the mean over every masked token of the batch).
  c.stage2.loss_reduction = "per_example"
  # "online": MAGVIT's trainer tokenizes every freshly augmented batch with the frozen EMA
  # tokenizer inside the step; "precomputed": one pass of the train split into token shards.
  c.stage2.tokens = "online"
  # A workdir whose Stage II parameters start this run (e.g. a converted official MaskGIT,
  # scripts/convert_weights.py maskgit): fine-tuning, with a fresh optimizer.
  c.stage2.init_from = ml_collections.FieldReference(None, field_type=str)
  c.stage2.log_every_steps = 100
  c.stage2.checkpoint_every_steps = 5000
  c.stage2.keep_checkpoints = 3

  c.sample = ml_collections.ConfigDict()
  c.sample.num_images = 50_000
  c.sample.batch_size = 250
  c.sample.num_steps = 12
  c.sample.choice_temperature = 4.5
  c.sample.cfg = 0.2  # alpha in l_c + alpha (l_c - l_uncond); the paper's best for FSQ
  c.sample.grid_images_per_class = 8

  c.eval = ml_collections.ConfigDict()
  c.eval.num_images = 50_000  # reconstruction FID, usage and PSNR on the eval split
  c.eval.batch_size = 250
  # "auto": Inception, whose weights every dataset but the embedded one requires (eval
  # stops without them); "inception"; "offline": the offline classifier, named in results.
  c.eval.feature_network = "auto"
  c.eval.inception_weights = ml_collections.FieldReference(None, field_type=str)
  # ADM's reference batch (VIRTUAL_imagenet256_labeled.npz, ...): sampling FID, sFID and
  # precision/recall against it, as the paper's numbers. None: our training-split batch.
  c.eval.reference_npz = ml_collections.FieldReference(None, field_type=str)
  c.eval.cfg_sweep = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25)
  c.eval.num_sample_images = 50_000  # per CFG value, for sampling FID
  c.eval.keep_samples = "best"  # samples_cfg<alpha>.npz of the best alpha, "all" or "none"
  c.eval.num_reference_images = 10_000  # precision/recall reference set
  # "adm": the ADM suite's float16-first distances, so precision/recall equal the suite's
  # (the paper's numbers); "exact": float32 (eval/precision_recall.py).
  c.eval.precision_recall = "adm"
  c.eval.compression_num_images = 10_000
  c.eval.range_coding_images = 64  # real range coding of the first of those maps (all: 10_000)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.fsdp = False  # shard large parameters over the data axis
  c.mesh.fsdp_min_size = 2**18  # parameters with fewer elements stay replicated
  return c


def config_module(path: str):
  """The Python module of a config file (configs/*.py), loaded from its path."""
  spec = importlib.util.spec_from_file_location("config_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config of "path.py" or "path.py:arguments", as main's --config reads it."""
  path, _, arg = spec.partition(":")
  return config_module(path).get_config(arg or None)


def parse_args(arg: str | None, allowed: dict) -> dict:
  """Parses "key=value,key=value" against `allowed` {key: default}; returns all keys."""
  values = dict(allowed)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in allowed:
      raise ValueError(f"config argument {item!r} is not one of "
                       f"{', '.join(k + '=...' for k in allowed)}")
    values[key] = type(allowed[key])(value) if allowed[key] is not None else value
  return values


def set_quantizer(config, kind: str, codebook_bits: int | None = None, levels=None) -> None:
  """Sets FSQ levels (Table 1 / App. A.4.1 by size, or explicit) or a VQ of 2^bits codes."""
  q = config.quantizer
  q.kind = kind
  if kind == "fsq":
    if levels is not None:
      q.levels = tuple(int(l) for l in levels)
    elif codebook_bits is not None:
      q.levels = fsq_lib.levels_for_codebook_size(2**codebook_bits)
    q.codebook_size = None  # prod(levels)
  elif kind == "vq":
    q.codebook_size = 2**(10 if codebook_bits is None else codebook_bits)
  else:
    raise ValueError(f"quantizer={kind!r} is unknown; use quantizer=fsq or quantizer=vq")


QUANTIZER_ARGS = {"quantizer": "fsq", "codebook_bits": 10, "levels": ""}


def from_args(arg: str | None, **extra_args) -> tuple[ml_collections.ConfigDict, dict]:
  """(the default config with the quantizer `arg` names, every parsed argument).

  Arguments: quantizer=fsq|vq; codebook_bits=k (FSQ: App. A.4.1 levels for 2^k; VQ: 2^k
  codes); levels=8-5-5-5 (explicit FSQ levels, overrides codebook_bits); and `extra_args`
  {name: default} of the calling config file.
  """
  args = parse_args(arg, {**QUANTIZER_ARGS, **extra_args})
  config = base_config()
  levels = parse_levels(args["levels"]) if args["levels"] else None
  set_quantizer(config, args["quantizer"], args["codebook_bits"], levels)
  return config, args


def parse_levels(text: str) -> tuple[int, ...]:
  """"8-5-5-5" -> (8, 5, 5, 5): levels inside a comma-separated config argument."""
  try:
    return tuple(int(l) for l in text.split("-"))
  except ValueError:
    raise ValueError(f"levels={text!r} must be integers joined by '-', e.g. levels=8-5-5-5")


def validate(config, *, num_devices: int, stage: str) -> None:
  """Raises ValueError with one line naming the field and the fix; runs before compilation."""
  q = config.quantizer
  if q.kind not in factory.QUANTIZERS:
    raise ValueError(f"quantizer.kind={q.kind!r} is unknown; use one of "
                     f"{sorted(factory.QUANTIZERS)}")
  if q.kind == "fsq":
    fsq_lib.FSQ(q.levels, q.eps, q.variant)  # validates levels, eps and variant
    if q.codebook_size is not None:
      raise ValueError(f"quantizer.codebook_size={q.codebook_size} is VQ's number of codes; "
                       f"FSQ has prod(levels) = {factory.codebook_size(q)} codes: drop the "
                       "override, or set --config.quantizer.levels")
  elif q.codebook_size is None or q.codebook_size < 2 or q.codebook_dim < 1:
    raise ValueError(f"quantizer.codebook_size={q.codebook_size} and codebook_dim="
                     f"{q.codebook_dim} must be >= 2 and >= 1 for VQ")
  elif q.entropy_group_size and config.stage1.batch_size % q.entropy_group_size:
    raise ValueError(f"quantizer.entropy_group_size={q.entropy_group_size} must divide "
                     f"stage1.batch_size={config.stage1.batch_size}; or 0 for the whole batch")
  for field, registry in (("stage2.tokens", ("online", "precomputed")),
                          ("eval.precision_recall", precision_recall.MODES),
                          ("stage2.loss_reduction", masking.REDUCTIONS),
                          ("model.name", factory.TOKENIZERS),
                          ("stage2.model", factory.TRANSFORMERS),
                          ("stage2.attention", transformer.ATTENTION_IMPLEMENTATIONS),
                          ("model.dtype", factory.DTYPES), ("stage2.dtype", factory.DTYPES),
                          ("model.kernel_gradient", cpu_conv.KERNEL_GRADIENTS)):
    section, name = field.split(".")
    if config[section][name] not in registry:
      raise ValueError(f"{field}={config[section][name]!r} is unknown; use one of "
                       f"{sorted(registry)}")
  for name in ("num_threads", "num_workers"):
    value = config.dataset[name]
    if not isinstance(value, int) or value < 0:
      raise ValueError(f"dataset.{name}={value!r} must be a non-negative int (Grain's "
                       "threads / worker processes building batches; 0 for none)")
  size, factor = config.dataset.image_size, 2**(len(config.model.channel_multipliers) - 1)
  if size % factor:
    raise ValueError(f"dataset.image_size={size} must be divisible by the downsampling factor "
                     f"{factor} of model.channel_multipliers")
  if stage == "stage1":  # the perceptual loss asked for must have its weights
    perceptual.check_available(config.stage1.perceptual_loss, config.stage1.perceptual_weights)
  if stage == "eval":  # the feature network's weights, the reference batch
    from fsq_repro.eval import evaluate  # pylint: disable=g-import-not-at-top
    evaluate.check_config(config)
  stage_config = config[stage] if stage in config else None
  if stage_config is not None and "batch_size" in stage_config:
    batch = stage_config.batch_size
    if batch < 1 or batch % num_devices:
      raise ValueError(f"{stage}.batch_size={batch} is not divisible by the {num_devices} "
                       f"devices; use a multiple of {num_devices}")
    if "num_train_steps" in stage_config and stage_config.num_train_steps < 1:
      raise ValueError(f"{stage}.num_train_steps={stage_config.num_train_steps} must be >= 1")
