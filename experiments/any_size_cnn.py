"""CNNs that take any image size (the notes): no Flatten, a 1x1 conv and a global pool instead.

A Flatten + Dense head fixes the number of features, hence the image size the
network was built for. Replacing it with a 1x1 convolution to the classes
(a Dense layer applied at every position) and a global max-pool gives one set
of weights that classifies images of any height and width. Trained on digits
rescaled and placed on canvases of a few sizes, it is tested on canvases of
sizes it never saw. jit compiles once per input shape, so training draws the
canvas side from a few buckets, one per batch; results.json reports the
compilations.

With config.bucket_sides (configs/any_size_cnn.py:cats_vs_dogs) the same
network trains on photos at (near) their own sizes instead: each side of an
image snaps to the nearest bucket side, every batch holds one bucket shape
(lib.input_pipeline.by_shape), and the test reports accuracy per shape.
"""
from collections.abc import Callable
import dataclasses
import os
import time
from typing import Any

import flax.linen as nn

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from lib import input_pipeline
from lib import models
from lib import parallel
from lib import plots
from lib import tasks
from lib import train
from lib import workdir as workdir_lib
from lib.errors import UserError


def _check_native(config: ml_collections.ConfigDict) -> None:
  sides = config.bucket_sides
  if any(not isinstance(v, int) or v < 8 for v in sides) or list(sides) != sorted(set(sides)):
    raise UserError(f'config.bucket_sides={sides} must be increasing image sides of at least 8')
  if not sides[0] <= config.max_side:
    raise UserError(f'config.max_side={config.max_side} must be at least the smallest of '
                    f'config.bucket_sides={sides}')
  if config.normalization not in ('none', 'unit'):
    raise UserError(f'config.normalization={config.normalization!r}: images of several sizes '
                    "take 'none' or 'unit'")


def _check(config: ml_collections.ConfigDict, shape: tuple[int, ...]) -> None:
  if config.bucket_sides:
    _check_native(config)
    return
  if config.normalization != 'unit':
    raise UserError(f"config.normalization={config.normalization!r}: any_size_cnn needs 'unit', "
                    'so that the blank canvas (0) matches the digits\' background')
  side = shape[0]
  if not side <= config.max_digit <= max(config.train_sizes):
    raise UserError(f'config.max_digit={config.max_digit} must lie between the image side '
                    f'{side} and the largest of config.train_sizes={config.train_sizes}')
  for field in ('train_sizes', 'eval_sizes'):
    if not config[field] or min(config[field]) < side:
      raise UserError(f'config.{field}={config[field]} must be non-empty canvas sides of at '
                      f'least the image side {side}')


def _place(image: tf.Tensor, canvas: tf.Tensor, digit: tf.Tensor,
           corner: tf.Tensor) -> tf.Tensor:
  """`image` resized to digit x digit, on a blank canvas x canvas, its top-left at `corner`."""
  small = tf.image.resize(image, tf.stack([digit, digit]), antialias=True)
  room = canvas - digit
  return tf.pad(small, [[corner[0], room - corner[0]], [corner[1], room - corner[1]], [0, 0]])


def _random_placement(seed: tf.Tensor, side: int, canvas: tf.Tensor,
                      max_digit: int) -> tuple[tf.Tensor, tf.Tensor]:
  """A digit side in [side, min(canvas, max_digit)] and a top-left corner that fits it."""
  seeds = tf.random.experimental.stateless_split(seed, 2)
  digit = tf.random.stateless_uniform([], seeds[0], side, tf.minimum(canvas, max_digit) + 1,
                                      tf.int32)
  corner = tf.random.stateless_uniform([2], seeds[1], 0, 2**30, tf.int32) % (canvas - digit + 1)
  return digit, corner


def canvas_at(size: int, max_digit: int) -> input_pipeline.Augment:
  """Each image rescaled and placed at random on a size x size canvas (evaluation)."""
  def augment(example, seed):
    image = example['x']
    digit, corner = _random_placement(seed, image.shape[0], tf.constant(size), max_digit)
    placed = _place(image, tf.constant(size), digit, corner)
    return {**example, 'x': tf.ensure_shape(placed, (size, size, image.shape[-1]))}
  return augment


