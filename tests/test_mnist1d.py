"""MNIST-1D: local generation, the paper's models, an end-to-end run."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mnist1d as m1d_config
from experiments import mnist1d as m1d_experiment
import experiments.__main__ as launcher
from lib import models
from tests.conftest import read_results


def test_generation_is_deterministic_with_the_papers_sizes():
  config = m1d_config.get_config()
  a, b = m1d_experiment.make_dataset(config), m1d_experiment.make_dataset(config)
  assert a['x'].shape == (4000, 40) and a['x_test'].shape == (1000, 40)
  assert set(np.unique(a['y'])) == set(range(10))
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


def test_shuffled_variant_permutes_every_sequences_positions_alike():
  plain = m1d_experiment.make_dataset(m1d_config.get_config('cnn'))
  shuffled = m1d_experiment.make_dataset(m1d_config.get_config('cnn_shuffled'))
  # Recover the permutation from one column each: the same for every sequence, train and test.
  perm = [
      int(np.flatnonzero((plain['x'] == shuffled['x'][:, [j]]).all(axis=0))[0]) for j in range(40)
  ]
  assert sorted(perm) == list(range(40)) and perm != list(range(40))
  np.testing.assert_array_equal(shuffled['x'], plain['x'][:, perm])
  np.testing.assert_array_equal(shuffled['x_test'], plain['x_test'][:, perm])
  np.testing.assert_array_equal(shuffled['y'], plain['y'])


def test_unknown_variant_names_the_variants():
  with pytest.raises(ValueError, match="unknown variant 'cnn_sorted'.*'gru_shuffled'"):
    m1d_config.get_config('cnn_sorted')


# The paper's PyTorch models: 410, 15,210, 5,210 and 5,134 parameters.
@pytest.mark.parametrize('variant,params', [('logistic', 410), ('mlp', 15_210), ('cnn', 5_210),
                                            ('gru', 5_134), ('gru_shuffled', 5_134)])
def test_paper_models_shapes_and_param_counts(variant, params):
  config = m1d_config.get_config(variant)
  model = models.create(config.model, outputs=10, **config.model_kwargs)
  variables = model.init(jax.random.PRNGKey(0), jnp.ones((2, 40)))
  assert model.apply(variables, jnp.ones((7, 40))).shape == (7, 10)
  assert models.count_params(variables['params']) == params


def test_mnist1d_tiny_writes_results_and_plots(tmp_path):
  launcher.run(m1d_config.get_config('tiny'), str(tmp_path))
  assert 0 <= read_results(tmp_path)['test_accuracy'] <= 1
  for plot in ('curves', 'examples'):
    assert os.path.getsize(tmp_path / 'plots' / f'{plot}.png') > 1000


def test_the_cnns_lead_rests_on_the_order_of_positions(tmp_path):
  """1000 steps: the CNN learns MNIST-1D; with the positions shuffled it falls far below."""
  accuracy = {}
  for variant in ('cnn', 'cnn_shuffled'):
    config = m1d_config.get_config(variant)
    config.num_epochs = 25
    accuracy[variant] = launcher.run(config, str(tmp_path / variant))['test_accuracy']
  assert accuracy['cnn'] > 0.8, accuracy
  assert accuracy['cnn_shuffled'] < accuracy['cnn'] - 0.15, accuracy
