"""Builds every network from a config, by name: quantizers, model families, compute dtypes.

Trainers, evaluation, sampling and scripts all build their models here, so one config gives
one network wherever it is built. A new family (a new tokenizer or transformer) is a new
entry in a registry, not a branch in a trainer.

  tokenizer = factory.build_tokenizer(config)               # config.model.name
  transformer = factory.build_transformer(config, layout)   # config.stage2.model
  autoencoder = factory.build_label_autoencoder(config, task.labels)   # UViM's Stage I
  task_model = factory.build_task_model(config)             # UViM's Stage II
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from fsq_repro.models import discriminator as discriminator_lib
from fsq_repro.models import uvim, uvim_task
from fsq_repro.models import transformer as transformer_lib
from fsq_repro.models import vqgan
from fsq_repro.quantizers import EmaVectorQuantizer, FiniteScalarQuantizer, VectorQuantizer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _fsq(q):
  return FiniteScalarQuantizer(levels=tuple(q.levels), eps=q.eps, variant=q.variant)


def _vq(q):
  return VectorQuantizer(codebook_size=q.codebook_size, codebook_dim=q.codebook_dim,
                         commitment_cost=q.commitment_cost,
                         entropy_loss_weight=q.entropy_loss_weight,
                         entropy_temperature=q.entropy_temperature,
                         entropy_group_size=q.entropy_group_size,
                         track_usage=q.split_every_steps > 0)


def _uvim_vq(q):
  return EmaVectorQuantizer(codebook_size=q.codebook_size, codebook_dim=q.codebook_dim,
                            momentum=q.momentum, min_count=q.min_count, splitting=q.splitting)


QUANTIZERS = {"fsq": _fsq, "vq": _vq, "uvim_vq": _uvim_vq}


def codebook_size(q) -> int:
  """|C| of the quantizer config `q`: prod(levels) for FSQ, codebook_size for VQ."""
  return math.prod(q.levels) if q.kind == "fsq" else int(q.codebook_size)


def build_quantizer(q):
  return QUANTIZERS[q.kind](q)


def _maskgit_vqgan(config) -> vqgan.Autoencoder:
  m = config.model
  return vqgan.Autoencoder(quantizer=build_quantizer(config.quantizer), filters=m.filters,
                           channel_multipliers=tuple(m.channel_multipliers),
                           num_res_blocks=m.num_res_blocks, num_groups=m.num_groups,
                           dtype=DTYPES[m.dtype], remat=m.remat,
                           kernel_gradient=m.kernel_gradient)


TOKENIZERS = {"maskgit_vqgan": _maskgit_vqgan}


def build_tokenizer(config):
  """The Stage I autoencoder named by config.model.name, around config.quantizer."""
  return TOKENIZERS[config.model.name](config)


def build_discriminator(config) -> discriminator_lib.Discriminator:
  return discriminator_lib.Discriminator(
      image_size=config.dataset.image_size,
      channel_multiplier=config.model.disc_channel_multiplier,
      max_filters=config.model.disc_max_filters, dtype=DTYPES[config.model.dtype])


def token_grid(config) -> tuple[int, int]:
  """(height, width) of a Stage I token map: the image size over the downsampling factor."""
  side = config.dataset.image_size // 2**(len(config.model.channel_multipliers) - 1)
  return side, side


def tokens_per_image(config) -> int:
  return math.prod(token_grid(config))


def token_layout(config, num_classes: int) -> transformer_lib.TokenLayout:
  return transformer_lib.TokenLayout(codebook_size=codebook_size(config.quantizer),
                                     num_classes=num_classes)


def _maskgit_transformer(config, layout) -> transformer_lib.MaskGITTransformer:
  s = config.stage2
  return transformer_lib.MaskGITTransformer(
      vocab_size=layout.vocab_size, hidden_size=s.hidden_size, num_layers=s.num_layers,
      num_heads=s.num_heads, mlp_dim=s.mlp_dim, max_len=tokens_per_image(config) + 1,
      dropout_rate=s.dropout_rate, attention_dropout_rate=s.dropout_rate,
      dtype=DTYPES[s.dtype], remat=s.remat, attention=s.attention)


TRANSFORMERS = {"maskgit_transformer": _maskgit_transformer}


def build_transformer(config, layout):
  """The Stage II model named by config.stage2.model, for the token `layout`."""
  return TRANSFORMERS[config.stage2.model](config, layout)


def _uvim_vit(config, labels) -> uvim.LabelAutoencoder:
  m = config.model
  return uvim.LabelAutoencoder(
      quantizer=build_quantizer(config.quantizer), labels=tuple(labels),
      image_size=config.dataset.image_size, patch_size=m.patch_size, code_len=m.code_len,
      width=m.width, enc_depth=m.enc_depth, dec_depth=m.dec_depth, mlp_dim=m.mlp_dim,
      num_heads=m.num_heads, encoder_context=m.encoder_context,
      decoder_context=m.decoder_context, code_dropout=m.code_dropout,
      dropped_code=m.dropped_code, standardize=config.quantizer.kind == "uvim_vq")


LABEL_AUTOENCODERS = {"uvim_vit": _uvim_vit}


def build_label_autoencoder(config, labels) -> uvim.LabelAutoencoder:
  """UViM's Stage I (config.model.name) for a task's `labels` ((key, channels), ...)."""
  return LABEL_AUTOENCODERS[config.model.name](config, labels)


def _uvim_vtt(config) -> uvim_task.TaskModel:
  s = config.stage2
  return uvim_task.TaskModel(
      codebook_size=codebook_size(config.quantizer), image_size=config.dataset.image_size,
      patch_size=s.patch_size, seq_len=config.model.code_len, width=s.width,
      mlp_dim=s.mlp_dim, num_heads=s.num_heads, encoder_layers=s.encoder_layers,
      decoder_layers=s.decoder_layers, dropout=s.dropout)


TASK_MODELS = {"uvim_vtt": _uvim_vtt}


def build_task_model(config) -> uvim_task.TaskModel:
  """UViM's Stage II (config.stage2.model): image -> logits over the Stage I code tokens."""
  return TASK_MODELS[config.stage2.model](config)


def count_params(params) -> int:
  """Number of scalars in a parameter tree; works on jax.eval_shape's abstract trees too."""
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))
