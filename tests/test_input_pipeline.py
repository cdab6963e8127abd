"""The input pipeline on mock TFDS data: shapes, normalization, padding, resumable order, both sources, errors."""

import jax
import numpy as np
import pytest
import tensorflow as tf

from configs import fashion_mlp, mnist_cnn
from lib import input_pipeline
from lib.input_pipeline import streaming
from lib.errors import UserError
from tests.conftest import mock_tfds, tiny


def _data(normalization='unit', num_examples=50, **overrides):
  config = tiny(mnist_cnn, normalization=normalization, **overrides)
  with mock_tfds(num_examples):
    return input_pipeline.image_classification(config)


def _all(split, augment=None):
  batches = [{k: np.asarray(v)
              for k, v in b.items()}
             for b in input_pipeline.eval_batches(split, 16, augment=augment)]
  mask = np.concatenate([b['mask'] for b in batches])
  return {k: np.concatenate([b[k] for b in batches])[mask] for k in batches[0] if k != 'mask'}


def test_splits_live_on_the_devices_as_stored_and_reach_the_model_as_float():
  data = _data()
  assert (data.train.num_examples, data.test.num_examples) == (50, 50)
  assert isinstance(
      data.train,
      input_pipeline.ArraySource) and data.num_classes == 10 and data.image_shape == (28, 28, 1)
  assert data.train.arrays['x'].dtype == np.uint8 and data.train.arrays['x'].shape == (50, 28, 28,
                                                                                       1)
  examples = _all(data.test)
  assert examples['x'].shape == (50, 28, 28, 1) and examples['x'].dtype == np.float32
  assert examples['y'].dtype == np.int32
  spec = input_pipeline.model_spec(data.train, None)
  assert spec['x'].shape == (28, 28, 1) and spec['x'].dtype == np.float32


def test_normalization_ranges():
  raw = _all(_data('none').train)['x']
  assert raw.min() >= 0 and raw.max() > 200 and raw.max() <= 255
  unit = _all(_data('unit').train)['x']
  assert unit.min() >= 0 and unit.max() <= 1 and unit.max() > 0.8
  np.testing.assert_allclose(unit, raw / 255, atol=1e-6)
  standard = _all(_data('standardize').train)['x']
  assert abs(standard.mean()) < 1e-3 and abs(standard.std() - 1) < 1e-3


def test_unknown_normalization_is_a_clear_error():
  with pytest.raises(UserError, match=r"config.normalization='zscore' is unknown"):
    _data('zscore')


def _eval_labels(device_data_mb):
  """Checks that evaluation covers every example once, padding masked; returns the labels."""
  data = _data(num_examples=50, device_data_mb=device_data_mb)
  assert isinstance(data.test, input_pipeline.ArraySource) == (device_data_mb > 0)
  batches = list(input_pipeline.eval_batches(data.test, 16))
  assert len(batches) == 4 == data.test.num_eval_batches(16)
  assert all(b['x'].shape == (16, 28, 28, 1) for b in batches)
  masks = np.concatenate([np.asarray(b['mask']) for b in batches])
  assert masks.sum() == 50 and not masks[50:].any()
  # validation_steps caps the batches.
  assert len(list(input_pipeline.eval_batches(data.test, 16, max_batches=2))) == 2
  return np.concatenate([np.asarray(b['y']) for b in batches])[masks]


def test_eval_covers_every_example_once_with_padding_masked_from_either_source():
  on_devices, streamed = _eval_labels(2048), _eval_labels(0)
  np.testing.assert_array_equal(on_devices, streamed)  # The same examples, in the same order.


def _feed(n=40, shards=None, seed=0, start_step=0, batch_size=8, shuffle=True):
  split = input_pipeline.from_arrays({'x': np.arange(n, dtype=np.float32), 'y': np.zeros(n)},
                                     num_shards=shards)
  return split.train_feed(batch_size, seed=seed, shuffle_buffer=0, start_step=start_step,
                          shuffle=shuffle)