def canvas_batches(sizes: tuple[int, ...], max_digit: int, seed: int) -> input_pipeline.BatchAugment:
  """Training batches on canvases: the side from the step (the same on every process), the
  digits' sizes and places from the step and the process."""
  sizes_t = tf.constant(sizes, tf.int32)
  process = jax.process_index()

  def batch_augment(batch, step):
    pick = tf.random.stateless_uniform([], tf.stack([tf.constant(seed, tf.int64), step]),
                                       0, len(sizes), tf.int32)
    canvas = sizes_t[pick]
    images = batch['x']
    seeds = tf.random.experimental.stateless_split(
        tf.stack([step, tf.constant(process + 1, tf.int64)]), images.shape[0])

    def one(args):
      image, example_seed = args
      digit, corner = _random_placement(example_seed, images.shape[1], canvas, max_digit)
      return _place(image, canvas, digit, corner)

    placed = tf.map_fn(one, (images, seeds),
                       fn_output_signature=tf.TensorSpec([None, None, images.shape[-1]],
                                                         tf.float32))
    return {**batch, 'x': placed}

  return batch_augment


def snap_to_buckets(sides: tuple[int, ...], max_side: int) -> Callable[[tf.Tensor], tf.Tensor]:
  """Resizes a uint8 image to its bucket shape: few shapes, so few compilations.

  An image larger than `max_side` first shrinks, aspect ratio kept, until its
  longer side is `max_side`; then each side goes to the nearest of `sides`.
  The result stays uint8, so the cache takes a quarter of float32's memory.

  Args:
    sides: the bucket sides, increasing.
    max_side: the longest side an image keeps.

  Returns:
    image (H, W, C) uint8 -> image (h, w, C) uint8 with h, w in `sides`.
  """
  sides_t = tf.constant(sides, tf.float32)

  def snap(image):
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    size *= tf.minimum(1.0, max_side / tf.reduce_max(size))
    nearest = tf.gather(sides_t, tf.argmin(tf.abs(size[:, None] - sides_t[None, :]), axis=1))
    resized = tf.image.resize(image, tf.cast(nearest, tf.int32), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

  return snap


def _native_size_data(config: ml_collections.ConfigDict,
                      builder: tfds.core.DatasetBuilder) -> input_pipeline.ImageData:
  """The splits with a bucket per (height, width) of config.bucket_sides; 'x' cached as uint8."""
  data = input_pipeline.image_classification(
      config, builder, to_cache=snap_to_buckets(tuple(config.bucket_sides), config.max_side))
  channels = builder.info.features['image'].shape[-1]
  shapes = [(h, w, channels) for h in config.bucket_sides for w in config.bucket_sides]
  val = input_pipeline.by_shape(data.val, shapes)
  return dataclasses.replace(
      data, train=input_pipeline.by_shape(data.train, shapes), val=val,
      test=val if data.test is data.val else input_pipeline.by_shape(data.test, shapes))


def _normalize_after_cache(mode: str) -> input_pipeline.Augment:
  normalize = input_pipeline.normalizer(mode)
  return lambda example, seed: {**example, 'x': normalize(example['x'])}


def _shape_name(bucket: input_pipeline.Split) -> str:
  return 'x'.join(map(str, bucket.ds.element_spec['x'].shape[:2]))


def _test_accuracies(config: ml_collections.ConfigDict, state: train.TrainState,
                     tests: dict[Any, tuple[input_pipeline.Split, input_pipeline.Augment]]
                     ) -> tuple[dict[Any, float], int]:
  """Accuracy of `state` on each (split, augment) of `tests`, and the eval step's compilations."""
  mesh = parallel.make_mesh()
  _, eval_step = train.jit_steps(tasks.classification, ['accuracy', 'loss'], mesh)
  eval_batch = parallel.local_batch_size(config.eval_batch_size, 'eval_batch_size')
  accuracy = {}
  for name, (split, augment) in tests.items():
    batches = train.EvalBatches(split, eval_batch, parallel.batch_sharding(mesh), augment=augment,
                                max_bytes=0)
    accuracy[name] = train.evaluate(eval_step, state, batches, prefix='')['accuracy']
  return accuracy, eval_step._cache_size()  # pylint: disable=protected-access


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the fully convolutional CNN on canvases; tests it at every size of config.eval_sizes.

  Args:
    config: configs/any_size_cnn.py.
    workdir: the run's directory.

  Returns:
    The results written to results.json.
  """
  start = time.time()
  workdir = workdir_lib.prepare(workdir)
  train.check_config(config)
  builder = input_pipeline.image_builder(config)  # Checked before any work.
  shape = tuple(builder.info.features['image'].shape)
  _check(config, shape)
  num_classes = builder.info.features['label'].num_classes
  model = models.create(config.model, outputs=num_classes, **config.model_kwargs)
  if config.bucket_sides:
    return _train_at_native_sizes(config, workdir, model, builder, start)
  data = input_pipeline.image_classification(config, builder)
  state, summary = train.fit(
      config, workdir, model=model, task=tasks.classification, train=data.train, val=data.val,
      test=data.test, batch_augment=canvas_batches(config.train_sizes, config.max_digit,
                                                   config.seed))

  by_size, eval_compiles = _test_accuracies(
      config, state, {size: (data.test, canvas_at(size, config.max_digit))
                      for size in config.eval_sizes})

  # The notes' contrast: the Flatten + Dense CNN, built for 28x28, refuses other sizes.
  flatten_cnn = models.create('cnn', outputs=num_classes)
  variables = flatten_cnn.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
  try:
    flatten_cnn.apply(variables, jnp.zeros((1, shape[0] + 12, shape[1] + 12, shape[2])))
    refusal = None
  except UserError as e:
    refusal = str(e)
  results = {
      **summary,
      'test_accuracy_by_size': {str(s): a for s, a in by_size.items()},
      'eval_step_compiles': eval_compiles,
      'flatten_cnn_error': refusal,
  }
  if jax.process_index() == 0:
    plot_dir = os.path.join(workdir, 'plots')
    plots.training_curves(summary['history'], os.path.join(plot_dir, 'curves.png'))
    sizes = list(config.eval_sizes)
    plots.lines(sizes, {'test accuracy': [by_size[s] for s in sizes]},
                os.path.join(plot_dir, 'accuracy_by_size.png'), xlabel='canvas side (pixels)',
                ylabel='test accuracy', title=f'one set of weights, trained on canvases of '
                f'{", ".join(map(str, config.train_sizes))}')
    examples = next(input_pipeline.eval_batches(data.test, 4, max_batches=1,
                                                augment=canvas_at(max(sizes), config.max_digit)))
    plots.image_grid(examples['x'], 1, os.path.join(plot_dir, 'canvas_examples.png'),
                     f'test digits on {max(sizes)}x{max(sizes)} canvases')
  workdir_lib.write_results(workdir, results, config, start)
  return results


def _train_at_native_sizes(config: ml_collections.ConfigDict, workdir: str, model: nn.Module,
                           builder: tfds.core.DatasetBuilder, start: float) -> dict[str, Any]:
  """Trains on bucketed native-size images; tests the weights on each bucket shape."""
  data = _native_size_data(config, builder)
  normalize = _normalize_after_cache(config.normalization)
  state, summary = train.fit(config, workdir, model=model, task=tasks.classification,
                             train=data.train, val=data.val, test=data.test, augment=normalize)
  accuracy, eval_compiles = _test_accuracies(
      config, state, {_shape_name(b): (b, normalize) for b in data.test.buckets})
  by_shape = {_shape_name(b): {'accuracy': accuracy[_shape_name(b)], 'examples': b.num_examples}
              for b in data.test.buckets}
  results = {
      **summary,
      'test_accuracy_by_shape': by_shape,
      'train_examples_by_shape': {_shape_name(b): b.num_examples for b in data.train.buckets},
      'eval_step_compiles': eval_compiles,
  }
  if jax.process_index() == 0:
    plot_dir = os.path.join(workdir, 'plots')
    plots.training_curves(summary['history'], os.path.join(plot_dir, 'curves.png'))
    sides = [str(v) for v in config.bucket_sides]
    grid = np.full((len(sides), len(sides)), np.nan)
    for shape, entry in by_shape.items():
      height, width = shape.split('x')
      grid[sides.index(height), sides.index(width)] = entry['accuracy']
    plots.heatmaps({'test accuracy': grid}, sides, sides,
                   os.path.join(plot_dir, 'accuracy_by_shape.png'), xlabel='width (pixels)',
                   ylabel='height (pixels)', title=f'{config.dataset}: one set of weights '
                   '(NaN: no test image of that shape)')
  workdir_lib.write_results(workdir, results, config, start)
  return results
