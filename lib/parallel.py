"""Devices and hosts: the one place that knows how a global batch is laid out.

Params are replicated and batches are split along their first axis over every
device of every process, through `jax.sharding`. jit then compiles one SPMD
program, so reductions such as the mean loss or batch-norm statistics are over
the global batch with no explicit collectives in model code.
"""
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

from lib.errors import UserError


def make_mesh() -> Mesh:
  """A 1-D mesh named 'data' over all devices of all processes."""
  # Built directly rather than with jax.make_mesh, whose default axis type is
  # Explicit in this JAX; Auto lets jit propagate shardings on its own.
  return Mesh(np.asarray(jax.devices()), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec('data'))


def stacked_batch_sharding(mesh: Mesh) -> NamedSharding:
  """For (steps, batch, ...) arrays: several training steps' batches in one transfer."""
  return NamedSharding(mesh, PartitionSpec(None, 'data'))


def local_batch_size(global_batch_size: int, name: str = 'batch_size') -> int:
  """This process's share of a global batch; fails when devices cannot split it evenly.

  Args:
    global_batch_size: examples per step over all processes.
    name: the config field, for the error message.

  Returns:
    global_batch_size // jax.process_count().
  """
  devices = jax.device_count()
  if global_batch_size < 1 or global_batch_size % devices:
    raise UserError(f'config.{name}={global_batch_size} must be a positive multiple of '
                    f'the {devices} devices, so that each device gets an equal share')
  return global_batch_size // jax.process_count()


def shard(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Turns each process's local batch into one global array sharded over the mesh."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def local_shards(num_shards: int) -> tuple[list[int], int]:
  """The training-data shards this process reads, of `num_shards` (0: one per process).

  The training order is a function of the shards, not of the processes, so a
  run with the same shards gives the same global batches on 1 or N processes.

  Returns:
    (this process's shard indices, the number of shards).

  Raises:
    UserError: the processes cannot split the shards evenly.
  """
  processes = jax.process_count()
  num_shards = num_shards or processes
  if num_shards < 1 or num_shards % processes:
    raise UserError(f'config.data_shards={num_shards} must be a multiple of the {processes} '
                    'processes (0: one shard per process)')
  per_process = num_shards // processes
  first = jax.process_index() * per_process
  return list(range(first, first + per_process)), num_shards


def gather_arrays(values: np.ndarray) -> np.ndarray:
  """`values` of every process stacked on a new leading axis, in process order."""
  if jax.process_count() == 1:
    return np.asarray(values)[None]
  return np.asarray(multihost_utils.process_allgather(np.asarray(values)))


def gather_from_processes(value: int) -> list[int]:
  """An integer from every process, in process order ([value] on one process)."""
  return [int(v) for v in gather_arrays(np.int64(value))]


def sum_over_processes(values: np.ndarray) -> np.ndarray:
  """The elementwise sum of `values` over all processes (`values` itself on one process)."""
  return gather_arrays(values).sum(0)
