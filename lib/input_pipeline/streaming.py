"""The streamed source of the input pipeline: tf.data over TFDS, for splits that stay off the devices.

Everything here needs TensorFlow, so lib.input_pipeline imports this module
only when a split must be built from TFDS or streamed: runs on arrays already
cached never import TensorFlow. A streamed split is cached in host memory;
each process reads only its share (`tfds.even_splits`): for training, its
shards of config.data_shards. Training batches come from an endless stream of
passes over each shard, each shuffled with its own seed, so the data order is
a function of the step and the shards: a resumed run sees exactly the batches
an uninterrupted run would, and so does a run on another number of processes
with the same shards. Evaluation visits every example once; the last batch is
padded and masked. Examples of several shapes (images at their native sizes)
go in buckets, one shape each (`by_shape`): every batch comes from one bucket,
so jit compiles once per bucket, and the bucket of a step is drawn from the
step alone. Batches leave here raw (as stored); normalization and
augmentation run in the step, in JAX, as for arrays on the devices.
"""
from collections.abc import Callable, Iterator, Sequence
import contextlib
import dataclasses
import functools
import itertools

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from lib import parallel
from lib.input_pipeline import tfds_builders
from lib.errors import UserError
from lib.input_pipeline.splits import batches_to_cover, order_entropy, shard_batch

# TF only reads data here: keep it off the accelerators that JAX uses.
tf.config.set_visible_devices([], 'GPU')
AUTOTUNE = tf.data.AUTOTUNE
Example = dict[str, tf.Tensor]


@dataclasses.dataclass(frozen=True)
class StreamSplit:
  """One split's examples held by this process: as stored (or as `streamed_x` made them), cached.

  Attributes:
    ds: the examples, each a dict with the input 'x' and target 'y'.
    num_examples: examples in the whole split, over all processes.
    local_examples: examples held by this process.
    max_local_examples: the largest share of any process; evaluation pads every
      process to it so that all run the same number of steps.
    index: the shard that seeds this split's training order (the process's
      index, or the shard's when a training split is cut into config.data_shards).
    shards: a training split of several shards on this process: one StreamSplit
      each, in shard order; `ds` holds them all.
    buckets: for examples whose 'x' comes in several shapes: one StreamSplit per
      shape (`by_shape`), in the same order on every process; `ds` holds them all.
  """
  ds: tf.data.Dataset
  num_examples: int
  local_examples: int
  max_local_examples: int
  index: int = 0
  shards: tuple['StreamSplit', ...] = ()
  buckets: tuple['StreamSplit', ...] = ()


def _count(ds: tf.data.Dataset) -> int:
  n = int(ds.cardinality())
  return n if n >= 0 else int(ds.reduce(np.int64(0), lambda n, _: n + 1))


def from_dataset(ds: tf.data.Dataset) -> StreamSplit:
  """Caches this process's examples in memory and counts them.

  Counting walks the dataset once when its size is unknown, which also fills the cache.

  Args:
    ds: this process's share of a split, preprocessed.

  Returns:
    The StreamSplit.
  """
  return from_shards({jax.process_index(): ds})


def from_shards(shards: dict[int, tf.data.Dataset]) -> StreamSplit:
  """Caches and counts this process's shards of a split (shard index -> examples).

  Args:
    shards: the shards of `parallel.local_shards`, preprocessed; every process
      passes as many.

  Returns:
    The StreamSplit; with several shards, one per shard in `shards`.
  """
  parts = []
  for index, ds in shards.items():
    ds = ds.cache()
    n = _count(ds)
    parts.append(StreamSplit(ds, n, n, n, index=index))
  counts = parallel.gather_from_processes(sum(p.local_examples for p in parts))
  local = counts[jax.process_index()]
  if len(parts) == 1:
    return dataclasses.replace(parts[0], num_examples=sum(counts), max_local_examples=max(counts))
  ds = functools.reduce(tf.data.Dataset.concatenate, [p.ds for p in parts])
  return StreamSplit(ds, sum(counts), local, max(counts), index=parts[0].index, shards=tuple(parts))


def _shape_counts(ds: tf.data.Dataset, shapes: Sequence[tuple[int, ...]]) -> np.ndarray:
  """How many examples of `ds` have each of `shapes` as the shape of 'x', in one pass."""
  table = tf.constant(shapes, tf.int32)
  return ds.reduce(
      tf.zeros(len(shapes), tf.int64), lambda n, ex: n + tf.cast(
          tf.reduce_all(table == tf.shape(ex['x'])[None], axis=1), tf.int64)).numpy()