def test_unshuffled_order_reads_the_split_as_stored_pass_after_pass():
  feed = _feed(shuffle=False, seed=3, shards=2)
  # Two shards of 20, each batch a slice of 4 from each, pass after pass (5 batches a pass).
  expected = [
      np.r_[4 * (s % 5):4 * (s % 5) + 4, 20 + 4 * (s % 5):20 + 4 * (s % 5) + 4] for s in range(12)
  ]
  np.testing.assert_array_equal([feed.indices(s) for s in range(12)], expected)
  unsharded = _feed(shuffle=False)
  np.testing.assert_array_equal(unsharded.indices(6), np.arange(8, 16))


def test_a_streamed_split_refuses_what_needs_arrays_on_the_devices():
  split = input_pipeline.from_stream(_stream(40))
  with pytest.raises(UserError, match='config.shuffle=False needs .* streams'):
    split.train_feed(8, seed=0, shuffle_buffer=0, shuffle=False)
  with pytest.raises(UserError, match='a population of 3 models needs .* streams'):
    split.train_feed(8, seed=0, shuffle_buffer=0, seeds=[0, 1, 2])
  with pytest.raises(UserError, match='--compile_for needs .* streams'):
    split.require_on_devices('--compile_for')


def _stream(n):
  ds = tf.data.Dataset.from_tensor_slices({'x': np.arange(n, dtype=np.float32), 'y': np.zeros(n)})
  return streaming.from_dataset(ds)


def test_each_source_draws_its_order_from_seed_shard_and_pass():
  # Arrays: each shard permuted whole by numpy, from order_entropy(seed, shard, pass).
  feed = _feed(n=40, shards=2, seed=5, batch_size=8)
  for step, pass_index in ((0, 0), (5, 1)):  # 5 batches a pass.
    expected = [
        np.random.default_rng(input_pipeline.order_entropy(5, k, pass_index)).permutation(20)[:4] +
        20 * k for k in range(2)
    ]
    np.testing.assert_array_equal(feed.indices(step), np.concatenate(expected))
  # A stream: tf.data's shuffle, seeded from the same entropy; the same examples each pass, in
  # another order than the arrays'.
  batches = streaming.train_batches(_stream(40), 8, seed=5, shuffle_buffer=40)
  passes = [np.concatenate([next(batches)['x'] for _ in range(5)]) for _ in range(2)]
  for seen in passes:
    np.testing.assert_array_equal(np.sort(seen), np.arange(40))
  assert not np.array_equal(passes[0], passes[1])
  resumed = streaming.train_batches(_stream(40), 8, seed=5, shuffle_buffer=40, start_step=7)
  np.testing.assert_array_equal(next(resumed)['x'], passes[1][16:24])
  for pass_index, seen in enumerate(passes):
    shuffled = _stream(40).ds.shuffle(40, seed=streaming.pass_seed(5, 0, pass_index))
    np.testing.assert_array_equal(seen, [ex['x'] for ex in shuffled.as_numpy_iterator()])


def test_training_order_is_seeded_reshuffled_each_pass_and_resumable():
  feed = _feed()
  run = [feed.indices(s) for s in range(12)]  # 5 batches per pass: 2.4 passes.
  np.testing.assert_array_equal(np.sort(np.concatenate(run[:5])), np.arange(40))  # One pass.
  assert not np.array_equal(np.concatenate(run[:5]), np.concatenate(run[5:10]))  # Reshuffled.
  np.testing.assert_array_equal(np.stack([_feed().indices(s) for s in range(12)]), run)
  inputs = _feed(start_step=7).next(1, None)  # A resumed feed hands over the same indices.
  assert int(inputs['first']) == 7
  np.testing.assert_array_equal(np.asarray(inputs['idx'])[:5], run[7:12])
  assert not np.array_equal(_feed(seed=1).indices(0), run[0])


