"""The input pipeline: source → per-process split → preprocess → cache → shuffle → batch → prefetch.

Sources are TFDS datasets (built offline from `config.manual_dir` when needed)
or in-memory arrays. Each process reads only its share of a split
(`tfds.even_splits`): for training, its shards of config.data_shards. Training
batches come from an endless stream of passes over each shard, each shuffled
with its own seed, so the data order is a function of the step and the
shards: a resumed run sees exactly the batches an uninterrupted run would,
and so does a run on another number of processes with the same shards.
Evaluation visits every example once; the last batch is padded and masked.
Examples of several shapes (images at their native sizes) go in buckets, one
shape each (`by_shape`): every batch comes from one bucket, so jit compiles
once per bucket, and the bucket of a step is drawn from the step alone, the
same on every process and in a resumed run.
"""
from collections.abc import Callable, Iterator, Sequence
import dataclasses
import difflib
import functools
import math
import os
import tempfile

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from lib import parallel
from lib.errors import UserError

AUTOTUNE = tf.data.AUTOTUNE
NORMALIZATIONS = ('none', 'unit', 'standardize')
Example = dict[str, tf.Tensor]
# Random per-example augmentation, e.g. dynamic binarization or corruption:
# (example, seed) -> example, with a stateless seed of shape [2] (tf.random.stateless_*).
Augment = Callable[[Example, tf.Tensor], Example]
# Per-batch augmentation of training batches: (batch, step) -> batch, with the
# global step as an int64 scalar. Whatever it draws from the step alone is the
# same on every process and in a resumed run: e.g. the image size of a batch.
BatchAugment = Callable[[Example, tf.Tensor], Example]
# The seed row of evaluation: evaluation augments every example the same way in every run.
EVAL_SEED = 20_200_524


@dataclasses.dataclass(frozen=True)
class Split:
  """One split's examples held by this process: preprocessed, cached, not batched.

  Attributes:
    ds: the examples, each a dict with the model input 'x' and target 'y'.
    num_examples: examples in the whole split, over all processes.
    local_examples: examples held by this process.
    max_local_examples: the largest share of any process; evaluation pads every
      process to it so that all run the same number of steps.
    index: the shard that seeds this split's training order (the process's
      index, or the shard's when a training split is cut into config.data_shards).
    shards: a training split of several shards on this process: one Split
      each, in shard order; `ds` holds them all.
    buckets: for examples whose 'x' comes in several shapes: one Split per
      shape (`by_shape`), in the same order on every process; `ds` holds them all.
  """
  ds: tf.data.Dataset
  num_examples: int
  local_examples: int
  max_local_examples: int
  index: int = 0
  shards: tuple['Split', ...] = ()
  buckets: tuple['Split', ...] = ()


def _count(ds: tf.data.Dataset) -> int:
  n = int(ds.cardinality())
  return n if n >= 0 else int(ds.reduce(np.int64(0), lambda n, _: n + 1))


def from_dataset(ds: tf.data.Dataset) -> Split:
  """Caches this process's examples in memory and counts them.

  Counting walks the dataset once when its size is unknown, which also fills the cache.

  Args:
    ds: this process's share of a split, preprocessed.

  Returns:
    The Split.
  """
  return from_shards({jax.process_index(): ds})


def from_shards(shards: dict[int, tf.data.Dataset]) -> Split:
  """Caches and counts this process's shards of a split (shard index -> examples).

  Args:
    shards: the shards of `parallel.local_shards`, preprocessed; every process
      passes as many.

  Returns:
    The Split; with several shards, one Split per shard in `shards`.
  """
  parts = []
  for index, ds in shards.items():
    ds = ds.cache()
    n = _count(ds)
    parts.append(Split(ds, n, n, n, index=index))
  counts = parallel.gather_from_processes(sum(p.local_examples for p in parts))
  local = counts[jax.process_index()]
  if len(parts) == 1:
    return dataclasses.replace(parts[0], num_examples=sum(counts), max_local_examples=max(counts))
  ds = functools.reduce(tf.data.Dataset.concatenate, [p.ds for p in parts])
  return Split(ds, sum(counts), local, max(counts), index=parts[0].index, shards=tuple(parts))