def _of_shape(ds: tf.data.Dataset, shape: tuple[int, ...]) -> tf.data.Dataset:
  ds = ds.filter(lambda ex: tf.reduce_all(tf.shape(ex['x']) == shape))
  return ds.map(lambda ex: {**ex, 'x': tf.ensure_shape(ex['x'], shape)})


def by_shape(split: StreamSplit, shapes: Sequence[tuple[int, ...]]) -> StreamSplit:
  """`split` with a bucket per shape of 'x' in `shapes`; shapes absent from the whole split are left out.

  The buckets read `split.ds` (cached) through a filter, so nothing is cached
  twice. Each shard of a training split gets the same buckets.

  Args:
    split: examples whose 'x' has one of `shapes`.
    shapes: the possible shapes of 'x'.

  Returns:
    The split with its buckets.

  Raises:
    ValueError: some examples have none of `shapes`.
  """
  shards = split.shards or (split,)
  local = np.stack([_shape_counts(s.ds, shapes) for s in shards])  # (local shards, shapes)
  per_process = parallel.gather_arrays(local.sum(0))  # (processes, shapes)
  totals = per_process.sum(0)
  if totals.sum() != split.num_examples:
    raise ValueError(f'{split.num_examples - totals.sum()} examples have a shape outside '
                     f'{list(shapes)}')
  kept = np.flatnonzero(totals)

  def buckets(s: StreamSplit, counts: np.ndarray, global_counts: bool) -> tuple[StreamSplit, ...]:
    return tuple(
        StreamSplit(_of_shape(s.ds, shapes[k]),
                    int(totals[k]) if global_counts else int(counts[k]), int(counts[k]),
                    int(per_process[:,
                                    k].max()) if global_counts else int(counts[k]), index=s.index)
        for k in kept)

  if not split.shards:
    return dataclasses.replace(split, buckets=buckets(split, local[0], True))
  return dataclasses.replace(
      split, buckets=buckets(split, local.sum(0), True), shards=tuple(
          dataclasses.replace(s, buckets=buckets(s, row, False)) for s, row in zip(shards, local)))


def pass_seed(seed: int, shard: int, pass_index: int, bucket: int = 0) -> int:
  """tf.data's shuffle seed of one shard (and bucket) in one pass, drawn from `order_entropy`.

  Never 0: TF ops take 0 as "unseeded".
  """
  entropy = order_entropy(seed, shard, pass_index, bucket)
  return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 2) + 1


def _pass_seeds(seed: int, shard: int, bucket: int, first_pass: int) -> tf.data.Dataset:
  """The shuffle seed of each pass from `first_pass` on."""
  return tf.data.Dataset.from_generator(
      lambda: (pass_seed(seed, shard, p, bucket) for p in itertools.count(first_pass)),
      output_signature=tf.TensorSpec([], tf.int64))


def element_spec(split: StreamSplit) -> dict[str, tf.TensorSpec]:
  """One example's structure; with buckets, the first bucket's (its shapes are static)."""
  return (split.buckets[0] if split.buckets else split).ds.element_spec


