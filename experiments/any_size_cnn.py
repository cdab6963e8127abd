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
from typing import Any

import flax.linen as nn

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lib import aot
from lib import input_pipeline
from lib import models
from lib import parallel
from lib import plots
from lib import tasks
from lib import train
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


def _random_placement(key: jax.Array, side: int, canvas: int,
                      max_digit: int) -> tuple[jax.Array, jax.Array]:
  """A digit side in [side, min(canvas, max_digit)] and a top-left corner that fits it."""
  keys = jax.random.split(key)
  digit = jax.random.randint(keys[0], (), side, min(canvas, max_digit) + 1)
  corner = jax.random.randint(keys[1], (2,), 0, canvas - digit + 1)
  return digit, corner


def canvas_at(size: int, max_digit: int) -> input_pipeline.Augment:
  """Each image rescaled at random and placed at random on a blank size x size canvas (in JAX)."""
  def augment(example: input_pipeline.Example, key: jax.Array) -> input_pipeline.Example:
    image = example['x']
    digit, corner = _random_placement(key, image.shape[0], size, max_digit)
    scale = digit / image.shape[0]
    placed = jax.image.scale_and_translate(image, (size, size, image.shape[-1]), (0, 1),
                                           jnp.stack([scale, scale]), corner.astype(jnp.float32),
                                           method='linear', antialias=True)
    return {**example, 'x': placed}

  return augment


def canvas_training(sizes: tuple[int, ...], max_digit: int,
                    seed: int) -> input_pipeline.Augmentation:
  """Training on canvases: the side of each step's canvases drawn from the step alone.

  The side is the same on every process and in a resumed run, and the train
  step compiles once per side; the digits' sizes and places are drawn per
  example. Evaluation (the validation split) sees the digits as they are.
  """
  def pick(step: int) -> int:
    return int(np.random.default_rng([seed % 2**32, 0xCA5, step]).integers(len(sizes)))

  return input_pipeline.Augmentation(tuple(canvas_at(s, max_digit) for s in sizes), None, pick)


