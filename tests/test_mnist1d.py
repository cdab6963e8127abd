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


@pytest.mark.parametrize('variant,params', [('logistic', 410), ('mlp', 15_210), ('cnn', 5_210)])
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


def test_short_cnn_run_beats_chance_by_far(tmp_path):
  config = m1d_config.get_config('cnn')
  config.num_epochs = 25  # 1000 steps.
  assert launcher.run(config, str(tmp_path))['test_accuracy'] > 0.6