def _batch_stream(split: StreamSplit, batch_size: int, seed: int, shuffle_buffer: int,
                  start_batch: int, bucket: int = 0) -> tf.data.Dataset:
  """Endless full batches of `split`, pass after pass, from batch number `start_batch`."""
  first_pass, skip = divmod(start_batch, split.local_examples // batch_size)

  def one_pass(pass_seed):
    return split.ds.shuffle(shuffle_buffer, seed=pass_seed).batch(batch_size, drop_remainder=True)

  return _pass_seeds(seed, split.index, bucket, first_pass).flat_map(one_pass).skip(skip)


_BLOCK = 4096  # Steps whose buckets are drawn at once.


def _bucket_of_step(seed: int, weights: np.ndarray, start_step: int) -> Iterator[int]:
  """The bucket of each step from `start_step` on: a draw from the step alone, by `weights`."""
  block, offset = divmod(start_step, _BLOCK)
  while True:
    rng = np.random.default_rng([seed % 2**32, 0xB0C, block])
    yield from rng.choice(len(weights), _BLOCK, p=weights)[offset:].tolist()
    block, offset = block + 1, 0


def _usable_buckets(split: StreamSplit, per_shard: int) -> list[int]:
  """The buckets that fill a batch in every shard of every process; the others are only evaluated."""
  shards = split.shards or (split,)
  local = np.array([[b.local_examples for b in s.buckets] for s in shards])
  least = parallel.gather_arrays(local).min((0, 1))
  usable = [int(k) for k in np.flatnonzero(least >= per_shard)]
  if not usable:
    raise UserError(f'no image size has {per_shard} training examples in every data shard; '
                    'lower config.batch_size or use fewer, wider buckets')
  return usable


def _bucketed_batches(shard: StreamSplit, batch_size: int, seed: int, shuffle_buffer: int,
                      start_step: int, usable: list[int], weights: np.ndarray,
                      done: np.ndarray) -> tf.data.Dataset:
  """Each step a batch of one bucket of `usable`, drawn from the step alone by `weights`.

  `done[k]` is the number of batches bucket usable[k] gave before `start_step`.
  """
  streams = [
      _batch_stream(shard.buckets[i], batch_size, seed, shuffle_buffer, int(done[k]), bucket=i)
      for k, i in enumerate(usable)
  ]
  picks = tf.data.Dataset.from_generator(lambda: _bucket_of_step(seed, weights, start_step),
                                         output_signature=tf.TensorSpec([], tf.int64))
  return tf.data.Dataset.choose_from_datasets(streams, picks, stop_on_empty_dataset=False)


def train_batches(split: StreamSplit, batch_size: int, *, seed: int, shuffle_buffer: int,
                  start_step: int = 0, stack: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Endless training batches of this process, starting at global step `start_step`.

  Each shard is shuffled pass after pass with seeds of its own and cut into
  full batches (the remainder of a pass is dropped; the next pass drops
  others); a process's batch joins the batches of its shards, in shard order.
  The global batch of a step is therefore the same however many processes
  share the shards. A split with buckets gives batches of one bucket each, the
  bucket drawn from the step in proportion to the buckets' sizes.

  Args:
    split: the training split.
    batch_size: this process's batch size.
    seed: the run's seed.
    shuffle_buffer: examples in each shard's shuffle buffer (its size shuffles fully).
    start_step: steps already trained; their batches are skipped.
    stack: if positive, yield this many consecutive batches stacked on a new
      leading axis (for config.steps_per_execution).

  Returns:
    An iterator of dicts of numpy arrays.
  """
  shards = split.shards or (split,)
  per_shard = shard_batch(batch_size, len(shards), min(s.local_examples for s in shards))
  if split.buckets:
    usable = _usable_buckets(split, per_shard)
    weights = np.array([split.buckets[k].num_examples for k in usable], np.float64)
    weights /= weights.sum()
    picks = np.fromiter(_bucket_of_step(seed, weights, 0), np.int64, count=start_step)
    done = np.bincount(picks, minlength=len(usable))
    streams = [
        _bucketed_batches(s, per_shard, seed, shuffle_buffer, start_step, usable, weights, done)
        for s in shards
    ]
  else:
    streams = [_batch_stream(s, per_shard, seed, shuffle_buffer, start_step) for s in shards]
  ds = streams[0] if len(streams) == 1 else tf.data.Dataset.zip(tuple(streams)).map(
      lambda *batches: tf.nest.map_structure(lambda *xs: tf.concat(xs, 0), *batches))
  if stack:
    ds = ds.batch(stack, drop_remainder=True)
  return ds.prefetch(AUTOTUNE).as_numpy_iterator()


def num_eval_batches(split: StreamSplit, batch_size: int, max_batches: int | None = None) -> int:
  """Batches that cover every example of the split (at most `max_batches`)."""
  if split.buckets:
    needed = sum(num_eval_batches(b, batch_size) for b in split.buckets)
    return needed if max_batches is None else min(needed, max_batches)
  return batches_to_cover(split.max_local_examples, batch_size, max_batches)


def eval_dataset(split: StreamSplit, batch_size: int,
                 max_batches: int | None = None) -> tf.data.Dataset:
  """Every example once, in order, with a boolean 'mask' that is False on padding.

  Each example also gets 'index', its position in this process's stream plus
  the process's offset: what seeds its evaluation augmentation.

  All processes yield the same number of batches, as the SPMD step needs.
  Build it once and iterate it at each evaluation.

  Args:
    split: the split to evaluate; with buckets, bucket after bucket, each
      padded on its own.
    batch_size: this process's batch size.
    max_batches: stop after this many batches (Keras' validation_steps).

  Returns:
    A dataset of padded batches.
  """
  n = num_eval_batches(split, batch_size, max_batches)
  if split.buckets:
    parts = [eval_dataset(b, batch_size) for b in split.buckets]
    ds = parts[0]
    for part in parts[1:]:
      ds = ds.concatenate(part)
    return ds.take(n)
  offset = jax.process_index() * split.max_local_examples
  ds = split.ds.enumerate(offset).map(
      lambda i, ex: {**ex, 'index': tf.cast(i, tf.int32), 'mask': True})
  padding = n * batch_size - split.local_examples
  if padding > 0:
    blank = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
    blank['mask'] = False
    ds = ds.concatenate(tf.data.Dataset.from_tensors(blank).repeat(padding))
  return ds.batch(batch_size).take(n).prefetch(AUTOTUNE)


@contextlib.contextmanager
def _naming_split(builder: tfds.core.DatasetBuilder, split: str, field: str) -> Iterator[None]:
  """TFDS's refusals of a split string, as one line naming the config field."""
  try:
    yield
  except (ValueError, KeyError, AssertionError) as e:
    raise UserError(f'config.{field}={split!r} is not a split of {builder.info.name!r}: ' +
                    str(e).strip().splitlines()[0]) from None


def _split_datasets(builder: tfds.core.DatasetBuilder, split: str, field: str,
                    names: dict[int, str]) -> dict[int, tf.data.Dataset]:
  with _naming_split(builder, split, field):
    return {i: builder.as_dataset(split=name, shuffle_files=False) for i, name in names.items()}


def split_bytes(builder: tfds.core.DatasetBuilder, split: str, field: str) -> int | None:
  """Bytes of a split's images and labels as arrays; None where image sizes vary."""
  info = tfds_builders.image_info(builder)
  if None in info['image_shape']:
    return None
  if not builder.is_prepared():  # Mocked (tfds.testing.mock_data): no split sizes; small.
    return 0
  with _naming_split(builder, split, field):
    n = builder.info.splits[split].num_examples
  return n * (int(np.prod(info['image_shape'])) * np.dtype(info['image_dtype']).itemsize + 4)


def read_split(builder: tfds.core.DatasetBuilder, split: str, field: str) -> dict[str, np.ndarray]:
  """A whole prepared image split as arrays: 'x' the images as stored, 'y' int32 labels."""
  ds = _split_datasets(builder, split, field, {0: split})[0]
  ds = ds.map(lambda ex: {'x': ex['image'], 'y': tf.cast(ex['label'], tf.int32)},
              num_parallel_calls=AUTOTUNE)
  parts = list(ds.batch(8192).as_numpy_iterator())
  return {k: np.concatenate([p[k] for p in parts]) for k in ('x', 'y')}


def tfds_split(builder: tfds.core.DatasetBuilder, split: str, field: str,
               preprocess: Callable[[Example],
                                    Example], *, num_shards: int | None = None) -> StreamSplit:
  """This process's share of a prepared TFDS split, preprocessed and cached.

  Args:
    builder: a prepared builder.
    split: a TFDS split string, e.g. 'train', 'test' or 'train[90%:]'.
    field: the config field that named the split, for error messages.
    preprocess: maps a TFDS example to {'x': ..., 'y': ...}.
    num_shards: for training, config.data_shards (0: one per process): equal
      shards (the remainder dropped), this process's read as
      `parallel.local_shards` says. None (evaluation): the examples spread
      over the processes, none dropped.

  Returns:
    The StreamSplit.
  """
  if num_shards is None:
    indices, total = [jax.process_index()], jax.process_count()
  else:
    indices, total = parallel.local_shards(num_shards)
  with _naming_split(builder, split, field):
    names = tfds.even_splits(split, n=total, drop_remainder=num_shards is not None)
  shards = _split_datasets(builder, split, field, {i: names[i] for i in indices})
  return from_shards({
      i: ds.map(preprocess, num_parallel_calls=AUTOTUNE) for i, ds in shards.items()
  })
