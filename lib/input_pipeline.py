"""The input pipeline: one interface, two sources (arrays on the devices, or a tf.data stream).

A split that fits `config.device_data_mb` is read once from TFDS as whole
arrays in their stored dtype (MNIST: 47 MB of uint8), kept in an array cache
beside the TFDS data so that later runs load it with numpy alone (no
TensorFlow, no tf.data), and placed on every device once. Each training step
gathers its batch there: the training split is cut into config.data_shards
equal shards, each permuted anew each pass by a function of (seed, shard,
pass), and a global batch joins one slice of each shard, in shard order. The
data order is thus a function of the step and the shards: a resumed run, a run
on another number of processes with the same shards, or on other devices, sees
the same global batches.

Larger splits, and images of several sizes, stream through tf.data
(lib.streaming, imported only then) behind the same functions.

Either way the step itself turns stored examples into model inputs
(`Split.preprocess`, e.g. uint8 pixels to floats in [0, 1]) and applies the
experiment's random augmentation, in JAX: one example at a time (vmapped), with
a key from the step and the example's position in the global batch in
training, and from the example's index in evaluation, so that evaluation sees
the same augmented examples in every run. Evaluation visits every example
once; the last batch is padded and masked.
"""
from collections.abc import Callable, Iterable, Iterator, Sequence
import dataclasses
import functools
import hashlib
import math
import os
import re
import shutil
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
from jax.extend.random import threefry2x32_p
import ml_collections
import numpy as np

from lib import parallel
from lib import records
from lib.errors import UserError

NORMALIZATIONS = ('none', 'unit', 'standardize')
Example = dict[str, jax.Array]
# Random augmentation of one example in JAX: (example, key) -> example. It may add
# entries (e.g. the autoencoder's clean target) or change the shape of 'x'.
Augment = Callable[[Example, jax.Array], Example]
# Stored examples to model inputs, on a whole batch in JAX (e.g. normalization).
Preprocess = Callable[[Example], Example]
# The key of evaluation's augmentation: the same augmented examples in every run.
EVAL_SEED = 20_200_524
# The batch entries that say where an example came from, not what it is.
_BOOKKEEPING = ('mask', 'index')


def _identity(batch: Example) -> Example:
  return batch


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """An experiment's random augmentation: one of `train` per training step, `eval` for evaluation.

  Attributes:
    train: the training augmentations; step s uses train[pick(s)]. Each one
      compiles the train step once (e.g. one per canvas size).
    eval: the evaluation augmentation (None: none).
    pick: step -> index into `train`, a function of the step alone, so the same
      on every process and in a resumed run. None: always train[0].
  """
  train: tuple[Augment | None, ...] = (None,)
  eval: Augment | None = None
  pick: Callable[[int], int] | None = None

  def index(self, step: int) -> int:
    return 0 if self.pick is None else int(self.pick(step))


