"""The input pipeline on mock TFDS data: shapes, normalization ranges, padding, resumable order, errors."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import fashion_mlp, mnist_cnn
from lib import input_pipeline
from lib.errors import UserError
from tests.conftest import mock_tfds, tiny


def _data(normalization='unit', num_examples=50, **overrides):
  config = tiny(mnist_cnn, normalization=normalization, **overrides)
  with mock_tfds(num_examples):
    return input_pipeline.image_classification(config, input_pipeline.image_builder(config))


def test_shapes_dtypes_and_counts():
  data = _data()
  assert (data.train.num_examples, data.test.num_examples) == (50, 50)
  assert data.num_classes == 10 and data.image_shape == (28, 28, 1)
  batch = next(input_pipeline.train_batches(data.train, 8, seed=0, shuffle_buffer=64))
  assert batch['x'].shape == (8, 28, 28, 1) and batch['x'].dtype == np.float32
  assert batch['y'].shape == (8,) and batch['y'].dtype == np.int32


def _all_pixels(split):
  return np.concatenate([b['x'] for b in split.ds.batch(64).as_numpy_iterator()])


def test_normalization_ranges():
  raw = _all_pixels(_data('none').train)
  assert raw.min() >= 0 and raw.max() > 200 and raw.max() <= 255
  unit = _all_pixels(_data('unit').train)
  assert unit.min() >= 0 and unit.max() <= 1 and unit.max() > 0.8
  np.testing.assert_allclose(unit, raw / 255, atol=1e-6)
  standard = _all_pixels(_data('standardize').train)
  assert abs(standard.mean()) < 1e-3 and abs(standard.std() - 1) < 1e-3


def test_unknown_normalization_is_a_clear_error():
  with pytest.raises(UserError, match=r"config.normalization='zscore' is unknown"):
    _data('zscore')


def test_eval_covers_every_example_once_with_padding_masked():
  data = _data(num_examples=50)
  batches = list(input_pipeline.eval_batches(data.test, 16))
  assert len(batches) == 4 == input_pipeline.num_eval_batches(data.test, 16)
  assert all(b['x'].shape == (16, 28, 28, 1) for b in batches)
  masks = np.concatenate([b['mask'] for b in batches])
  assert masks.sum() == 50 and not masks[50:].any()
  labels = np.concatenate([b['y'] for b in batches])[masks]
  expected = np.array([ex['y'] for ex in data.test.ds.as_numpy_iterator()])
  np.testing.assert_array_equal(labels, expected)
  # validation_steps caps the batches.
  assert len(list(input_pipeline.eval_batches(data.test, 16, max_batches=2))) == 2


def test_training_order_is_seeded_reshuffled_each_pass_and_resumable():
  split = input_pipeline.from_arrays({'x': np.arange(40, dtype=np.float32), 'y': np.zeros(40)})
  def first(n, start_step=0, seed=0):
    it = input_pipeline.train_batches(split, 8, seed=seed, shuffle_buffer=40, start_step=start_step)
    return [next(it)['x'] for _ in range(n)]
  run = first(12)  # 5 batches per pass: 2.4 passes.
  np.testing.assert_array_equal(np.sort(np.concatenate(run[:5])), np.arange(40))  # One pass.
  assert not np.array_equal(np.concatenate(run[:5]), np.concatenate(run[5:10]))  # Reshuffled.
  np.testing.assert_array_equal(np.stack(first(12)), np.stack(run))  # Seeded.
  np.testing.assert_array_equal(np.stack(first(5, start_step=7)), np.stack(run[7:12]))  # Resumes.
  assert not np.array_equal(np.stack(first(5, seed=1)), np.stack(run[:5]))


def test_data_shards_fix_the_global_batch_whatever_the_processes():
  arrays = {'x': np.arange(40, dtype=np.float32), 'y': np.zeros(40)}
  split = input_pipeline.from_arrays(arrays, num_shards=2)  # One process holds both shards.
  assert [s.index for s in split.shards] == [0, 1] and split.num_examples == 40
  batches = [b['x'] for _, b in zip(range(6), input_pipeline.train_batches(
      split, 8, seed=0, shuffle_buffer=40))]
  for b in batches:  # Half of each batch from each shard, in shard order.
    assert np.all(b[:4] < 20) and np.all(b[4:] >= 20)
  # Each shard's order is that of a process that holds only it: what 2 processes would read.
  alone = input_pipeline.Split(split.shards[1].ds, 20, 20, 20, index=1)
  for b, other in zip(batches, input_pipeline.train_batches(alone, 4, seed=0, shuffle_buffer=40)):
    np.testing.assert_array_equal(b[4:], other['x'])
  with pytest.raises(UserError, match='batch of 5 evenly'):
    next(input_pipeline.train_batches(split, 5, seed=0, shuffle_buffer=40))
  with pytest.raises(UserError, match='data_shards=-3 must be a multiple'):
    input_pipeline.from_arrays(arrays, num_shards=-3)


def test_missing_data_offline_says_how_to_pass_manual_dir(tmp_path):
  config = mnist_cnn.get_config('tiny')
  config.data_dir = str(tmp_path)
  builder = input_pipeline.tfds_builder(config)
  with pytest.raises(UserError, match=r'not prepared.*--config.manual_dir=DIR'):
    input_pipeline.image_classification(config, builder)
  config.manual_dir = str(tmp_path / 'nowhere')
  with pytest.raises(UserError, match='is not a directory'):
    input_pipeline.image_classification(config, builder)


def test_unknown_dataset_is_a_clear_error():
  config = fashion_mlp.get_config('tiny')
  config.dataset = 'fashion_mnits'
  with pytest.raises(UserError, match=r"'fashion_mnits' is not a TFDS dataset; did you mean"):
    input_pipeline.tfds_builder(config)
  config = mnist_cnn.get_config('tiny')
  config.dataset = 'glue'  # Text: no image and label features.
  with pytest.raises(UserError, match="needs 'image' and 'label'"):
    input_pipeline.check_image_classification(input_pipeline.tfds_builder(config))


def _mixed_sizes():
  """60 examples in three shapes (30, 20, 10), 'y' numbering them, 'x' filled with the shape."""
  shapes = [(4, 4, 1)] * 30 + [(4, 8, 1)] * 20 + [(8, 8, 1)] * 10
  ds = tf.data.Dataset.from_generator(
      lambda: ({'x': np.full(s, s[1] + s[0] / 10, np.float32), 'y': np.int32(i)}
               for i, s in enumerate(shapes)),
      output_signature={'x': tf.TensorSpec([None, None, 1], tf.float32),
                        'y': tf.TensorSpec([], tf.int32)})
  split = input_pipeline.from_dataset(ds)
  return input_pipeline.by_shape(split, [(4, 4, 1), (4, 8, 1), (8, 4, 1), (8, 8, 1)])


def test_buckets_give_one_shape_per_batch_in_proportion_and_resume_by_step():
  split = _mixed_sizes()
  assert [b.num_examples for b in split.buckets] == [30, 20, 10]  # The empty (8, 4) left out.
  batches = [b for _, b in zip(range(60), input_pipeline.train_batches(
      split, 8, seed=0, shuffle_buffer=64))]
  shapes = [b['x'].shape[1:3] for b in batches]
  counts = {s: shapes.count(s) for s in set(shapes)}
  # The 10-example bucket fills a batch of 8: it trains too, at 1/6 of the steps.
  assert set(counts) == {(4, 4), (4, 8), (8, 8)} and counts[(4, 4)] > counts[(8, 8)], counts
  for b in batches:  # Every example in a batch has the batch's shape.
    assert np.all(b['x'] == b['x'].shape[2] + b['x'].shape[1] / 10)
  resumed = input_pipeline.train_batches(split, 8, seed=0, shuffle_buffer=64, start_step=37)
  for a, b in zip(batches[37:], resumed):
    np.testing.assert_array_equal(a['y'], b['y'])
  other_seed = next(input_pipeline.train_batches(split, 8, seed=1, shuffle_buffer=64))
  assert not np.array_equal(other_seed['y'], batches[0]['y'])


def test_bucket_too_small_for_a_batch_is_evaluated_but_not_trained():
  split = _mixed_sizes()
  shapes = {b['x'].shape[1:3] for _, b in zip(range(40), input_pipeline.train_batches(
      split, 16, seed=0, shuffle_buffer=64))}
  assert shapes == {(4, 4), (4, 8)}
  batches = list(input_pipeline.eval_batches(split, 16))
  assert [b['x'].shape[1:3] for b in batches] == [(4, 4), (4, 4), (4, 8), (4, 8), (8, 8)]
  seen = np.concatenate([b['y'][b['mask']] for b in batches])
  np.testing.assert_array_equal(np.sort(seen), np.arange(60))  # Each example once.
  assert input_pipeline.num_eval_batches(split, 16) == 5


def test_by_shape_refuses_examples_of_another_shape():
  with pytest.raises(ValueError, match='10 examples have a shape outside'):
    input_pipeline.by_shape(_mixed_sizes(), [(4, 4, 1), (4, 8, 1)])