def snap_to_buckets(sides: tuple[int, ...], max_side: int) -> Callable[[Any], Any]:
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
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # Only photos stream.
  sides_t = tf.constant(sides, tf.float32)

  def snap(image):
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    size *= tf.minimum(1.0, max_side / tf.reduce_max(size))
    nearest = tf.gather(sides_t, tf.argmin(tf.abs(size[:, None] - sides_t[None, :]), axis=1))
    resized = tf.image.resize(image, tf.cast(nearest, tf.int32), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

  return snap


def _native_size_data(config: ml_collections.ConfigDict,
                      info: input_pipeline.ImageInfo) -> input_pipeline.ImageData:
  """The splits with a bucket per (height, width) of config.bucket_sides; 'x' cached as uint8."""
  data = input_pipeline.image_classification(
      config, streamed_x=snap_to_buckets(tuple(config.bucket_sides), config.max_side), info=info)
  channels = info.image_shape[-1]
  shapes = [(h, w, channels) for h in config.bucket_sides for w in config.bucket_sides]
  val = input_pipeline.by_shape(data.val, shapes)
  return dataclasses.replace(
      data, train=input_pipeline.by_shape(data.train, shapes), val=val,
      test=val if data.test is data.val else input_pipeline.by_shape(data.test, shapes))


def _shape_name(bucket: input_pipeline.Source) -> str:
  return 'x'.join(map(str, bucket.spec['x'].shape[:2]))


def _test_accuracies(
    config: ml_collections.ConfigDict, state: train.TrainState,
    tests: dict[Any, tuple[input_pipeline.Source, input_pipeline.Augment]]
) -> tuple[dict[Any, float], int]:
  """Accuracy of `state` on each (split, augment) of `tests`, and the eval step's compilations."""
  eval_step = train.jit_eval_step(tasks.classification, ['accuracy', 'loss'], parallel.make_mesh())
  accuracy = {
      name: train.evaluate(eval_step, state, split, config.eval_batch_size, prefix='',
                           augment=augment)['accuracy'] for name, (split, augment) in tests.items()
  }
  return accuracy, eval_step._cache_size()  # pylint: disable=protected-access


def _compile_size_tests(config: ml_collections.ConfigDict, state: train.TrainState,
                        test: input_pipeline.Source) -> None:
  """lib.aot: the test at every canvas side of config.eval_sizes (`_test_accuracies`' programs)."""
  eval_step = train.jit_eval_step(tasks.classification, ['accuracy', 'loss'], parallel.make_mesh())
  batches = test.num_eval_batches(config.eval_batch_size)
  for size in config.eval_sizes:
    get, args, batch = input_pipeline.eval_batch_program(test, config.eval_batch_size,
                                                         canvas_at(size, config.max_digit))
    aot.compile(f'test at {size}x{size}: batch prepared', get, *args, calls=batches,
                data_bytes=aot.nbytes(args[0]))
    aot.compile(f'test at {size}x{size}: evaluation step', eval_step, state, batch, calls=batches)


def headline(results: dict[str, Any]) -> str:
  """Test accuracy per canvas size (or per native shape), one set of weights."""
  if 'test_accuracy_by_size' in results:
    by = {s: a for s, a in results['test_accuracy_by_size'].items()}
  else:
    by = {s: e['accuracy'] for s, e in results['test_accuracy_by_shape'].items()}
  return 'test accuracy by size: ' + ', '.join(f'{s}: {a:.4f}' for s, a in by.items())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the fully convolutional CNN on canvases; tests it at every size of config.eval_sizes.

  Args:
    config: configs/any_size_cnn.py.
    workdir: the run's directory.

  Returns:
    The results (the launcher writes them to results.json).
  """
  info = input_pipeline.image_info(config)  # Checked before any work.
  shape = info.image_shape
  _check(config, shape)
  num_classes = info.num_classes
  model = models.create(config.model, outputs=num_classes, **config.model_kwargs)
  if config.bucket_sides:
    return _train_at_native_sizes(config, workdir, model, info)
  data = input_pipeline.image_classification(config, info=info)
  aot.after_training(lambda state: _compile_size_tests(config, state, data.test))
  state, summary = train.fit(
      config, workdir, model=model, task=tasks.classification, train=data.train, val=data.val,
      test=data.test, augment=canvas_training(config.train_sizes, config.max_digit, config.seed))

  by_size, eval_compiles = _test_accuracies(config, state, {
      size: (data.test, canvas_at(size, config.max_digit)) for size in config.eval_sizes
  })

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
    plots.lines(
        sizes, {'test accuracy': [by_size[s] for s in sizes]},
        os.path.join(plot_dir, 'accuracy_by_size.png'), xlabel='canvas side (pixels)',
        ylabel='test accuracy', title=f'one set of weights, trained on canvases of '
        f'{", ".join(map(str, config.train_sizes))}')
    examples = input_pipeline.first_examples(data.test, 4, canvas_at(max(sizes), config.max_digit))
    plots.image_grid(examples['x'], 1, os.path.join(plot_dir, 'canvas_examples.png'),
                     f'test digits on {max(sizes)}x{max(sizes)} canvases')
  return results


def _train_at_native_sizes(config: ml_collections.ConfigDict, workdir: str, model: nn.Module,
                           info: input_pipeline.ImageInfo) -> dict[str, Any]:
  """Trains on bucketed native-size images; tests the weights on each bucket shape."""
  data = _native_size_data(config, info)
  state, summary = train.fit(config, workdir, model=model, task=tasks.classification,
                             train=data.train, val=data.val, test=data.test)
  accuracy, eval_compiles = _test_accuracies(config, state,
                                             {_shape_name(b): (b, None) for b in data.test.buckets})
  by_shape = {
      _shape_name(b): {'accuracy': accuracy[_shape_name(b)], 'examples': b.num_examples}
      for b in data.test.buckets
  }
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
  return results
