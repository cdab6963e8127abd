"""Batch norm: the model's two modes, the engine's batch_stats, and the experiment end to end."""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import batchnorm as bn_config
from configs import fashion_mlp
from experiments import batchnorm as bn_experiment
import experiments.__main__ as launcher
from lib import input_pipeline, models, tasks, train
from tests.conftest import mock_tfds, read_results, tiny


def test_batch_statistics_in_training_running_averages_in_evaluation():
  model = models.create('mlp', hidden=(16,), outputs=3, batch_norm=True)
  x = jax.random.normal(jax.random.PRNGKey(0), (32, 8)) * 3 + 1
  variables = model.init(jax.random.PRNGKey(1), x)
  out, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  part, _ = model.apply(variables, x[:4], train=True, mutable=['batch_stats'])
  assert not np.allclose(part, out[:4], atol=1e-3)  # Training: depends on the rest of the batch.
  np.testing.assert_allclose(model.apply(variables, x[:4]),
                             model.apply(variables, x)[:4], rtol=1e-5,
                             atol=1e-6)  # Evaluation: each example alone.
  kernel = variables['params']['Dense_0']['kernel']
  np.testing.assert_allclose(updates['batch_stats']['BatchNorm_0']['mean'],
                             0.1 * jnp.mean(x @ kernel, 0), rtol=1e-4, atol=1e-5)


def _fit(workdir, config):
  with mock_tfds(64):
    data = input_pipeline.image_classification(config)
  model = models.create(config.model, outputs=10, **config.model_kwargs)
  return train.fit(config, str(workdir), model=model, task=tasks.classification, train=data.train,
                   val=data.val, test=data.test)


def test_engine_trains_batch_stats_and_a_resumed_run_restores_them(tmp_path):
  # A constant rate: a cosine schedule spans num_epochs, which this test changes to stop early.
  config = tiny(fashion_mlp, num_epochs=3, steps_per_execution=1, lr_schedule='constant',
                model_kwargs=ml_collections.ConfigDict({'hidden': (16,), 'batch_norm': True}))
  straight, _ = _fit(tmp_path / 'straight', config)
  stats = straight.model_state['batch_stats']['BatchNorm_0']
  assert float(jnp.abs(stats['mean']).sum()) > 0 and not np.allclose(stats['var'], 1.0)
  config.num_epochs = 1
  _fit(tmp_path / 'resumed', config)
  config.num_epochs = 3
  resumed, _ = _fit(tmp_path / 'resumed', config)
  jax.tree.map(np.testing.assert_array_equal, resumed.model_state, straight.model_state)
  jax.tree.map(np.testing.assert_array_equal, resumed.params, straight.params)


def test_steps_to_accuracy():
  history = [{'step': 100, 'val_accuracy': 0.9}, {'step': 200, 'val_accuracy': 0.96},
             {'step': 300, 'val_accuracy': 0.955}]
  assert bn_experiment.steps_to(history, 0.95) == 200
  assert bn_experiment.steps_to(history, 0.97) is None


def test_batchnorm_tiny_writes_results_and_plots(tmp_path):
  with mock_tfds(64):
    launcher.run(tiny(bn_config), str(tmp_path))
  results = read_results(tmp_path)
  for name in ('plain', 'batch_norm'):
    assert {
        'test_accuracy', 'steps_to_95', 'steps_to_97', 'accuracy_by_step', 'sensitivity_spread'
    } <= set(results[name])
    assert os.path.isdir(tmp_path / name / 'checkpoints')
  assert len(results['sensitivity']) == 2 * 2 * 1
  for plot in ('accuracy_vs_steps', 'sensitivity'):
    assert os.path.getsize(tmp_path / 'plots' / f'{plot}.png') > 1000


def test_on_real_mnist_batch_norm_learns_far_faster(mnist_data_dir, tmp_path):
  """The paper's network and rate, 1,500 steps each way: batch norm is far ahead (the claim)."""
  accuracy = {}
  for batch_norm in (False, True):
    config = bn_config.get_config()
    config.update(data_dir=mnist_data_dir, num_epochs=3, steps_per_epoch=500,
                  checkpoint_every_epochs=3, best_metric='', eval_batch_size=2000)
    config.model_kwargs.batch_norm = batch_norm
    data = input_pipeline.image_classification(config)
    model = models.create(config.model, outputs=10, **config.model_kwargs)
    _, results = train.fit(config, str(tmp_path / str(batch_norm)), model=model,
                           task=tasks.classification, train=data.train, val=data.val)
    accuracy[batch_norm] = results['val_accuracy']
  assert accuracy[True] > 0.9 and accuracy[True] > accuracy[False] + 0.1, accuracy
