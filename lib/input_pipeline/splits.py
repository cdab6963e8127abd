"""Splits and what the step makes of them: stored examples to model inputs, augmentation, evaluation batches."""
from collections.abc import Callable, Iterator, Sequence
import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.random import threefry2x32_p
import numpy as np

from lib import parallel

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
BOOKKEEPING = ('mask', 'index')


def identity(batch: Example) -> Example:
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
    stream: the streamed split (streaming.StreamSplit), or None.
    num_shards: the data shards of a training split on the devices
      (config.data_shards resolved); a streamed split's shards are its stream's.
  """
  num_examples: int
  spec: dict[str, jax.ShapeDtypeStruct]
  preprocess: Preprocess = identity
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


def spec_of(arrays: dict[str, np.ndarray]) -> dict[str, jax.ShapeDtypeStruct]:
  return {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in arrays.items()}


def from_arrays(arrays: dict[str, np.ndarray], num_shards: int | None = None,
                preprocess: Preprocess = identity) -> Split:
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
  return Split(sizes.pop(), spec_of(arrays), preprocess, arrays=arrays, num_shards=shards)


def from_stream(stream: Any, preprocess: Preprocess = identity) -> Split:
  """A Split that streams through tf.data: a streaming.StreamSplit."""
  from lib.input_pipeline import streaming  # pylint: disable=g-import-not-at-top
  spec = {
      k: jax.ShapeDtypeStruct(s.shape, s.dtype.as_numpy_dtype)
      for k, s in streaming.element_spec(stream).items()
  }
  return Split(stream.num_examples, spec, preprocess, stream=stream)


def replicated(x: np.ndarray | jax.ShapeDtypeStruct) -> jax.Array | jax.ShapeDtypeStruct:
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
    split._placed.update({k: replicated(v) for k, v in split.arrays.items()})  # pylint: disable=protected-access
  return split._placed  # pylint: disable=protected-access


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
  kept = {k: batch[k] for k in BOOKKEEPING if k in batch}
  examples = preprocess({k: v for k, v in batch.items() if k not in BOOKKEEPING})
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
      if k not in BOOKKEEPING
  }
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  out = jax.eval_shape(lambda b, k: model_inputs(b, split.preprocess, augment, k), batch, key)
  return {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in out.items()}


# Evaluation.


def num_eval_batches(split: Split, batch_size: int, max_batches: int | None = None) -> int:
  """Batches of `batch_size` (global) that cover every example (at most `max_batches`)."""
  if split.stream is not None:
    from lib.input_pipeline import streaming  # pylint: disable=g-import-not-at-top
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
    from lib.input_pipeline import streaming  # pylint: disable=g-import-not-at-top
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
    yield {'idx': replicated(np.where(mask, idx, 0).astype(np.int32)), 'mask': replicated(mask)}


def eval_batches(split: Split, batch_size: int, max_batches: int | None = None,
                 augment: Augment | None = None) -> Iterator[Example]:
  """Every example once as model inputs (preprocessed, augmented as evaluation is), padded and masked.

  Yields global arrays batch-sharded over the mesh, with a boolean 'mask' that
  is False on padding.
  """
  sharding = parallel.batch_sharding(parallel.make_mesh(), batch_size)
  data = on_devices(split) if split.stream is None else {}
  get = eval_getter(split.preprocess, augment, sharding)
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
  get = eval_getter(split.preprocess, augment, sharding)
  args = (on_devices(split), next(eval_inputs(split, batch_size, 1, sharding)))
  batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                       jax.eval_shape(get, *args))
  return get, args, batch


@functools.lru_cache(maxsize=None)
def eval_getter(preprocess: Preprocess, augment: Augment | None,
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