def test_the_step_gathers_its_batch_on_the_devices():
  feed = _feed()
  inputs = feed.next(1, None)
  for step in (0, 3):  # Each step picks its row of the block of indices.
    batch = input_pipeline.batch_of(feed.data, inputs, step=np.int32(step))
    np.testing.assert_array_equal(np.asarray(batch['x']), feed.indices(step).astype(np.float32))
  # A call's steps in one gather: the same rows, stacked.
  calls = input_pipeline.batch_of(feed.data, inputs, step=np.int32(2), steps=3)
  np.testing.assert_array_equal(np.asarray(calls['x']),
                                np.stack([feed.indices(s) for s in (2, 3, 4)]).astype(np.float32))
  # One transfer serves the calls of a whole block, rounded to whole calls; then the next.
  stacked = feed.source.train_feed(8, seed=0, shuffle_buffer=0, stack=3)
  block = stacked.next(3, None)
  rows = 3 * (input_pipeline.BLOCK_STEPS // 3)
  assert block['idx'].shape == (rows, 8)
  assert all(stacked.next(3, None) is block for _ in range(rows // 3 - 1))
  after = stacked.next(3, None)
  assert int(after['first']) == rows
  np.testing.assert_array_equal(np.asarray(after['idx'])[0], stacked.indices(rows))


def test_data_shards_fix_the_global_batch_whatever_the_processes():
  feed = _feed(shards=2)
  assert feed.source.num_shards == 2
  batches = [feed.indices(s) for s in range(6)]
  for b in batches:  # Half of each batch from each shard, in shard order.
    assert np.all(b[:4] < 20) and np.all(b[4:] >= 20)
  # A shard's order depends on the seed, the shard and the pass only.
  four = _feed(n=80, shards=4)
  assert not np.array_equal(np.sort(four.indices(0)[:2]), np.sort(batches[0][:4]))
  np.testing.assert_array_equal(np.stack([_feed(shards=2).indices(s) for s in range(6)]),
                                np.stack(batches))
  with pytest.raises(UserError, match='batch of 5 evenly'):
    _feed(shards=2, batch_size=5)
  with pytest.raises(UserError, match='data_shards=-3 must be a multiple'):
    _feed(shards=-3)
  with pytest.raises(UserError, match='fewer than its share'):
    _feed(n=10, shards=2, batch_size=12)


def test_augmentation_is_keyed_by_step_and_position_in_training_and_by_index_in_evaluation():
  split = input_pipeline.from_arrays({
      'x': np.zeros((16, 3), np.float32), 'y': np.zeros(16, np.int32)
  })
  noise = lambda ex, key: {**ex, 'x': ex['x'] + jax_random_normal(key, ex['x'].shape)}
  a = _all(split, noise)['x']
  b = _all(split, noise)['x']
  np.testing.assert_array_equal(a, b)  # Evaluation: the same every time.
  assert np.unique(a[:, 0]).size == 16  # Each example its own key.
  one = next(input_pipeline.eval_batches(split, 8, augment=noise))
  np.testing.assert_array_equal(np.asarray(one['x']), a[:8])  # Whatever the batch size.
  batch = {'x': np.zeros((4, 3), np.float32)}
  key = np.asarray(jax_key(0))
  first = input_pipeline.model_inputs(batch, lambda b: b, noise, key)['x']
  again = input_pipeline.model_inputs(batch, lambda b: b, noise, key)['x']
  other = input_pipeline.model_inputs(batch, lambda b: b, noise, np.asarray(jax_key(1)))['x']
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


def jax_key(seed):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.random.PRNGKey(seed)


def jax_random_normal(key, shape):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.random.normal(key, shape)


def test_missing_data_offline_says_how_to_pass_manual_dir(tmp_path):
  config = mnist_cnn.get_config('tiny')
  config.data_dir = str(tmp_path)
  with pytest.raises(UserError, match=r'not prepared.*--config.manual_dir=DIR'):
    input_pipeline.image_classification(config)
  config.manual_dir = str(tmp_path / 'nowhere')
  with pytest.raises(UserError, match='is not a directory'):
    input_pipeline.image_classification(config)


def test_unknown_dataset_is_a_clear_error():
  config = fashion_mlp.get_config('tiny')
  config.dataset = 'fashion_mnits'
  with pytest.raises(UserError, match=r"'fashion_mnits' is not a TFDS dataset; did you mean"):
    input_pipeline.image_info(config)
  config = mnist_cnn.get_config('tiny')
  config.dataset = 'glue'  # Text: no image and label features.
  with pytest.raises(UserError, match="needs 'image' and 'label'"):
    input_pipeline.image_info(config)


def _mixed_sizes():
  """60 examples in three shapes (30, 20, 10), 'y' numbering them, 'x' filled with the shape."""
  shapes = [(4, 4, 1)] * 30 + [(4, 8, 1)] * 20 + [(8, 8, 1)] * 10
  ds = tf.data.Dataset.from_generator(
      lambda: ({'x': np.full(s, s[1] + s[0] / 10, np.float32), 'y': np.int32(i)}
               for i, s in enumerate(shapes)), output_signature={
                   'x': tf.TensorSpec([None, None, 1], tf.float32), 'y': tf.TensorSpec([], tf.int32)
               })
  split = streaming.from_dataset(ds)
  return streaming.by_shape(split, [(4, 4, 1), (4, 8, 1), (8, 4, 1), (8, 8, 1)])


def test_buckets_give_one_shape_per_batch_in_proportion_and_resume_by_step():
  split = _mixed_sizes()
  assert [b.num_examples for b in split.buckets] == [30, 20, 10]  # The empty (8, 4) left out.
  batches = [
      b for _, b in zip(range(60), streaming.train_batches(split, 8, seed=0, shuffle_buffer=64))
  ]
  shapes = [b['x'].shape[1:3] for b in batches]
  counts = {s: shapes.count(s) for s in set(shapes)}
  # The 10-example bucket fills a batch of 8: it trains too, at 1/6 of the steps.
  assert set(counts) == {(4, 4), (4, 8), (8, 8)} and counts[(4, 4)] > counts[(8, 8)], counts
  for b in batches:  # Every example in a batch has the batch's shape.
    assert np.all(b['x'] == b['x'].shape[2] + b['x'].shape[1] / 10)
  resumed = streaming.train_batches(split, 8, seed=0, shuffle_buffer=64, start_step=37)
  for a, b in zip(batches[37:], resumed):
    np.testing.assert_array_equal(a['y'], b['y'])
  other_seed = next(streaming.train_batches(split, 8, seed=1, shuffle_buffer=64))
  assert not np.array_equal(other_seed['y'], batches[0]['y'])


def test_bucket_too_small_for_a_batch_is_evaluated_but_not_trained():
  split = _mixed_sizes()
  shapes = {
      b['x'].shape[1:3]
      for _, b in zip(range(40), streaming.train_batches(split, 16, seed=0, shuffle_buffer=64))
  }
  assert shapes == {(4, 4), (4, 8)}
  wrapped = input_pipeline.from_stream(split)
  assert len(wrapped.buckets) == 3
  batches = [
      {k: np.asarray(v) for k, v in b.items()} for b in input_pipeline.eval_batches(wrapped, 16)
  ]
  assert [b['x'].shape[1:3] for b in batches] == [(4, 4), (4, 4), (4, 8), (4, 8), (8, 8)]
  seen = np.concatenate([b['y'][b['mask']] for b in batches])
  np.testing.assert_array_equal(np.sort(seen), np.arange(60))  # Each example once.
  assert wrapped.num_eval_batches(16) == 5


def test_by_shape_refuses_examples_of_another_shape():
  with pytest.raises(ValueError, match='10 examples have a shape outside'):
    streaming.by_shape(_mixed_sizes(), [(4, 4, 1), (4, 8, 1)])


def test_uniform16_is_uniform_on_0_1_at_16_bits():
  u = np.asarray(input_pipeline.uniform16(jax.random.PRNGKey(0), (999, 201)))  # An odd count.
  assert u.shape == (999, 201) and u.min() >= 0 and u.max() < 1
  np.testing.assert_array_equal(u * 2**16, np.round(u * 2**16))
  assert abs(u.mean() - 0.5) < 0.002 and abs((u < 0.3).mean() - 0.3) < 0.003
  assert len(np.unique(u)) > 50_000  # Both halves of each word are used, not repeated.
  other = np.asarray(input_pipeline.uniform16(jax.random.PRNGKey(1), (999, 201)))
  assert abs(np.corrcoef(u.ravel(), other.ravel())[0, 1]) < 0.01
  # The four values drawn from one threefry block are uncorrelated with one another.
  blocks = u.ravel()[:u.size // 4 * 4].reshape(-1, 4)
  assert np.abs(np.corrcoef(blocks.T) - np.eye(4)).max() < 0.01
  # Value i depends on (key, i) alone: a longer draw starts with the shorter one.
  longer = input_pipeline.uniform16(jax.random.PRNGKey(0), (u.size + 5,))
  np.testing.assert_array_equal(np.asarray(longer)[:u.size], u.ravel())
