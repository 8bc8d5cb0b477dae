"""Devices, mesh, shardings and host gathers: everything multi-device and multi-host.

A single "data" mesh axis spans every device of every process. Batches are sharded over
it; parameters are replicated, or with FSDP sharded along their largest divisible axis.
"""

import collections
import os
import re
from typing import Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Starts jax.distributed when asked to, or when the environment is a multi-host job."""
  if not coordinator_address and not _environment_is_multihost():
    return
  # Cross-process collectives of the CPU backend (accelerators are unaffected). Set
  # unconditionally: asking JAX for its backend here would initialise it too early.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  else:
    jax.distributed.initialize()


def _environment_is_multihost() -> bool:
  tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
  return "," in tpu_hosts or slurm_tasks > 1


def make_mesh() -> jax.sharding.Mesh:
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], num_shards: int, min_size: int) -> P:
  """Shards the largest axis divisible by `num_shards`; small or indivisible stay replicated."""
  if num_shards == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % num_shards == 0:
      spec = [None] * len(shape)
      spec[axis] = DATA_AXIS
      return P(*spec)
  return P()


def state_shardings(abstract_state, mesh, *, fsdp: bool, min_size: int,
                    replicate_pattern: str | None = None):
  """Shardings for a train state: the FSDP rule above applied leaf by leaf, or replication.

  Optimizer moments share their parameter's shape, so they follow the same rule.
  Leaves whose path matches `replicate_pattern` always stay replicated.
  """
  num_shards = mesh.shape[DATA_AXIS]

  def rule(path, leaf):
    name = jax.tree_util.keystr(path)
    if not fsdp or (replicate_pattern and re.search(replicate_pattern, name)):
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, fsdp_spec(tuple(leaf.shape), num_shards, min_size))

  return jax.tree_util.tree_map_with_path(rule, abstract_state)


def global_batch(local_batch: dict, mesh) -> dict:
  """This process's numpy batch -> global jax arrays sharded over the data axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def shard_global(array, mesh) -> jax.Array:
  """A numpy array that every process holds whole (the global batch) -> a jax.Array sharded
  over the data axis, each process supplying only its own devices' rows."""
  array = np.asarray(array)
  return jax.make_array_from_callback(array.shape, batch_sharding(mesh),
                                      lambda index: array[index])


def prefetch_to_device(local_batches: Iterator[dict], mesh, size: int = 2) -> Iterator[dict]:
  """`global_batch` of each of `local_batches`, built `size` batches ahead of its use.

  Building a global batch starts its host-to-device copy; starting it early lets the copy
  overlap the steps still running instead of delaying the next one.
  """
  queue = collections.deque()
  for local_batch in local_batches:
    queue.append(global_batch(local_batch, mesh))
    if len(queue) > size:
      yield queue.popleft()
  yield from queue


def per_process_batch_size(global_batch_size: int) -> int:
  if global_batch_size % jax.process_count():
    raise ValueError(f"batch_size={global_batch_size} is not divisible by the "
                     f"{jax.process_count()} processes")
  return global_batch_size // jax.process_count()


def abstract_bytes_per_device(abstract_tree) -> int:
  """Bytes of the largest share one device will hold of a tree of sharded ShapeDtypeStructs."""
  return sum(int(np.prod(leaf.sharding.shard_shape(leaf.shape), dtype=np.int64))
             * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(abstract_tree))


def abstract_state(init_fn, rng, mesh, mesh_config):
  """(abstract state carrying its shardings, shardings) for `init_fn(rng)`, without running it."""
  abstract = jax.eval_shape(init_fn, rng)
  shardings = state_shardings(abstract, mesh, fsdp=mesh_config.fsdp,
                              min_size=mesh_config.fsdp_min_size)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  return abstract, shardings


def host_array(x) -> np.ndarray:
  """A numpy copy of `x` on every process; arrays spanning processes are gathered first."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def local_rows(array: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in order, as numpy."""
  shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
  rows, seen = [], set()
  for shard in shards:
    start = shard.index[0].start or 0
    if start not in seen:  # replicas of the same rows on other local devices
      seen.add(start)
      rows.append(np.asarray(shard.data))
  return np.concatenate(rows)
