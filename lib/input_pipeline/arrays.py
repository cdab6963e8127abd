"""The source of arrays on the devices: the whole split on every device, each batch gathered there."""
from collections.abc import Sequence
import dataclasses
from typing import Any

import jax
import numpy as np

from lib import parallel
from lib.input_pipeline.splits import Feed, Preprocess, Source, batches_to_cover, identity, order_entropy, replicated, shard_batch, spec_of

BLOCK_STEPS = 1024  # Steps whose indices go to the devices in one transfer.


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySource(Source):
  """A split held whole by every process and, from first use, by every device.

  Attributes:
    num_examples: examples in the whole split.
    spec: one stored example's entries.
    preprocess: stored examples to model inputs, in JAX.
    arrays: the whole split on the host (ShapeDtypeStructs for lib.aot's
      --compile_for, which reads no example).
    num_shards: the data shards of a training split (config.data_shards resolved).
  """
  num_examples: int
  spec: dict[str, jax.ShapeDtypeStruct]
  preprocess: Preprocess
  arrays: dict[str, Any]
  num_shards: int = 1
  _placed: dict[str, jax.Array] = dataclasses.field(default_factory=dict, repr=False)
  where = 'on the devices'

  def device_data(self) -> dict[str, jax.Array]:
    """The split's arrays on every device (replicated), placed on first use."""
    if not self._placed:
      self._placed.update({k: replicated(v) for k, v in self.arrays.items()})
    return self._placed

  def train_feed(self, batch_size: int, *, seed: int, shuffle_buffer: int = 0, start_step: int = 0,
                 stack: int = 0, seeds: Sequence[int] | None = None,
                 shuffle: bool = True) -> 'ArrayFeed':
    del shuffle_buffer  # Each pass permutes a whole shard.
    return ArrayFeed(self, batch_size, seed, start_step, stack, seeds, shuffle)

  def num_eval_batches(self, batch_size: int, max_batches: int | None = None) -> int:
    return batches_to_cover(self.num_examples, batch_size, max_batches)

  def eval_inputs(self, batch_size, max_batches, sharding):
    """Each batch's indices into the split and its mask: the last batch is padded with index 0."""
    del sharding  # The gather lays the batch out.
    for b in range(self.num_eval_batches(batch_size, max_batches)):
      idx = np.arange(b * batch_size, (b + 1) * batch_size)
      mask = idx < self.num_examples
      yield {'idx': replicated(np.where(mask, idx, 0).astype(np.int32)), 'mask': replicated(mask)}


def from_arrays(arrays: dict[str, Any], num_shards: int | None = None,
                preprocess: Preprocess = identity) -> ArraySource:
  """A Source of whole arrays (equal first dimension), kept on the devices.

  Args:
    arrays: the examples, as stored (or ShapeDtypeStructs, for lib.aot).
    num_shards: for a training split, config.data_shards (0: one per process);
      None for evaluation.
    preprocess: stored examples to model inputs, in JAX.

  Returns:
    The ArraySource.
  """
  arrays = {
      k: v if isinstance(v, jax.ShapeDtypeStruct) else np.asarray(v) for k, v in arrays.items()
  }
  sizes = {v.shape[0] for v in arrays.values()}
  if len(sizes) != 1:
    raise ValueError(f'arrays of different lengths: { {k: v.shape for k, v in arrays.items()} }')
  shards = 1 if num_shards is None else parallel.local_shards(num_shards)[1]
  return ArraySource(sizes.pop(), spec_of(arrays), preprocess, arrays=arrays, num_shards=shards)


class ArrayFeed(Feed):
  """Indices into the split on the devices, a block of steps at a time.

  `next` hands over the indices of a block of steps at once (BLOCK_STEPS,
  rounded to whole calls): one transfer serves many calls, and each step picks
  its row by its own step number (`batch_of`). A transfer per call would cost a
  small step a large part of its time. The training split is cut into equal
  shards, each permuted anew each pass (numpy, from `order_entropy`), and a
  global batch joins one slice of each shard, in shard order.
  """
  def __init__(self, source: ArraySource, batch_size: int, seed: int, start_step: int, stack: int,
               seeds: Sequence[int] | None, shuffle: bool):
    self.source, self._shuffle = source, shuffle
    self._seeds = list(seeds) if seeds else None
    self._seed = seed
    self._step = start_step
    self.data = source.device_data()
    self._shard_size = source.num_examples // source.num_shards
    self._shard_batch = shard_batch(batch_size, source.num_shards, self._shard_size)
    self._per_pass = self._shard_size // self._shard_batch
    self._perms: dict[tuple[int, int, int], np.ndarray] = {}
    per_call = max(stack, 1)
    self._block_steps = per_call * max(1, BLOCK_STEPS // per_call)
    self._block, self._block_first = None, 0

  def _permutation(self, seed: int, shard: int, pass_index: int) -> np.ndarray:
    key = (seed, shard, pass_index)
    if key not in self._perms:
      if len(self._perms) > 4 * self.source.num_shards * len(self._seeds or [seed]):
        self._perms.clear()
      order = (np.random.default_rng(order_entropy(seed, shard, pass_index)).permutation(
          self._shard_size) if self._shuffle else np.arange(self._shard_size))
      self._perms[key] = (order + shard * self._shard_size).astype(np.int32)
    return self._perms[key]

  def indices(self, step: int, seed: int | None = None) -> np.ndarray:
    """The global batch of `step` (in the order of `seed`, default the run's) as indices into
    the split: one slice of each shard."""
    return self._rows(step, 1, self._seed if seed is None else seed)[0]

  def _rows(self, first: int, count: int, seed: int) -> np.ndarray:
    """The global batches of `count` steps from `first`, (count, batch): each pass's
    permutations are sliced once for all its steps, not once per step."""
    rows, step, end = [], first, first + count
    while step < end:
      pass_index, position = divmod(step, self._per_pass)
      n = min(end - step, self._per_pass - position)
      lo, hi = position * self._shard_batch, (position + n) * self._shard_batch
      rows.append(
          np.concatenate([
              self._permutation(seed, k, pass_index)[lo:hi].reshape(n, self._shard_batch)
              for k in range(self.source.num_shards)
          ], axis=1))
      step += n
    return np.concatenate(rows)

  def next(self, count: int, sharding: jax.sharding.Sharding) -> dict[str, Any]:
    """{'idx': (block steps, [members,] batch) indices, 'first': the block's first step}: the
    same arrays for every call inside the block."""
    del sharding  # The gather lays the batch out.
    first, self._step = self._step, self._step + count
    if self._block is None or not (self._block_first <= first and
                                   first + count <= self._block_first + self._block_steps):
      n = self._block_steps  # Always full: one shape, one compile.
      if self._seeds:  # (steps, members, batch).
        idx = np.stack([self._rows(first, n, seed) for seed in self._seeds], axis=1)
      else:
        idx = self._rows(first, n, self._seed)
      self._block_first = first
      self._block = {'idx': replicated(idx), 'first': replicated(np.int32(first))}
    return self._block
