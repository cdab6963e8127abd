"""Devices and hosts: the one place that knows how a global batch is laid out.

Params are replicated and batches are split along their first axis over every
device of every process, through `jax.sharding`. jit then compiles one SPMD
program, so reductions such as the mean loss or batch-norm statistics are over
the global batch with no explicit collectives in model code.

The devices are this process's runtime's, or, inside `target(...)`, those of an
accelerator that is not here (lib.aot's `--compile_for`): the mesh, the
batch split over processes and the platform that lib.cpu reads then describe
that machine, so a run is built exactly as it would be built there.
"""
from collections.abc import Iterator, Sequence
import contextlib
import dataclasses

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

from lib.errors import UserError


@dataclasses.dataclass(frozen=True)
class _Target:
  devices: tuple[jax.Device, ...]
  processes: int
  platform: str


_TARGET: _Target | None = None


@contextlib.contextmanager
def target(devices: Sequence[jax.Device]) -> Iterator[None]:
  """Inside this block, runs are laid out over `devices` (e.g. a TPU topology's), not this host's.

  Args:
    devices: every device of the target, of every process (`.process_index` says whose).
  """
  global _TARGET
  previous = _TARGET
  _TARGET = _Target(tuple(devices), len({d.process_index for d in devices}), devices[0].platform)
  try:
    yield
  finally:
    _TARGET = previous


def devices() -> list[jax.Device]:
  """Every device of every process: the runtime's, or the target's inside `target`."""
  return list(_TARGET.devices) if _TARGET else jax.devices()


def device_count() -> int:
  return len(_TARGET.devices) if _TARGET else jax.device_count()


def process_count() -> int:
  return _TARGET.processes if _TARGET else jax.process_count()


def platform() -> str:
  """'cpu', 'gpu' or 'tpu': where the programs being built will run."""
  if _TARGET is None:
    return jax.default_backend()
  return 'gpu' if _TARGET.platform in ('cuda', 'rocm', 'gpu') else _TARGET.platform


def is_target() -> bool:
  """Whether runs are being built for devices that are not here (inside `target`)."""
  return _TARGET is not None


def make_mesh() -> Mesh:
  """A 1-D mesh named 'data' over all devices of all processes."""
  # Built directly rather than with jax.make_mesh, whose default axis type is
  # Explicit in this JAX; Auto lets jit propagate shardings on its own.
  return Mesh(np.asarray(devices()), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, batch_size: int | None = None) -> NamedSharding:
  """The batch axis split over the devices; replicated for a `batch_size` they cannot split.

  Inside a program XLA pads uneven shards, but an array handed from one program
  to the next must split evenly: a batch of 7 on 8 devices is then whole on each.
  """
  if batch_size is not None and batch_size % mesh.size:
    return replicated(mesh)
  return NamedSharding(mesh, PartitionSpec('data'))


def stacked_batch_sharding(mesh: Mesh) -> NamedSharding:
  """For (steps, batch, ...) arrays: several training steps' batches in one transfer."""
  return NamedSharding(mesh, PartitionSpec(None, 'data'))


def local_batch_size(global_batch_size: int, name: str = 'batch_size', even: bool = True) -> int:
  """This process's share of a global batch; fails when it cannot be split as asked.

  Args:
    global_batch_size: examples per step over all processes.
    name: the config field, for the error message.
    even: whether every device must get an equal share (a batch that crosses
      from the host as local arrays). A batch gathered inside the step from
      the splits on the devices need not: XLA pads uneven shards (a batch of 7
      on 8 devices), and every process still gets an equal share.

  Returns:
    global_batch_size // process_count().
  """
  count = device_count() if even else process_count()
  if global_batch_size < 1 or global_batch_size % count:
    raise UserError(f'config.{name}={global_batch_size} must be a positive multiple of the '
                    f'{count} {"devices" if even else "processes"}, so that each gets an '
                    'equal share')
  return global_batch_size // process_count()


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
  processes = process_count()
  num_shards = num_shards or processes
  if num_shards < 1 or num_shards % processes:
    raise UserError(f'config.data_shards={num_shards} must be a multiple of the {processes} '
                    'processes (0: one shard per process)')
  per_process = num_shards // processes
  first = jax.process_index() * per_process  # Built as process 0 inside `target`.
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
