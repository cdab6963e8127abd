"""CNNs that take any image size (the notes): no Flatten, a 1x1 conv and a global pool instead.

A Flatten + Dense head fixes the number of features, hence the image size the
network was built for. Replacing it with a 1x1 convolution to the classes
(a Dense layer applied at every position) and a global max-pool gives one set
of weights that classifies images of any height and width. Trained on digits
rescaled and placed on canvases of a few sizes, it is tested on canvases of
sizes it never saw. jit compiles once per input shape, so training draws the
canvas side from a few buckets, one per batch; results.json reports the
compilations.
"""
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf

from lib import input_pipeline
from lib import models
from lib import parallel
from lib import plots
from lib import tasks
from lib import train
from lib import workdir as workdir_lib
from lib.errors import UserError


def _check(config: ml_collections.ConfigDict, shape: tuple[int, ...]) -> None:
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
  data = input_pipeline.image_classification(config, builder)
  state, summary = train.fit(
      config, workdir, model=model, task=tasks.classification, train=data.train, val=data.val,
      test=data.test, batch_augment=canvas_batches(config.train_sizes, config.max_digit,
                                                   config.seed))

  mesh = parallel.make_mesh()
  _, eval_step = train.jit_steps(tasks.classification, ['accuracy', 'loss'], mesh)
  eval_batch = parallel.local_batch_size(config.eval_batch_size, 'eval_batch_size')
  by_size = {}
  for size in config.eval_sizes:
    batches = train.EvalBatches(data.test, eval_batch, parallel.batch_sharding(mesh),
                                augment=canvas_at(size, config.max_digit), max_bytes=0)
    by_size[size] = train.evaluate(eval_step, state, batches, prefix='')['accuracy']

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
      'eval_step_compiles': eval_step._cache_size(),  # pylint: disable=protected-access
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