def from_arrays(arrays: dict[str, np.ndarray], num_shards: int | None = None) -> Split:
  """A Split of in-memory arrays (equal first dimension); each process takes its share.

  Args:
    arrays: the examples.
    num_shards: for a training split, config.data_shards (0: one per process);
      None spreads the examples over the processes as evaluation does.

  Returns:
    The Split.
  """
  if num_shards is None:
    shares = {k: np.array_split(v, jax.process_count())[jax.process_index()]
              for k, v in arrays.items()}
    return from_dataset(tf.data.Dataset.from_tensor_slices(shares))
  indices, total = parallel.local_shards(num_shards)
  size = len(next(iter(arrays.values()))) // total
  return from_shards({i: tf.data.Dataset.from_tensor_slices(
      {k: v[i * size:(i + 1) * size] for k, v in arrays.items()}) for i in indices})


def _shape_counts(ds: tf.data.Dataset, shapes: Sequence[tuple[int, ...]]) -> np.ndarray:
  """How many examples of `ds` have each of `shapes` as the shape of 'x', in one pass."""
  table = tf.constant(shapes, tf.int32)
  return ds.reduce(tf.zeros(len(shapes), tf.int64), lambda n, ex: n + tf.cast(tf.reduce_all(
      table == tf.shape(ex['x'])[None], axis=1), tf.int64)).numpy()


def _of_shape(ds: tf.data.Dataset, shape: tuple[int, ...]) -> tf.data.Dataset:
  ds = ds.filter(lambda ex: tf.reduce_all(tf.shape(ex['x']) == shape))
  return ds.map(lambda ex: {**ex, 'x': tf.ensure_shape(ex['x'], shape)})


def by_shape(split: Split, shapes: Sequence[tuple[int, ...]]) -> Split:
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

  def buckets(s: Split, counts: np.ndarray, global_counts: bool) -> tuple[Split, ...]:
    return tuple(Split(_of_shape(s.ds, shapes[k]),
                       int(totals[k]) if global_counts else int(counts[k]), int(counts[k]),
                       int(per_process[:, k].max()) if global_counts else int(counts[k]),
                       index=s.index) for k in kept)

  if not split.shards:
    return dataclasses.replace(split, buckets=buckets(split, local[0], True))
  return dataclasses.replace(
      split, buckets=buckets(split, local.sum(0), True),
      shards=tuple(dataclasses.replace(s, buckets=buckets(s, row, False))
                   for s, row in zip(shards, local)))


def _pass_seed(seed: int, pass_index: tf.Tensor, shard: int, bucket: int = 0) -> tf.Tensor:
  # One seed per (config seed, shard, bucket, pass). Never 0: TF ops take 0 as "unseeded".
  base = int(np.random.SeedSequence([seed % 2**32, shard, bucket]).generate_state(1)[0])
  return pass_index * 2**32 + base + 1


def _augmented(ds: tf.data.Dataset, augment: Augment | None, seed: tf.Tensor) -> tf.data.Dataset:
  """Applies `augment` with the seed [seed, position of the example]."""
  if augment is None:
    return ds
  return ds.enumerate().map(lambda i, ex: augment(ex, tf.stack([tf.cast(seed, tf.int64), i])),
                            num_parallel_calls=AUTOTUNE)


def element_spec(split: Split, augment: Augment | None = None) -> dict[str, tf.TensorSpec]:
  """One example's structure as the steps see it: after `augment`, which may add entries.

  With buckets, the first bucket's: its shapes are static, as tracing needs.
  """
  split = split.buckets[0] if split.buckets else split
  return _augmented(split.ds, augment, tf.constant(0, tf.int64)).element_spec


