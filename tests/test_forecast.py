"""Forecasting: windows, baselines, the notes' RNN shapes, and end-to-end runs."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import forecast as fc_config
from experiments import forecast as fc_experiment
import experiments.__main__ as launcher
from lib import models
from tests.conftest import read_results


def test_the_notes_rnn_shapes():
  x = jnp.ones((4, 30, 1))  # (batch, time, features): the notes' 3-D RNN input.
  rnn = nn.RNN(nn.SimpleCell(3))
  assert rnn.apply(rnn.init(jax.random.PRNGKey(0), x), x).shape == (4, 30, 3)  # Full sequence.
  model = models.create('rnn', cell='simple', units=(3,), outputs=1)
  assert model.apply(model.init(jax.random.PRNGKey(0), x), x).shape == (4, 1)  # Last step.


@pytest.mark.parametrize('variant,params', [('rnn', 4961), ('linear', 21), ('dense', 331)])
def test_forecast_models_param_counts(variant, params):
  config = fc_config.get_config(variant)
  model = models.create(config.model, outputs=1, **config.model_kwargs)
  variables = model.init(jax.random.PRNGKey(0), jnp.ones((32, 20, 1)))
  assert models.count_params(variables['params']) == params  # As the course's Keras models.
  assert model.apply(variables, jnp.ones((32, 20, 1))).shape == (32, 1)


def test_windows_shapes_and_no_overlap_between_training_and_validation_targets():
  series = np.arange(100, dtype=np.float32)
  train = fc_experiment.windows(series, 5, 0, 60)
  val = fc_experiment.windows(series, 5, 60, 100)
  assert train['x'].shape == (55, 5, 1) and val['x'].shape == (40, 5, 1)
  np.testing.assert_array_equal(train['x'][0, :, 0], [0, 1, 2, 3, 4])
  assert train['y'][0] == 5 and train['t'].max() == 59 and val['t'].min() == 60
  assert np.all(val['x'][:, -1, 0] == val['y'] - 1)  # Inputs end just before their target.
  lagged = fc_experiment.windows(series, 5, 60, 100, lag=20, lookahead=3)
  assert lagged['x'].shape == (40, 5, 2)
  # Target t = 60: last year's feature is series[60 - 5 - 17 : 60 - 17], anniversary 40 inside.
  np.testing.assert_array_equal(lagged['x'][0, :, 1], [38, 39, 40, 41, 42])


def test_baselines_on_a_hand_computed_series():
  np.testing.assert_allclose(fc_experiment.moving_average(np.array([1., 2., 3., 4.]), 2),
                             [1.5, 2.5])  # Forecasts of series[2] and series[3].
  series = np.arange(200, dtype=np.float64)  # x[t] = t: errors worked out by hand.
  forecasts = fc_experiment.baselines(series, split=150, period=20)
  errors = {k: f - series[150:] for k, f in forecasts.items()}
  np.testing.assert_allclose(errors['naive'], -1)  # x[t - 1] = t - 1.
  np.testing.assert_allclose(errors['moving_average'], -15.5)  # Mean of t-30 .. t-1.
  # Seasonal differences are all 20: x[t - 20] + 20 = t exactly.
  np.testing.assert_allclose(errors['seasonal_diff_moving_average'], 0, atol=1e-9)
  # The past smoothed over t-25 .. t-16 is t - 20.5; plus 20.
  np.testing.assert_allclose(errors['seasonal_diff_moving_average_smoothed_past'], -0.5)


def test_course_baselines_match_the_course():
  config = fc_config.get_config()
  series = fc_experiment.make_series(config)
  actual = series[config.split_time:]
  maes = {
      k: float(np.mean(np.abs(v - actual)))
      for k, v in fc_experiment.baselines(series, config.split_time, config.period).items()
  }
  # The course's printed values: 5.9379, 7.1424, 5.8393, 4.5695.
  assert maes['naive'] == pytest.approx(5.9379, abs=1e-3)
  assert maes['moving_average'] == pytest.approx(7.1424, abs=1e-3)
  assert maes['seasonal_diff_moving_average'] == pytest.approx(5.8393, abs=1e-3)
  assert maes['seasonal_diff_moving_average_smoothed_past'] == pytest.approx(4.5695, abs=1e-3)


def test_forecast_tiny_writes_results_and_plots(tmp_path):
  launcher.run(fc_config.get_config('tiny'), str(tmp_path))
  results = read_results(tmp_path)
  assert {'val_mae', 'baselines_val_mae', 'best_epoch'} <= set(results)
  for plot in ('curves', 'forecast'):
    assert os.path.getsize(tmp_path / 'plots' / f'{plot}.png') > 1000


def test_short_real_forecast_beats_the_naive_forecast(tmp_path):
  config = fc_config.get_config('linear')
  config.update(num_epochs=60, early_stopping_patience=0)
  results = launcher.run(config, str(tmp_path))
  assert results['val_mae'] < results['baselines_val_mae']['naive'], results['val_mae']


def test_activation_study_counts_diverged_runs(tmp_path):
  config = fc_config.get_config('tiny')
  config.activation_study = True
  results = launcher.run(config, str(tmp_path))['activation_study']
  assert [r['activation'] for r in results['runs']] == ['tanh', 'tanh', 'relu', 'relu']
  for activation in ('tanh', 'relu'):
    assert results['by_activation'][activation]['runs'] == 2
  assert all(r['diverged'] for r in results['runs'] if r['learning_rate'] == 10.0)
  assert os.path.getsize(tmp_path / 'plots' / 'activation_study.png') > 1000
