"""TFDS image classification datasets through the array cache: info, splits on the devices or streamed, normalization."""
from collections.abc import Callable, Iterable, Iterator, Sequence
import dataclasses
import hashlib
import os
import re
import shutil
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lib import parallel
from lib import records
from lib.errors import UserError
from lib.input_pipeline.arrays import from_arrays
from lib.input_pipeline.splits import Example, NORMALIZATIONS, Preprocess, Source, identity

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
  train: Source
  val: Source
  test: Source
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
  cached = all(_is_cached(config, s) for s in _split_fields(config).values())
  if info is None or not cached:
    from lib.input_pipeline import tfds_builders  # pylint: disable=g-import-not-at-top
    builder = tfds_builders.builder(config)
    tfds_builders.check_image_classification(builder)
    tfds_builders.check(builder, config)
    info = tfds_builders.image_info(builder)
    if jax.process_index() == 0 and cached:
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

  from lib.input_pipeline import streaming, tfds_builders  # pylint: disable=g-import-not-at-top
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
  from lib.input_pipeline import streaming  # pylint: disable=g-import-not-at-top
  budget = config.device_data_mb * 2**20
  sizes = [streaming.split_bytes(builder, s, f) for f, s in _split_fields(config).items()]
  return budget > 0 and all(n is not None and n <= budget for n in sizes)


def _shapes_only(config: ml_collections.ConfigDict, info: ImageInfo,
                 streamed_x: Callable[[Any], Any] | None) -> ImageData:
  """The splits as ShapeDtypeStructs of their sizes, for lib.aot: no example is read.

  The dataset is built first where it is not yet (as a run's first use does);
  then only TFDS's metadata is read.
  """
  from lib.input_pipeline import tfds_builders  # pylint: disable=g-import-not-at-top
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


def _preprocess(config: ml_collections.ConfigDict, info: ImageInfo,
                train_images: Callable[[], Iterable[np.ndarray]]) -> Preprocess:
  """The splits' normalization; 'standardize' takes the statistics of `train_images()`."""
  if config.normalization != 'standardize':
    return normalizer(config.normalization)
  if parallel.is_target():  # Constants in the program: any do.
    return normalizer('standardize', *[np.ones(info.image_shape[-1], np.float32)] * 2)
  return normalizer('standardize', *channel_stats(train_images()))


def _on_devices(config: ml_collections.ConfigDict, info: ImageInfo,
                arrays: dict[str, dict[str, np.ndarray]]) -> ImageData:
  preprocess = _preprocess(config, info, lambda: chunks(arrays['train_split']['x']))
  train = from_arrays(arrays['train_split'], config.data_shards, preprocess)
  val = from_arrays(arrays['eval_split'], preprocess=preprocess)
  test = (val if config.test_split == config.eval_split else from_arrays(
      arrays['test_split'], preprocess=preprocess))
  return ImageData(train, val, test, info.num_classes, info.class_names, info.image_shape)


def _streamed(config: ml_collections.ConfigDict, info: ImageInfo, builder: Any,
              streamed_x: Callable[[Any], Any] | None) -> ImageData:
  from lib.input_pipeline import streaming  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # The whole training split on every process, so all normalize alike.
  preprocess = _preprocess(
      config, info, lambda: builder.as_dataset(split=config.train_split).map(lambda ex: ex['image'])
      .batch(4096).as_numpy_iterator())
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


def from_stream(stream: Any, preprocess: Preprocess = identity) -> Source:
  """A Source of a streaming.StreamSplit (stream_source.StreamSource; imports TensorFlow)."""
  from lib.input_pipeline import stream_source  # pylint: disable=g-import-not-at-top
  return stream_source.StreamSource(stream, preprocess)


def by_shape(split: Source, shapes: Sequence[tuple[int, ...]]) -> Source:
  """A streamed split with a bucket per shape of 'x' in `shapes` (streaming.by_shape).

  Raises:
    ValueError: a split on the devices, whose examples have one shape.
  """
  from lib.input_pipeline import stream_source  # pylint: disable=g-import-not-at-top
  if not isinstance(split, stream_source.StreamSource):
    raise ValueError('by_shape buckets a streamed split; arrays have one shape')
  return stream_source.by_shape(split, shapes)
