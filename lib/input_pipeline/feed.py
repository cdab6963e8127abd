"""What the train step reads, call after call: the data order of (seed, shard, pass), from either source."""
from typing import Any

import jax
import numpy as np

from lib import parallel
from lib.errors import UserError
from lib.input_pipeline.splits import Split, on_devices, replicated

# Training.

BLOCK_STEPS = 1024  # Steps whose indices go to the devices in one transfer.


class TrainFeed:
  """What the train step reads, call after call: indices into the arrays, or streamed batches.

  Args:
    split: the training split.
    batch_size: the global batch size.
    seed: the run's seed.
    shuffle_buffer: for a streamed split, examples in each shard's shuffle buffer.
    start_step: steps already trained.
    stack: if positive, each call runs this many steps (config.steps_per_execution):
      a streamed split's batches come stacked on a new leading axis.
    members: models trained together (config.num_seeds); above 1, member k
      draws the order of seed + k, and each step's indices get a member axis
      (after the step axis).
    shuffle: permute each shard anew each pass; False reads every pass in the
      stored order (a split on the devices only).

  For a split on the devices, `next` hands over the indices of a block of
  steps at once (BLOCK_STEPS, rounded to whole calls): one transfer serves
  many calls, and each step picks its row by its own step number
  (`batch_of`). A transfer per call would cost a small step a large part of
  its time.
  """
  def __init__(self, split: Split, batch_size: int, *, seed: int, shuffle_buffer: int,
               start_step: int = 0, stack: int = 0, members: int = 1, shuffle: bool = True):
    self.split, self._stack, self._shuffle = split, stack, shuffle
    self._seeds = [seed + k for k in range(members)] if members > 1 else None
    self._seed = seed
    self._step = start_step
    if split.stream is not None and members > 1:
      raise UserError(f'config.num_seeds={members} trains on a split kept on the devices; '
                      'this one streams (over config.device_data_mb, or of several shapes)')
    if split.stream is not None and not shuffle:
      raise UserError('config.shuffle=False reads a split kept on the devices in order; this one '
                      'streams (over config.device_data_mb, or of several shapes)')
    if split.stream is not None:
      self.data = {}
      self._stream = None
      self._stream_args = dict(batch_size=parallel.local_batch_size(batch_size), seed=seed,
                               shuffle_buffer=shuffle_buffer)
      return
    self.data = on_devices(split)
    shards = split.num_shards
    if batch_size % shards:
      raise UserError(f'the training split has {shards} data shards, which cannot split a '
                      f'batch of {batch_size} evenly; make config.batch_size a multiple of '
                      'config.data_shards')
    self._shard_size = split.num_examples // shards
    self._shard_batch = batch_size // shards
    if self._shard_size < self._shard_batch:
      raise UserError(
          f'a shard of the training split has {self._shard_size} examples, fewer than its '
          f'share {self._shard_batch} of a batch; lower config.batch_size (or config.data_shards)')
    self._per_pass = self._shard_size // self._shard_batch
    self._perms: dict[tuple[int, int, int], np.ndarray] = {}
    per_call = max(stack, 1)
    self._block_steps = per_call * max(1, BLOCK_STEPS // per_call)
    self._block, self._block_first = None, 0

  def _permutation(self, seed: int, shard: int, pass_index: int) -> np.ndarray:
    key = (seed, shard, pass_index)
    if key not in self._perms:
      if len(self._perms) > 4 * self.split.num_shards * len(self._seeds or [seed]):
        self._perms.clear()
      order = (np.random.default_rng([seed % 2**32, shard, pass_index]).permutation(
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
              for k in range(self.split.num_shards)
          ], axis=1))
      step += n
    return np.concatenate(rows)

  def next(self, count: int, sharding: jax.sharding.Sharding) -> dict[str, Any]:
    """The inputs of the next `count` steps, for `train_steps`.

    On the devices: {'idx': (block steps, [members,] batch) indices, 'first': the
    block's first step}, the same arrays for every call inside the block.
    Streamed: {'batch': the batch, or `count` batches stacked}.
    """
    first, self._step = self._step, self._step + count
    if self.split.stream is None:
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
    if self._stream is None:
      from lib.input_pipeline import streaming  # pylint: disable=g-import-not-at-top
      self._stream = streaming.train_batches(self.split.stream, start_step=first, stack=self._stack,
                                             **self._stream_args)
    return {'batch': parallel.shard(next(self._stream), sharding)}