def uniform16(key: jax.Array, shape: Sequence[int]) -> jax.Array:
  """Uniform floats in [0, 1) at 16-bit resolution (multiples of 2**-16), four per threefry block.

  Random bits are a large part of an augmented step's cost on CPU (XLA's
  threefry). `jax.random.bits` spends one threefry block (two 32-bit words) on
  each 32-bit word it returns; here each block gives four 16-bit values. Value i
  depends only on (key, i), as in `jax.random`, so the values partition over
  the devices with the batch. For augmentations that compare them with a
  probability (binarization, masks), every probability is off by less than
  2**-16.
  """
  n = math.prod(shape)
  k1, k2 = jax.random.key_data(key)
  counts = jax.lax.iota(jnp.uint32, -(-n // 4))
  words = jnp.stack(threefry2x32_p.bind(k1, k2, jnp.zeros_like(counts), counts), -1)
  halves = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(-1)[:n]
  return halves.reshape(shape).astype(jnp.float32) * 2.0**-16


def augmentation(augment: Augment | Augmentation | None) -> Augmentation:
  """An Augmentation; a plain Augment is used for training and evaluation alike."""
  if isinstance(augment, Augmentation):
    return augment
  return Augmentation((augment,), augment)


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """One split of examples, as stored, with what turns them into model inputs.

  Attributes:
    num_examples: examples in the whole split.
    spec: one stored example's entries (shape without the batch axis, dtype).
    preprocess: stored examples to model inputs, on a batch in JAX.
    arrays: the whole split on the host (every process holds all of it); it is
      placed on the devices once, on first use. None for a streamed split.
    stream: the streamed split (lib.streaming.StreamSplit), or None.
    num_shards: the data shards of a training split on the devices
      (config.data_shards resolved); a streamed split's shards are its stream's.
  """
  num_examples: int
  spec: dict[str, jax.ShapeDtypeStruct]
  preprocess: Preprocess = _identity
  arrays: dict[str, np.ndarray] | None = None
  stream: Any = None
  num_shards: int = 1
  _placed: dict[str, jax.Array] = dataclasses.field(default_factory=dict, repr=False)

  @property
  def buckets(self) -> tuple['Split', ...]:
    """A streamed split of several shapes: one Split per shape (`by_shape`); else ()."""
    if self.stream is None:
      return ()
    return tuple(from_stream(b, self.preprocess) for b in self.stream.buckets)


def _spec(arrays: dict[str, np.ndarray]) -> dict[str, jax.ShapeDtypeStruct]:
  return {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in arrays.items()}


def from_arrays(arrays: dict[str, np.ndarray], num_shards: int | None = None,
                preprocess: Preprocess = _identity) -> Split:
  """A Split of whole arrays (equal first dimension), kept on the devices.

  Args:
    arrays: the examples, as stored.
    num_shards: for a training split, config.data_shards (0: one per process);
      None for evaluation.
    preprocess: stored examples to model inputs, in JAX.

  Returns:
    The Split.
  """
  # ShapeDtypeStructs stand for arrays that are not read (lib.aot's --compile_for).
  arrays = {
      k: v if isinstance(v, jax.ShapeDtypeStruct) else np.asarray(v) for k, v in arrays.items()
  }
  sizes = {v.shape[0] for v in arrays.values()}
  if len(sizes) != 1:
    raise ValueError(f'arrays of different lengths: { {k: v.shape for k, v in arrays.items()} }')
  shards = 1 if num_shards is None else parallel.local_shards(num_shards)[1]
  return Split(sizes.pop(), _spec(arrays), preprocess, arrays=arrays, num_shards=shards)


def from_stream(stream: Any, preprocess: Preprocess = _identity) -> Split:
  """A Split that streams through tf.data: a lib.streaming.StreamSplit."""
  from lib import streaming  # pylint: disable=g-import-not-at-top
  spec = {
      k: jax.ShapeDtypeStruct(s.shape, s.dtype.as_numpy_dtype)
      for k, s in streaming.element_spec(stream).items()
  }
  return Split(stream.num_examples, spec, preprocess, stream=stream)


def _replicated(x: np.ndarray | jax.ShapeDtypeStruct) -> jax.Array | jax.ShapeDtypeStruct:
  """A host array, the same on every process, as one global array on every device.

  Building for a target that is not here (lib.parallel.target), its shape and
  dtype there instead: nothing is transferred.
  """
  sharding = parallel.replicated(parallel.make_mesh())
  if parallel.is_target() or isinstance(x, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])


def on_devices(split: Split) -> dict[str, jax.Array]:
  """The split's arrays on every device (replicated), placed on first use."""
  if split.arrays is None:
    raise ValueError('a streamed split is not on the devices')
  if not split._placed:  # pylint: disable=protected-access
    split._placed.update({k: _replicated(v) for k, v in split.arrays.items()})  # pylint: disable=protected-access
  return split._placed  # pylint: disable=protected-access


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
      rng = np.random.default_rng([seed % 2**32, shard, pass_index])
      order = rng.permutation(self._shard_size) if self._shuffle else np.arange(self._shard_size)
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
        self._block = {'idx': _replicated(idx), 'first': _replicated(np.int32(first))}
      return self._block
    if self._stream is None:
      from lib import streaming  # pylint: disable=g-import-not-at-top
      self._stream = streaming.train_batches(self.split.stream, start_step=first, stack=self._stack,
                                             **self._stream_args)
    return {'batch': parallel.shard(next(self._stream), sharding)}


def batch_of(data: dict[str, jax.Array], inputs: dict[str, Any], sharding: jax.sharding.Sharding |
             None = None, step: jax.Array | None = None, steps: int = 0) -> Example:
  """Traced: the stored batch that `inputs` names (gathered from `data`, or streamed as is).

  A gathered batch gets 'index' (each example's index in the split) and, where
  `inputs` has one, 'mask'. Inputs of a block of steps (TrainFeed.next) give
  `step`'s row; with `steps`, the rows of `steps` steps from `step` on, as
  batches stacked on a new leading axis (`sharding` is then the stacked one).
  One gather for a call's steps costs less than one per step: a step's own
  gather waits on its cache misses into the split.
  """
  if 'batch' in inputs:
    return inputs['batch']
  idx = inputs['idx']
  if steps:
    idx = jax.lax.dynamic_slice_in_dim(idx, step - inputs['first'], steps)
  elif 'first' in inputs:
    idx = jax.lax.dynamic_index_in_dim(idx, step - inputs['first'], keepdims=False)
  batch = {k: jnp.take(v, idx, axis=0) for k, v in data.items()}
  batch['index'] = idx
  if 'mask' in inputs:
    batch['mask'] = inputs['mask']
  if sharding is not None:  # Each device keeps its slice of the global batch.
    batch = jax.lax.with_sharding_constraint(batch, sharding)
  return batch


def model_inputs(batch: Example, preprocess: Preprocess, augment: Augment | None,
                 key: jax.Array | None) -> Example:
  """Traced: preprocessing, then `augment` on each example with its own key.

  Args:
    batch: stored examples, perhaps with 'mask' and 'index'.
    preprocess: the split's.
    augment: the augmentation, or None.
    key: training: the step's key, folded with each example's position in the
      batch. None (evaluation): EVAL_SEED's key folded with each example's index.

  Returns:
    The model's batch, with 'mask' kept where there was one.
  """
  kept = {k: batch[k] for k in _BOOKKEEPING if k in batch}
  examples = preprocess({k: v for k, v in batch.items() if k not in _BOOKKEEPING})
  if augment is not None:
    if key is None:
      keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.PRNGKey(EVAL_SEED), kept['index'])
    else:
      n = next(iter(examples.values())).shape[0]
      keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(n))
    examples = jax.vmap(augment)(examples, keys)
  if 'mask' in kept:
    examples['mask'] = kept['mask']
  return examples