def _batch_stream(split: Split, batch_size: int, seed: int, shuffle_buffer: int,
                  start_batch: int, augment: Augment | None, bucket: int = 0) -> tf.data.Dataset:
  """Endless full batches of `split`, pass after pass, from batch number `start_batch`."""
  first_pass, skip = divmod(start_batch, split.local_examples // batch_size)

  def one_pass(pass_index):
    pass_seed = _pass_seed(seed, pass_index, split.index, bucket)
    shuffled = split.ds.shuffle(shuffle_buffer, seed=pass_seed)
    return _augmented(shuffled, augment, pass_seed).batch(batch_size, drop_remainder=True)

  return tf.data.Dataset.range(first_pass, 2**31).flat_map(one_pass).skip(skip)


_BLOCK = 4096  # Steps whose buckets are drawn at once.


def _bucket_of_step(seed: int, weights: np.ndarray, start_step: int) -> Iterator[int]:
  """The bucket of each step from `start_step` on: a draw from the step alone, by `weights`."""
  block, offset = divmod(start_step, _BLOCK)
  while True:
    rng = np.random.default_rng([seed % 2**32, 0xB0C, block])
    yield from rng.choice(len(weights), _BLOCK, p=weights)[offset:].tolist()
    block, offset = block + 1, 0


def _usable_buckets(split: Split, shard_batch: int) -> list[int]:
  """The buckets that fill a batch in every shard of every process; the others are only evaluated."""
  shards = split.shards or (split,)
  local = np.array([[b.local_examples for b in s.buckets] for s in shards])
  least = parallel.gather_arrays(local).min((0, 1))
  usable = [int(k) for k in np.flatnonzero(least >= shard_batch)]
  if not usable:
    raise UserError(f'no image size has {shard_batch} training examples in every data shard; '
                    'lower config.batch_size or use fewer, wider buckets')
  return usable


def _bucketed_batches(shard: Split, batch_size: int, seed: int, shuffle_buffer: int,
                      start_step: int, augment: Augment | None, usable: list[int],
                      weights: np.ndarray, done: np.ndarray) -> tf.data.Dataset:
  """Each step a batch of one bucket of `usable`, drawn from the step alone by `weights`.

  `done[k]` is the number of batches bucket usable[k] gave before `start_step`.
  """
  streams = [_batch_stream(shard.buckets[i], batch_size, seed, shuffle_buffer, int(done[k]),
                           augment, bucket=i) for k, i in enumerate(usable)]
  picks = tf.data.Dataset.from_generator(lambda: _bucket_of_step(seed, weights, start_step),
                                         output_signature=tf.TensorSpec([], tf.int64))
  return tf.data.Dataset.choose_from_datasets(streams, picks, stop_on_empty_dataset=False)


def train_batches(split: Split, batch_size: int, *, seed: int, shuffle_buffer: int,
                  start_step: int = 0, stack: int = 0, augment: Augment | None = None,
                  batch_augment: BatchAugment | None = None) -> Iterator[dict[str, np.ndarray]]:
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
    augment: random per-example augmentation, seeded per pass and example, so
      it is new each pass and the same in a resumed run.
    batch_augment: applied to each batch with its global step, before stacking.

  Returns:
    An iterator of dicts of numpy arrays.
  """
  shards = split.shards or (split,)
  if batch_size % len(shards):
    raise UserError(f'this process reads {len(shards)} data shards, which cannot split its '
                    f'batch of {batch_size} evenly; make config.batch_size a multiple of '
                    'config.data_shards')
  shard_batch = batch_size // len(shards)
  smallest = min(s.local_examples for s in shards)
  if smallest < shard_batch:
    raise UserError(
        f'a shard of the training split has {smallest} examples, fewer than its share '
        f'{shard_batch} of a batch; lower config.batch_size (or config.data_shards)')
  if split.buckets:
    usable = _usable_buckets(split, shard_batch)
    weights = np.array([split.buckets[k].num_examples for k in usable], np.float64)
    weights /= weights.sum()
    picks = np.fromiter(_bucket_of_step(seed, weights, 0), np.int64, count=start_step)
    done = np.bincount(picks, minlength=len(usable))
    streams = [_bucketed_batches(s, shard_batch, seed, shuffle_buffer, start_step, augment,
                                 usable, weights, done) for s in shards]
  else:
    streams = [_batch_stream(s, shard_batch, seed, shuffle_buffer, start_step, augment)
               for s in shards]
  ds = streams[0] if len(streams) == 1 else tf.data.Dataset.zip(tuple(streams)).map(
      lambda *batches: tf.nest.map_structure(lambda *xs: tf.concat(xs, 0), *batches))
  if batch_augment is not None:
    ds = ds.enumerate(start_step).map(lambda step, batch: batch_augment(batch, step),
                                      num_parallel_calls=AUTOTUNE)
  if stack:
    ds = ds.batch(stack, drop_remainder=True)
  return ds.prefetch(AUTOTUNE).as_numpy_iterator()


def num_eval_batches(split: Split, batch_size: int, max_batches: int | None = None) -> int:
  """Batches that cover every example of the split (at most `max_batches`)."""
  if split.buckets:
    needed = sum(num_eval_batches(b, batch_size) for b in split.buckets)
  else:
    needed = math.ceil(split.max_local_examples / batch_size)
  return needed if max_batches is None else min(needed, max_batches)


def eval_bytes(split: Split, batch_size: int, max_batches: int | None = None,
               augment: Augment | None = None) -> int:
  """Bytes of this process's evaluation batches, padding included (with buckets, at most)."""
  if split.buckets:
    return sum(eval_bytes(b, batch_size, max_batches, augment) for b in split.buckets)
  example = sum(s.shape.num_elements() * s.dtype.size
                for s in element_spec(split, augment).values())
  return num_eval_batches(split, batch_size, max_batches) * batch_size * example


def eval_dataset(split: Split, batch_size: int, max_batches: int | None = None,
                 augment: Augment | None = None) -> tf.data.Dataset:
  """Every example once, in order, with a boolean 'mask' that is False on padding.

  All processes yield the same number of batches, as the SPMD step needs.
  Build it once and iterate it at each evaluation.

  Args:
    split: the split to evaluate; with buckets, bucket after bucket, each
      padded on its own.
    batch_size: this process's batch size.
    max_batches: stop after this many batches (Keras' validation_steps).
    augment: applied with the fixed seed row EVAL_SEED, so every evaluation
      (and every run) sees the same augmented examples.

  Returns:
    A dataset of padded batches.
  """
  n = num_eval_batches(split, batch_size, max_batches)
  if split.buckets:
    parts = [eval_dataset(b, batch_size, augment=augment) for b in split.buckets]
    ds = parts[0]
    for part in parts[1:]:
      ds = ds.concatenate(part)
    return ds.take(n)
  ds = _augmented(split.ds, augment, tf.constant(EVAL_SEED, tf.int64))
  ds = ds.map(lambda ex: {**ex, 'mask': True})
  padding = n * batch_size - split.local_examples
  if padding > 0:
    blank = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
    blank['mask'] = False
    ds = ds.concatenate(tf.data.Dataset.from_tensors(blank).repeat(padding))
  return ds.batch(batch_size).take(n).prefetch(AUTOTUNE)


def eval_batches(split: Split, batch_size: int, max_batches: int | None = None,
                 augment: Augment | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Numpy batches of `eval_dataset(split, batch_size, max_batches, augment)`."""
  return eval_dataset(split, batch_size, max_batches, augment).as_numpy_iterator()


def tfds_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `config.dataset` in `config.data_dir`, not yet prepared.

  Raises:
    UserError: the name is not a TFDS dataset.
  """
  try:
    return tfds.builder(config.dataset, data_dir=config.data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    close = difflib.get_close_matches(config.dataset, tfds.list_builders(), n=3)
    raise UserError(
        f'config.dataset={config.dataset!r} is not a TFDS dataset'
        + (f'; did you mean {close}?' if close else '; see tfds.list_builders()')) from None


def prepare(builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict) -> None:
  """Builds the dataset into data_dir if it is not there yet.

  From `config.manual_dir` (the dataset's original files; TFDS verifies their
  checksums) when given, else by download when `config.download` allows it.

  Raises:
    UserError: the data is missing and cannot be built offline.
  """
  if builder.is_prepared():
    return
  name = builder.info.name
  if config.manual_dir and not os.path.isdir(config.manual_dir):
    raise UserError(f'config.manual_dir={config.manual_dir!r} is not a directory')
  if not config.manual_dir and not config.download:
    raise UserError(
        f'dataset {name!r} is not prepared in {builder.data_dir} and this run may not download; '
        f'pass --config.manual_dir=DIR with its original files (e.g. ../shared/data/{name}), '
        '--config.data_dir=DIR where it is prepared, or --config.download=True')
  # TFDS names an extracted manual file after its file name alone, so in a shared
  # extract_dir MNIST and Fashion-MNIST (same file names) would reuse each
  # other's files. Extract into a fresh directory instead.
  with tempfile.TemporaryDirectory(prefix=f'tfds_extract_{name}_') as extract_dir:
    download_config = tfds.download.DownloadConfig(
        manual_dir=config.manual_dir, extract_dir=extract_dir,
        force_checksums_validation=bool(config.manual_dir), try_download_gcs=not config.manual_dir)
    try:
      builder.download_and_prepare(download_config=download_config)
    except Exception as e:  # TFDS raises many kinds: network, checksum, missing file.
      raise UserError(
          f'could not build {name!r} into {builder.data_dir}: {type(e).__name__}: '
          + str(e).strip().splitlines()[0]) from e


def tfds_split(builder: tfds.core.DatasetBuilder, split: str, field: str,
               preprocess: Callable[[Example], Example], *,
               num_shards: int | None = None) -> Split:
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
    The Split.
  """
  if num_shards is None:
    indices, total = [jax.process_index()], jax.process_count()
  else:
    indices, total = parallel.local_shards(num_shards)
  try:
    names = tfds.even_splits(split, n=total, drop_remainder=num_shards is not None)
    shards = {i: builder.as_dataset(split=names[i], shuffle_files=False) for i in indices}
  except (ValueError, KeyError, AssertionError) as e:
    raise UserError(f'config.{field}={split!r} is not a split of {builder.info.name!r}: '
                    + str(e).strip().splitlines()[0]) from None
  return from_shards({i: ds.map(preprocess, num_parallel_calls=AUTOTUNE)
                      for i, ds in shards.items()})


def check_normalization(name: str) -> None:
  if name not in NORMALIZATIONS:
    raise UserError(f'config.normalization={name!r} is unknown; choose one of {list(NORMALIZATIONS)}')


def image_stats(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of the 'image' feature over a dataset of raw examples."""
  total = total_sq = 0.0
  count = 0
  for batch in ds.map(lambda ex: ex['image']).batch(4096).as_numpy_iterator():
    x = batch.astype(np.float64).reshape(-1, batch.shape[-1])
    total = total + x.sum(0)
    total_sq = total_sq + (x * x).sum(0)
    count += x.shape[0]
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
  return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def normalizer(mode: str, mean: np.ndarray | None = None,
               std: np.ndarray | None = None) -> Callable[[tf.Tensor], tf.Tensor]:
  """Maps uint8 pixels to float32: 'none' 0..255, 'unit' [0, 1], 'standardize' (x - mean) / std."""
  check_normalization(mode)
  if mode == 'none':
    return lambda image: tf.cast(image, tf.float32)
  if mode == 'unit':
    return lambda image: tf.cast(image, tf.float32) / 255.0
  return lambda image: (tf.cast(image, tf.float32) - mean) / std


@dataclasses.dataclass(frozen=True)
class ImageData:
  """Splits of an image classification dataset and what models need to know of it."""
  train: Split
  val: Split
  test: Split
  num_classes: int
  class_names: list[str]
  image_shape: tuple[int, ...]


def check_image_classification(builder: tfds.core.DatasetBuilder) -> None:
  features = builder.info.features
  if 'image' not in features or 'label' not in features:
    raise UserError(f'config.dataset={builder.info.name!r} has features {list(features)}; '
                    "an image classifier needs 'image' and 'label'")


def image_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The builder of an image dataset with labels, after the checks that need no data.

  Raises:
    UserError: unknown dataset, no 'image'/'label' features, unknown normalization.
  """
  builder = tfds_builder(config)
  check_image_classification(builder)
  check_normalization(config.normalization)
  return builder


def image_classification(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder,
                         to_cache: Callable[[tf.Tensor], tf.Tensor] | None = None) -> ImageData:
  """Train, validation and test splits of a TFDS image classification dataset.

  Images become float32 'x' normalized as `config.normalization` says (with the
  training split's statistics for 'standardize'); labels become int32 'y'.

  Args:
    config: the run's config (dataset fields, normalization).
    builder: `image_builder(config)`.
    to_cache: if given, maps each decoded image to the 'x' that is cached
      instead (e.g. resized and still uint8, 4x smaller than float32);
      normalizing it is then the caller's job, after the cache.

  Returns:
    The ImageData.
  """
  prepare(builder, config)
  if to_cache is None:
    mean = std = None
    if config.normalization == 'standardize':
      # The whole training split on every process, so all normalize alike.
      mean, std = image_stats(builder.as_dataset(split=config.train_split))
    to_cache = normalizer(config.normalization, mean, std)

  def preprocess(ex: Example) -> Example:
    return {'x': to_cache(ex['image']), 'y': tf.cast(ex['label'], tf.int32)}

  train = tfds_split(builder, config.train_split, 'train_split', preprocess,
                     num_shards=config.data_shards)
  val = tfds_split(builder, config.eval_split, 'eval_split', preprocess)
  test = (val if config.test_split == config.eval_split else
          tfds_split(builder, config.test_split, 'test_split', preprocess))
  label = builder.info.features['label']
  return ImageData(train, val, test, label.num_classes, list(label.names),
                   tuple(builder.info.features['image'].shape))
