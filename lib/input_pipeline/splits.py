"""The Source interface, and what the step makes of a batch: stored examples to model inputs, augmentation, evaluation batches."""
from collections.abc import Callable, Iterator, Sequence
import abc
import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.random import threefry2x32_p
import numpy as np

from lib import parallel
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


class Source(abc.ABC):
  """One split of examples, as stored, with what turns them into model inputs.

  Two implementations: `ArraySource` (lib/input_pipeline/arrays.py), the whole
  split on every device, each batch gathered there by index; and
  `StreamSource` (stream_source.py), a tf.data stream whose batches are sent to
  the devices call by call. The loop, the evaluators and lib.aot use only what
  is here, so none of them asks which one it has.

  Both draw the data order of a training shard in a pass from
  `order_entropy(seed, shard, pass)` and check shards against the batch with
  `shard_batch`. They differ where a stream cannot gather by index: arrays are
  permuted whole (numpy), a stream is shuffled through a buffer (tf.data), so
  one seed gives each source its own order. Each order is a function of (seed,
  shard, pass) alone: a resumed run, or one on another number of processes
  with the same shards, sees the same global batches.

  Attributes:
    num_examples: examples in the whole split.
    spec: one stored example's entries (shape without the batch axis, dtype).
    preprocess: stored examples to model inputs, on a batch in JAX.
    buckets: a split of several shapes: one Source per shape (`by_shape`); else ().
    where: where the examples live, for the run's log.
  """
  num_examples: int
  spec: dict[str, jax.ShapeDtypeStruct]
  preprocess: Preprocess
  buckets: tuple['Source', ...] = ()
  where: str = ''

  @abc.abstractmethod
  def device_data(self) -> dict[str, jax.Array]:
    """What the compiled programs gather batches from ({} where batches come whole)."""

  @abc.abstractmethod
  def train_feed(self, batch_size: int, *, seed: int, shuffle_buffer: int, start_step: int = 0,
                 stack: int = 0, seeds: Sequence[int] | None = None,
                 shuffle: bool = True) -> 'Feed':
    """What the train step reads, call after call, from `start_step` on.

    Args:
      batch_size: the global batch size.
      seed: the run's seed.
      shuffle_buffer: a stream's examples in each shard's shuffle buffer.
      start_step: steps already trained.
      stack: if positive, each call runs this many steps (config.steps_per_execution).
      seeds: a population's (lib.train.population): member k draws the order
        of seeds[k], and each step's indices get a member axis.
      shuffle: permute each shard anew each pass; False reads every pass in the
        stored order.
    """

  @abc.abstractmethod
  def num_eval_batches(self, batch_size: int, max_batches: int | None = None) -> int:
    """Batches of `batch_size` (global) that cover every example (at most `max_batches`)."""

  @abc.abstractmethod
  def eval_inputs(self, batch_size: int, max_batches: int | None,
                  sharding: jax.sharding.Sharding) -> Iterator[dict[str, Any]]:
    """The inputs of each padded evaluation batch, for `batch_of`."""

  def require_on_devices(self, needs: str) -> None:
    """Raises UserError unless the split is kept whole on the devices, as `needs` requires."""


class Feed(abc.ABC):
  """What the train step reads, call after call (`Source.train_feed`).

  Attributes:
    data: what the programs gather from (the source's `device_data`).
  """
  data: dict[str, jax.Array]

  @abc.abstractmethod
  def next(self, count: int, sharding: jax.sharding.Sharding) -> dict[str, Any]:
    """The inputs of the next `count` steps, for `batch_of`."""


def order_entropy(seed: int, shard: int, pass_index: int, bucket: int = 0) -> list[int]:
  """The seed of one training shard's order in one pass (and bucket), for numpy's SeedSequence.

  Both sources draw their data order from it, so that the order is a function
  of (seed, shard, pass) alone.
  """
  return [seed % 2**32, shard, pass_index] + ([bucket] if bucket else [])


def shard_batch(batch_size: int, shards: int, smallest_shard: int) -> int:
  """Each shard's share of a batch, checked: the shards split the batch evenly and fill it.

  Raises:
    UserError: they do not.
  """
  if batch_size % shards:
    raise UserError(f'the training split has {shards} data shards here, which cannot split a '
                    f'batch of {batch_size} evenly; make config.batch_size a multiple of '
                    'config.data_shards')
  if smallest_shard < batch_size // shards:
    raise UserError(f'a shard of the training split has {smallest_shard} examples, fewer than '
                    f'its share {batch_size // shards} of a batch; lower config.batch_size (or '
                    'config.data_shards)')
  return batch_size // shards


def batches_to_cover(examples: int, batch_size: int, max_batches: int | None) -> int:
  """Batches of `batch_size` that cover `examples`, at most `max_batches` (Keras' validation_steps)."""
  needed = -(-examples // batch_size)
  return needed if max_batches is None else min(needed, max_batches)


def spec_of(arrays: dict[str, Any]) -> dict[str, jax.ShapeDtypeStruct]:
  return {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in arrays.items()}


def replicated(x: np.ndarray | jax.ShapeDtypeStruct) -> jax.Array | jax.ShapeDtypeStruct:
  """A host array, the same on every process, as one global array on every device.

  Building for a target that is not here (lib.parallel.target), its shape and
  dtype there instead: nothing is transferred.
  """
  sharding = parallel.replicated(parallel.make_mesh())
  if parallel.is_target() or isinstance(x, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])


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


def model_spec(split: Source, augment: Augment | None) -> dict[str, jax.ShapeDtypeStruct]:
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


def eval_batches(split: Source, batch_size: int, max_batches: int | None = None,
                 augment: Augment | None = None) -> Iterator[Example]:
  """Every example once as model inputs (preprocessed, augmented as evaluation is), padded and masked.

  Yields global arrays batch-sharded over the mesh, with a boolean 'mask' that
  is False on padding.
  """
  sharding = parallel.batch_sharding(parallel.make_mesh(), batch_size)
  data = split.device_data()
  get = eval_getter(split.preprocess, augment, sharding)
  for inputs in split.eval_inputs(batch_size, max_batches, sharding):
    yield get(data, inputs)


def eval_batch_program(split: Source, batch_size: int, augment: Augment | None = None
                      ) -> tuple[Callable[..., Example], tuple[Any, Any], Example]:
  """For lib.aot: `eval_batches`' compiled program, its arguments and its output's shapes.

  Returns:
    (the jitted function, its (data, inputs) for the first batch, the model's
    batch it returns as ShapeDtypeStructs batch-sharded over the mesh).
  """
  sharding = parallel.batch_sharding(parallel.make_mesh(), batch_size)
  get = eval_getter(split.preprocess, augment, sharding)
  args = (split.device_data(), next(split.eval_inputs(batch_size, 1, sharding)))
  batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                       jax.eval_shape(get, *args))
  return get, args, batch


@functools.lru_cache(maxsize=None)
def eval_getter(preprocess: Preprocess, augment: Augment | None,
                sharding: jax.sharding.Sharding) -> Callable[..., Example]:
  """Compiled once per (preprocess, augment): every evaluation of a run reuses it."""
  return jax.jit(lambda data, inputs: model_inputs(batch_of(data, inputs, sharding), preprocess,
                                                   augment, None))


def first_examples(split: Source, n: int, augment: Augment | None = None) -> dict[str, np.ndarray]:
  """The first `n` examples as evaluation sees them, on the host (e.g. for plots)."""
  batch = next(eval_batches(split, n * jax.device_count(), 1, augment))
  batch = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), batch)
  keep = batch.pop('mask')
  return {k: v[keep][:n] for k, v in batch.items()}
