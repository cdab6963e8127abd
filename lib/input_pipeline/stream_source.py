"""The streamed source: a tf.data stream (streaming.StreamSplit) behind the Source interface."""
from collections.abc import Iterator, Sequence
from typing import Any

import jax

from lib import parallel
from lib.errors import UserError
from lib.input_pipeline import streaming
from lib.input_pipeline.splits import Feed, Preprocess, Source, identity


class StreamSource(Source):
  """A split that streams through tf.data: each process reads its share, batches go to the
  devices call by call.

  Args:
    stream: the streamed split.
    preprocess: stored examples to model inputs, in JAX.
  """
  where = 'streamed through tf.data'

  def __init__(self, stream: streaming.StreamSplit, preprocess: Preprocess = identity):
    self.stream, self.preprocess = stream, preprocess
    self.num_examples = stream.num_examples
    self.spec = {
        k: jax.ShapeDtypeStruct(s.shape, s.dtype.as_numpy_dtype)
        for k, s in streaming.element_spec(stream).items()
    }
    self.buckets = tuple(StreamSource(b, preprocess) for b in stream.buckets)

  def device_data(self) -> dict[str, jax.Array]:
    return {}  # Batches come whole.

  def require_on_devices(self, needs: str) -> None:
    raise UserError(f'{needs} needs a split kept on the devices; this one streams through '
                    'tf.data (over config.device_data_mb, or of several shapes)')

  def train_feed(self, batch_size: int, *, seed: int, shuffle_buffer: int, start_step: int = 0,
                 stack: int = 0, seeds: Sequence[int] | None = None,
                 shuffle: bool = True) -> 'StreamFeed':
    if seeds:
      self.require_on_devices(f'a population of {len(seeds)} models')
    if not shuffle:
      self.require_on_devices('config.shuffle=False')
    return StreamFeed(self, parallel.local_batch_size(batch_size), seed, shuffle_buffer, start_step,
                      stack)

  def num_eval_batches(self, batch_size: int, max_batches: int | None = None) -> int:
    return streaming.num_eval_batches(self.stream,
                                      parallel.local_batch_size(batch_size, 'eval_batch_size'),
                                      max_batches)

  def eval_inputs(self, batch_size: int, max_batches: int | None,
                  sharding: jax.sharding.Sharding) -> Iterator[dict[str, Any]]:
    """Each process's padded batches (streaming.eval_dataset), as global arrays."""
    ds = streaming.eval_dataset(self.stream, parallel.local_batch_size(
        batch_size, 'eval_batch_size'), max_batches)
    for batch in ds.as_numpy_iterator():
      yield {'batch': parallel.shard(batch, sharding)}


class StreamFeed(Feed):
  """Batches from streaming.train_batches, built on the first call (so from the resumed step)."""
  data: dict[str, jax.Array] = {}

  def __init__(self, source: StreamSource, local_batch: int, seed: int, shuffle_buffer: int,
               start_step: int, stack: int):
    self._source, self._step = source, start_step
    self._args = dict(batch_size=local_batch, seed=seed, shuffle_buffer=shuffle_buffer, stack=stack)
    self._batches = None

  def next(self, count: int, sharding: jax.sharding.Sharding) -> dict[str, Any]:
    """{'batch': the batch, or `count` batches stacked}, sharded over the devices."""
    if self._batches is None:
      self._batches = streaming.train_batches(self._source.stream, start_step=self._step,
                                              **self._args)
    self._step += count
    return {'batch': parallel.shard(next(self._batches), sharding)}


def by_shape(source: StreamSource, shapes: Any) -> StreamSource:
  """A streamed split with a bucket per shape of 'x' in `shapes` (streaming.by_shape)."""
  return StreamSource(streaming.by_shape(source.stream, shapes), source.preprocess)