def model_spec(split: Split, augment: Augment | None) -> dict[str, jax.ShapeDtypeStruct]:
  """One example's entries as the model sees them: after preprocessing and `augment`."""
  batch = {
      k: jax.ShapeDtypeStruct((1, *s.shape), s.dtype)
      for k, s in split.spec.items()
      if k not in _BOOKKEEPING
  }
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  out = jax.eval_shape(lambda b, k: model_inputs(b, split.preprocess, augment, k), batch, key)
  return {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in out.items()}


# Evaluation.


def num_eval_batches(split: Split, batch_size: int, max_batches: int | None = None) -> int:
  """Batches of `batch_size` (global) that cover every example (at most `max_batches`)."""
  if split.stream is not None:
    from lib import streaming  # pylint: disable=g-import-not-at-top
    return streaming.num_eval_batches(split.stream,
                                      parallel.local_batch_size(batch_size, 'eval_batch_size'),
                                      max_batches)
  needed = -(-split.num_examples // batch_size)
  return needed if max_batches is None else min(needed, max_batches)


def eval_inputs(split: Split, batch_size: int, max_batches: int | None = None,
                sharding: jax.sharding.Sharding | None = None) -> Iterator[dict[str, Any]]:
  """The inputs of each padded evaluation batch: indices and a mask, or streamed batches.

  Args:
    split: the split.
    batch_size: the global batch size.
    max_batches: stop after this many batches (Keras' validation_steps).
    sharding: where streamed batches go (batch-sharded over the mesh).
  """
  n = num_eval_batches(split, batch_size, max_batches)
  if split.stream is not None:
    from lib import streaming  # pylint: disable=g-import-not-at-top
    sharding = sharding or parallel.batch_sharding(parallel.make_mesh())
    ds = streaming.eval_dataset(split.stream,
                                parallel.local_batch_size(batch_size, 'eval_batch_size'),
                                max_batches)
    for batch in ds.as_numpy_iterator():
      yield {'batch': parallel.shard(batch, sharding)}
    return
  for b in range(n):
    idx = np.arange(b * batch_size, (b + 1) * batch_size)
    mask = idx < split.num_examples
    yield {'idx': _replicated(np.where(mask, idx, 0).astype(np.int32)), 'mask': _replicated(mask)}


def eval_batches(split: Split, batch_size: int, max_batches: int | None = None,
                 augment: Augment | None = None) -> Iterator[Example]:
  """Every example once as model inputs (preprocessed, augmented as evaluation is), padded and masked.

  Yields global arrays batch-sharded over the mesh, with a boolean 'mask' that
  is False on padding.
  """
  sharding = parallel.batch_sharding(parallel.make_mesh(), batch_size)
  data = on_devices(split) if split.stream is None else {}
  get = _eval_getter(split.preprocess, augment, sharding)
  for inputs in eval_inputs(split, batch_size, max_batches, sharding):
    yield get(data, inputs)


def eval_batch_program(split: Split, batch_size: int, augment: Augment | None = None
                      ) -> tuple[Callable[..., Example], tuple[Any, Any], Example]:
  """For lib.aot: `eval_batches`' compiled program, its arguments and its output's shapes.

  Returns:
    (the jitted function, its (data, inputs) for the first batch, the model's
    batch it returns as ShapeDtypeStructs batch-sharded over the mesh).
  """
  sharding = parallel.batch_sharding(parallel.make_mesh(), batch_size)
  get = _eval_getter(split.preprocess, augment, sharding)
  args = (on_devices(split), next(eval_inputs(split, batch_size, 1, sharding)))
  batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                       jax.eval_shape(get, *args))
  return get, args, batch


