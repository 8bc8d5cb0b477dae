"""Throughput of FSQ (quantize + indices) and VQ (nearest neighbour, dim 256) per Table 1 size.

Prints one JSON object. FSQ runs on 65,536 tokens (a 256 x 256 grid of d-dim latents);
VQ runs on 1,024 tokens so the CPU finishes in seconds; tokens/s is comparable.

  python scripts/bench_quantizers.py [--repeats 20] [--fsq_tokens 65536] [--vq_tokens 1024]
"""

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from fsq_repro.quantizers import FSQ, levels_for_codebook_size, squared_distances

TABLE1_BITS = (8, 10, 12, 14, 16)


def time_call(fn, *args, repeats):
  """Median wall time of fn(*args) after one warm-up (compilation) call, in seconds."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def bench_fsq(bits, tokens, repeats):
  fsq = FSQ(levels_for_codebook_size(2**bits))
  z = jax.random.normal(jax.random.key(0), (tokens, fsq.num_dimensions), jnp.float32)
  seconds = time_call(jax.jit(fsq.__call__), z, repeats=repeats)
  return {"levels": list(fsq.levels), "codebook_size": fsq.codebook_size, "tokens": tokens,
          "ms": seconds * 1e3, "tokens_per_s": tokens / seconds}


def bench_vq(bits, tokens, repeats, dim=256):
  size = 2**bits
  codebook = jax.random.normal(jax.random.key(1), (size, dim), jnp.float32)
  z = jax.random.normal(jax.random.key(2), (tokens, dim), jnp.float32)
  nearest = jax.jit(lambda z, c: jnp.argmin(squared_distances(z, c), axis=-1))
  seconds = time_call(nearest, z, codebook, repeats=repeats)
  return {"codebook_size": size, "dim": dim, "tokens": tokens, "ms": seconds * 1e3,
          "tokens_per_s": tokens / seconds}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--fsq_tokens", type=int, default=65536)
  parser.add_argument("--vq_tokens", type=int, default=1024)
  args = parser.parse_args()
  results = []
  for bits in TABLE1_BITS:
    fsq = bench_fsq(bits, args.fsq_tokens, args.repeats)
    vq = bench_vq(bits, args.vq_tokens, repeats=3)
    results.append({"codebook_bits": bits, "fsq": fsq, "vq": vq,
                    "fsq_over_vq_tokens_per_s": fsq["tokens_per_s"] / vq["tokens_per_s"]})
  print(json.dumps({"device": str(jax.devices()[0]), "platform": platform.machine(),
                    "jax": jax.__version__, "results": results}, indent=1))


if __name__ == "__main__":
  main()
