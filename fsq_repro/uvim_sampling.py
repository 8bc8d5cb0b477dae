"""UViM's autoregressive decoding of the code tokens, with the task model's KV cache.

From the start token, `seq_len` steps each feed the last token, read the next token's
logits, and draw it at `temperature` (big_vision's evaluators: 1e-7, greedy; its
colorization colab: 1.0). The start token 0 is never drawn, so every token is a code.
"""

import jax
import jax.numpy as jnp

from fsq_repro.models import uvim_task


def sample_codes(model: uvim_task.TaskModel, params, image: jax.Array, rng: jax.Array, *,
                 temperature: float) -> jax.Array:
  """int32 codes [B, seq_len] for the images [B, H, W, 3]; jit-safe."""
  if not temperature > 0:
    raise ValueError(f"temperature={temperature} must be > 0 (1e-7 is greedy)")
  encoded = model.apply({"params": params}, image, method=model.encode)
  batch = image.shape[0]
  _, variables = model.apply({"params": params}, encoded,
                             jnp.zeros((batch, model.seq_len), jnp.int32), decode=True,
                             method=model.decode, mutable=["cache"])

  def step(carry, key):
    cache, token = carry
    logits, variables = model.apply({"params": params, "cache": cache}, encoded,
                                    token[:, None], decode=True, method=model.decode,
                                    mutable=["cache"])
    logits = logits[:, 0].astype(jnp.float32).at[:, 0].set(-jnp.inf)
    token = jax.random.categorical(key, logits / temperature).astype(jnp.int32)
    return (variables["cache"], token), token

  keys = jax.random.split(rng, model.seq_len)
  _, tokens = jax.lax.scan(step, (variables["cache"], jnp.zeros([batch], jnp.int32)), keys)
  return uvim_task.tokens_to_codes(tokens.T)