@functools.lru_cache(maxsize=None)
def _eval_getter(preprocess: Preprocess, augment: Augment | None,
                 sharding: jax.sharding.Sharding) -> Callable[..., Example]:
  """Compiled once per (preprocess, augment): every evaluation of a run reuses it."""
  return jax.jit(lambda data, inputs: model_inputs(batch_of(data, inputs, sharding), preprocess,
                                                   augment, None))


def first_examples(split: Split, n: int, augment: Augment | None = None) -> dict[str, np.ndarray]:
  """The first `n` examples as evaluation sees them, on the host (e.g. for plots)."""
  batch = next(eval_batches(split, n * jax.device_count(), 1, augment))
  batch = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), batch)
  keep = batch.pop('mask')
  return {k: v[keep][:n] for k, v in batch.items()}


# Normalization.


def check_normalization(name: str) -> None:
  if name not in NORMALIZATIONS:
    raise UserError(
        f'config.normalization={name!r} is unknown; choose one of {list(NORMALIZATIONS)}')


def normalizer(mode: str, mean: np.ndarray | None = None,
               std: np.ndarray | None = None) -> Preprocess:
  """Maps 'x' to float32: 'none' as is (0..255), 'unit' [0, 1], 'standardize' (x - mean) / std."""
  check_normalization(mode)

  def normalize(batch: Example) -> Example:
    x = batch['x'].astype(jnp.float32)
    if mode == 'unit':
      x = x / 255.0
    elif mode == 'standardize':
      x = (x - mean) / std
    return {**batch, 'x': x}

  return normalize


