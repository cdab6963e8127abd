"""Any-size CNN: one set of weights for every image size, canvases, compile counts."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from configs import any_size_cnn as as_config
from configs import common
from experiments import any_size_cnn as as_experiment
import experiments.__main__ as launcher
from lib import input_pipeline, models
from lib.errors import UserError
from tests.conftest import mock_tfds, read_results, tiny


def test_one_set_of_weights_gives_logits_for_every_size():
  model = models.create('any_size_cnn', outputs=10)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  for height, width in ((28, 28), (40, 40), (57, 31), (112, 112)):
    x = jax.random.uniform(jax.random.PRNGKey(height), (3, height, width, 1))
    assert model.apply(variables, x).shape == (3, 10)


def test_flatten_cnn_refuses_another_size_with_a_clear_error():
  model = models.create('cnn', outputs=10)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  with pytest.raises(UserError, match='a 40x40 image flattens to 6400 features.*any_size_cnn'):
    model.apply(variables, jnp.zeros((1, 40, 40, 1)))


def _batches(steps):
  x = np.zeros((64, 28, 28, 1), np.float32)
  x[:, 10:18, 10:18] = 1.0
  augmentation = as_experiment.canvas_training((28, 36, 56), max_digit=40, seed=0)
  batches = []
  for step in range(steps):  # As the train step prepares its batch: the step's key and canvas.
    key = jax.random.fold_in(jax.random.PRNGKey(0), step)
    augment = augmentation.train[augmentation.index(step)]
    batch = input_pipeline.model_inputs({'x': x[:16]}, lambda b: b, augment, key)
    batches.append((step, jax.device_get(batch)))
  return batches


def test_canvas_batches_draw_one_side_per_batch_from_the_buckets():
  batches = _batches(12)
  sides = {b['x'].shape[1] for _, b in batches}
  assert sides <= {28, 36, 56} and len(sides) >= 2
  for _, b in batches:
    side = b['x'].shape[1]
    assert b['x'].shape == (16, side, side, 1)
    ink = b['x'].reshape(16, -1).sum(1)
    # The 8x8 square grows with the digit: 64 pixels at 28, up to (40/28)^2 * 64 at 40.
    assert np.all(ink > 55) and np.all(ink < 64 * (40 / 28)**2 * 1.1)
  again = _batches(12)
  for (_, a), (_, b) in zip(batches, again):  # A function of the step: resumes alike.
    np.testing.assert_array_equal(a['x'], b['x'])


def test_canvas_for_evaluation_is_fixed():
  split = input_pipeline.from_arrays({
      'x': np.ones((8, 28, 28, 1), np.float32), 'y': np.zeros(8, np.int32)
  })
  a = np.asarray(
      next(input_pipeline.eval_batches(split, 8, augment=as_experiment.canvas_at(56, 40)))['x'])
  b = np.asarray(
      next(input_pipeline.eval_batches(split, 8, augment=as_experiment.canvas_at(56, 40)))['x'])
  assert a.shape == (8, 56, 56, 1)
  np.testing.assert_array_equal(a, b)


def test_any_size_tiny_writes_results_plots_and_compile_counts(tmp_path):
  with mock_tfds(64):
    launcher.run(tiny(as_config), str(tmp_path))
  results = read_results(tmp_path)
  assert set(results['test_accuracy_by_size']) == {'28', '44'}
  assert 1 <= results['train_step_compiles'] <= 2  # One per canvas side drawn.
  assert results['eval_step_compiles'] == 2
  assert 'any_size_cnn' in results['flatten_cnn_error']
  for plot in ('curves', 'accuracy_by_size', 'canvas_examples'):
    assert os.path.getsize(tmp_path / 'plots' / f'{plot}.png') > 1000


def test_canvas_smaller_than_the_image_is_a_clear_error(tmp_path):
  with mock_tfds(16), pytest.raises(UserError, match='eval_sizes'):
    launcher.run(tiny(as_config, eval_sizes=(20, 28)), str(tmp_path))


def test_snap_to_buckets_shrinks_large_images_and_keeps_uint8():
  snap = as_experiment.snap_to_buckets((16, 32, 48), max_side=48)
  for (height, width), want in (((5, 49), (16, 48)), ((30, 20), (32, 16)), ((96, 72), (48, 32)),
                                ((200, 10), (48, 16))):
    image = tf.fill((height, width, 3), tf.constant(200, tf.uint8))
    out = snap(image)
    assert tuple(out.shape) == (*want, 3) and out.dtype == tf.uint8
    assert int(tf.reduce_min(out)) == int(tf.reduce_max(out)) == 200


def _cats_vs_dogs(**overrides):
  config = as_config.get_config('cats_vs_dogs')
  common.variant(config, 'tiny')
  config.update({
      'download': True, 'bucket_sides': (16, 32, 48), 'max_side': 48, 'batch_size': 4,
      'eval_batch_size': 8, 'model_kwargs': {'features': (8, 16), 'pool': 'avg'}, **overrides
  })
  return config


def test_cats_vs_dogs_at_native_sizes_on_mock_data(tmp_path):
  with mock_tfds(120):  # Photos of random sizes from 5 to 49 pixels a side.
    launcher.run(_cats_vs_dogs(), str(tmp_path))
  results = read_results(tmp_path)
  by_shape = results['test_accuracy_by_shape']
  assert set(by_shape) <= {f'{h}x{w}' for h in (16, 32, 48) for w in (16, 32, 48)}
  assert len(by_shape) >= 4
  assert sum(v['examples'] for v in by_shape.values()) == 120  # Every test photo, once.
  overall = sum(v['accuracy'] * v['examples'] for v in by_shape.values()) / 120
  assert overall == pytest.approx(results['test_accuracy'], abs=1e-5)
  assert 1 <= results['train_step_compiles'] <= 6  # At most one per shape of the 6 steps.
  assert results['eval_step_compiles'] == len(by_shape)
  for plot in ('curves', 'accuracy_by_shape'):
    assert os.path.getsize(tmp_path / 'plots' / f'{plot}.png') > 1000


def test_cats_vs_dogs_refuses_standardize_and_unsorted_buckets(tmp_path):
  with mock_tfds(16):
    with pytest.raises(UserError, match="take 'none' or 'unit'"):
      launcher.run(_cats_vs_dogs(normalization='standardize'), str(tmp_path))
    with pytest.raises(UserError, match='bucket_sides=.*increasing'):
      launcher.run(_cats_vs_dogs(bucket_sides=(32, 16)), str(tmp_path))


def test_on_real_mnist_one_set_of_weights_reads_digits_on_canvases_it_never_saw(
    mnist_data_dir, tmp_path):
  """The claim: trained on canvases of 28, 42 and 56 pixels, the same weights read digits on
  canvases of 40 and 84 (never trained on) nearly as well as at 28; a model at chance scores 0.1."""
  config = as_config.get_config()
  config.update(data_dir=mnist_data_dir, num_epochs=1, steps_per_epoch=400, eval_sizes=(28, 40, 84),
                test_split='test[:2000]', eval_split='test[:1000]', eval_batch_size=500)
  results = as_experiment.train_and_evaluate(config, str(tmp_path))
  by_size = results['test_accuracy_by_size']
  assert min(by_size.values()) > 0.8, by_size
  assert by_size['84'] > by_size['28'] - 0.15, by_size
  assert results['train_step_compiles'] == 3