def chunks(images: np.ndarray, size: int = 4096) -> Iterator[np.ndarray]:
  """`images` a few thousand at a time, e.g. for `channel_stats`."""
  return (images[start:start + size] for start in range(0, len(images), size))


def channel_stats(batches: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std over batches of images (N, ..., C), summed in float64.

  Batches rather than one array, so that a streamed split needs no room for all of it.
  """
  total = total_sq = 0.0
  count = 0
  for batch in batches:
    x = np.asarray(batch).reshape(-1, batch.shape[-1]).astype(np.float64)
    total = total + x.sum(0)
    total_sq = total_sq + (x * x).sum(0)
    count += x.shape[0]
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
  return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


# TFDS image classification datasets, through the array cache.


@dataclasses.dataclass(frozen=True)
class ImageInfo:
  """What models and plots need to know of an image classification dataset."""
  num_classes: int
  class_names: list[str]
  image_shape: tuple[int | None, ...]


@dataclasses.dataclass(frozen=True)
class ImageData:
  """Splits of an image classification dataset and what models need to know of it."""
  train: Split
  val: Split
  test: Split
  num_classes: int
  class_names: list[str]
  image_shape: tuple[int | None, ...]


def _cache_dir(config: ml_collections.ConfigDict) -> str:
  """Where the arrays of `config.dataset` are cached: beside the TFDS data, in data_dir."""
  data_dir = config.data_dir or os.environ.get('TFDS_DATA_DIR') or os.path.join(
      os.path.expanduser('~'), 'tensorflow_datasets')
  return os.path.join(data_dir, 'jaxnotes_arrays', re.sub(r'[^\w.-]', '_', config.dataset))


def _split_dir(config: ml_collections.ConfigDict, split: str) -> str:
  digest = hashlib.sha256(split.encode()).hexdigest()[:8]
  name = re.sub(r'[^\w.-]', '_', split)
  return os.path.join(_cache_dir(config), f'{name}-{digest}')


def _cached_info(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  path = os.path.join(_cache_dir(config), 'info.json')
  try:
    return records.read_json(path)
  except FileNotFoundError:
    return None
  except records.DamagedRecord as e:
    logging.warning('%s; reading the dataset\'s info from TFDS and caching it again', e)
    return None


def _is_cached(config: ml_collections.ConfigDict, split: str) -> bool:
  return os.path.isfile(os.path.join(_split_dir(config, split), records.MANIFEST))


def _load_cached(config: ml_collections.ConfigDict, split: str) -> dict[str, np.ndarray] | None:
  """The cached arrays of `split`, checked against their manifest; None if absent or damaged
  (then removed, so that the split is read from TFDS and cached anew)."""
  path = _split_dir(config, split)
  try:
    return records.load_arrays(path)
  except FileNotFoundError:
    return None
  except records.DamagedRecord as e:
    logging.warning('the array cache of %s %r is damaged: %s; rebuilding it from TFDS',
                    config.dataset, split, e)
    if jax.process_index() == 0:
      shutil.rmtree(path, ignore_errors=True)
    return None


def _save_info(config: ml_collections.ConfigDict, info: dict[str, Any]) -> None:
  try:
    records.write_json(os.path.join(_cache_dir(config), 'info.json'), info)
  except OSError as e:  # A read-only data_dir: the next run reads TFDS's info again.
    logging.warning('could not cache the info of %s in %s: %s', config.dataset, _cache_dir(config),
                    e)


def _save_cached(config: ml_collections.ConfigDict, split: str, arrays: dict[str, np.ndarray],
                 info: dict[str, Any]) -> None:
  """Writes the arrays beside and renames them into place, so a crash leaves no half cache."""
  if jax.process_index() != 0:
    return
  path = _split_dir(config, split)
  tmp = f'{path}.tmp{os.getpid()}'
  try:
    os.makedirs(tmp, exist_ok=True)
    records.save_arrays(tmp, arrays)
    if _is_cached(config, split):  # Another run cached it meanwhile.
      shutil.rmtree(tmp)
    else:
      shutil.rmtree(path, ignore_errors=True)  # A cache from before manifests.
      os.replace(tmp, path)
  except OSError as e:  # A read-only data_dir: the run goes on, the next one reads TFDS again.
    logging.warning('could not cache the arrays of %s in %s: %s', config.dataset, path, e)
    return
  _save_info(config, info)


def _split_fields(config: ml_collections.ConfigDict) -> dict[str, str]:
  fields = {
      'train_split': config.train_split, 'eval_split': config.eval_split,
      'test_split': config.test_split
  }
  return {f: s for f, s in fields.items() if s}


def image_info(config: ml_collections.ConfigDict) -> ImageInfo:
  """The dataset's classes and image shape, after the checks that need no data.

  Read from the array cache where every split of the config is cached (no
  TensorFlow then), else from TFDS.

  Raises:
    UserError: unknown dataset, no 'image'/'label' features, unknown normalization, or
      a dataset that is not prepared and cannot be built offline as the config says.
  """
  check_normalization(config.normalization)
  info = _cached_info(config)
  if info is None or not all(_is_cached(config, s) for s in _split_fields(config).values()):
    from lib import tfds_builders  # pylint: disable=g-import-not-at-top
    builder = tfds_builders.builder(config)
    tfds_builders.check_image_classification(builder)
    tfds_builders.check(builder, config)
    info = tfds_builders.image_info(builder)
    if jax.process_index() == 0 and all(
        _is_cached(config, s) for s in _split_fields(config).values()):
      _save_info(config, info)  # The splits are cached, their info was lost.
  return ImageInfo(info['num_classes'], info['class_names'], tuple(info['image_shape']))


def image_classification(config: ml_collections.ConfigDict, streamed_x: Callable[[Any], Any] |
                         None = None, info: ImageInfo | None = None) -> ImageData:
  """Train, validation and test splits of a TFDS image classification dataset.

  Splits that fit config.device_data_mb go on the devices, read from the
  array cache (built from TFDS on first use); others stream through tf.data.
  Images stay as stored; the splits' `preprocess` normalizes them in the step
  as `config.normalization` says (with the training split's statistics for
  'standardize'). Labels are int32 'y'.

  Args:
    config: the run's config (dataset fields, normalization, device_data_mb).
    streamed_x: a TensorFlow function that maps each decoded image to the 'x'
      that is streamed instead (e.g. resized, still uint8); its splits stream.
    info: `image_info(config)`, where the caller has read it already.

  Returns:
    The ImageData.
  """
  info = info or image_info(config)
  if parallel.is_target():  # --compile_for: the splits' shapes, not their examples.
    return _shapes_only(config, info, streamed_x)
  fields = _split_fields(config)
  splits = {s: f for f, s in fields.items()}  # Each split once, named by a field that asks for it.
  arrays = {s: _load_cached(config, s) for s in splits} if streamed_x is None else {}
  if streamed_x is None and all(a is not None for a in arrays.values()):
    return _on_devices(config, info, {f: arrays[s] for f, s in fields.items()})

  from lib import streaming, tfds_builders  # pylint: disable=g-import-not-at-top
  builder = tfds_builders.builder(config)
  tfds_builders.build(builder, config)
  if streamed_x is None and _fit_devices(config, builder):
    full_info = tfds_builders.image_info(builder)
    for split, field in splits.items():
      if arrays[split] is None:
        arrays[split] = streaming.read_split(builder, split, field)
        if builder.is_prepared():  # Not a mocked dataset.
          _save_cached(config, split, arrays[split], full_info)
    return _on_devices(config, info, {f: arrays[s] for f, s in fields.items()})
  return _streamed(config, info, builder, streamed_x)


def _fit_devices(config: ml_collections.ConfigDict, builder: Any) -> bool:
  """Whether every split of the config fits config.device_data_mb (0: none goes on the devices)."""
  from lib import streaming  # pylint: disable=g-import-not-at-top
  budget = config.device_data_mb * 2**20
  sizes = [streaming.split_bytes(builder, s, f) for f, s in _split_fields(config).items()]
  return budget > 0 and all(n is not None and n <= budget for n in sizes)


def _shapes_only(config: ml_collections.ConfigDict, info: ImageInfo,
                 streamed_x: Callable[[Any], Any] | None) -> ImageData:
  """The splits as ShapeDtypeStructs of their sizes, for lib.aot: no example is read.

  The dataset is built first where it is not yet (as a run's first use does);
  then only TFDS's metadata is read.
  """
  from lib import tfds_builders  # pylint: disable=g-import-not-at-top
  builder = tfds_builders.builder(config)
  tfds_builders.build(builder, config)
  if streamed_x is not None or not _fit_devices(config, builder):
    raise UserError('--compile_for builds runs whose splits live on the devices; this one '
                    'streams them through tf.data (config.device_data_mb='
                    f'{config.device_data_mb}, or images of several sizes), which it does not '
                    'compile yet')
  dtype = tfds_builders.image_info(builder)['image_dtype']
  arrays = {}
  for field, split in _split_fields(config).items():
    n = builder.info.splits[split].num_examples
    arrays[field] = {
        'x': jax.ShapeDtypeStruct((n, *info.image_shape), dtype), 'y': jax.ShapeDtypeStruct(
            (n,), np.int32)
    }
  return _on_devices(config, info, arrays)


def _on_devices(config: ml_collections.ConfigDict, info: ImageInfo,
                arrays: dict[str, dict[str, np.ndarray]]) -> ImageData:
  mean = std = None
  if config.normalization == 'standardize' and parallel.is_target():
    mean = std = np.ones(info.image_shape[-1], np.float32)  # Constants in the program: any do.
  elif config.normalization == 'standardize':
    mean, std = channel_stats(chunks(arrays['train_split']['x']))
  preprocess = normalizer(config.normalization, mean, std)
  train = from_arrays(arrays['train_split'], config.data_shards, preprocess)
  val = from_arrays(arrays['eval_split'], preprocess=preprocess)
  test = (val if config.test_split == config.eval_split else from_arrays(
      arrays['test_split'], preprocess=preprocess))
  return ImageData(train, val, test, info.num_classes, info.class_names, info.image_shape)


def _streamed(config: ml_collections.ConfigDict, info: ImageInfo, builder: Any,
              streamed_x: Callable[[Any], Any] | None) -> ImageData:
  from lib import streaming  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  mean = std = None
  if config.normalization == 'standardize':
    # The whole training split on every process, so all normalize alike.
    images = builder.as_dataset(split=config.train_split).map(lambda ex: ex['image'])
    mean, std = channel_stats(images.batch(4096).as_numpy_iterator())
  preprocess = normalizer(config.normalization, mean, std)
  keep = streamed_x or (lambda image: image)

  def raw(ex):
    return {'x': keep(ex['image']), 'y': tf.cast(ex['label'], tf.int32)}

  train = from_stream(
      streaming.tfds_split(builder, config.train_split, 'train_split', raw,
                           num_shards=config.data_shards), preprocess)
  val = from_stream(streaming.tfds_split(builder, config.eval_split, 'eval_split', raw), preprocess)
  test = (val if config.test_split == config.eval_split else from_stream(
      streaming.tfds_split(builder, config.test_split, 'test_split', raw), preprocess))
  return ImageData(train, val, test, info.num_classes, info.class_names, info.image_shape)


def by_shape(split: Split, shapes: Sequence[tuple[int, ...]]) -> Split:
  """A streamed split with a bucket per shape of 'x' in `shapes` (lib.streaming.by_shape)."""
  from lib import streaming  # pylint: disable=g-import-not-at-top
  return from_stream(streaming.by_shape(split.stream, shapes), split.preprocess)
