"""Populations (config.num_seeds, config.population): models trained as one vmapped program, each equal to its own run."""
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import celsius, forecast, mnist1d
import experiments.__main__ as launcher
from lib import checkpoints
from lib.errors import UserError
from tests.conftest import tiny


def _run(workdir, **overrides):
  return launcher.run(tiny(mnist1d, **overrides), str(workdir))


def _params(workdir):
  ckpt = checkpoints.Checkpoints(str(workdir), keep=2)
  state, _ = ckpt.restore(ckpt.latest_step())
  ckpt.close()
  return state['params']


@pytest.mark.parametrize('steps_per_execution,population_steps_per_execution', [(1, None),
                                                                                (3, None), (1, 3)])
def test_each_seed_of_a_population_is_its_own_run(tmp_path, steps_per_execution,
                                                  population_steps_per_execution):
  """Seeds 1, 2, 3 together: seeds 1 and 3 alone end with the same params and metrics.

  The population also resumes: it trains one epoch, then a rerun extends it to two. With
  population_steps_per_execution, the population scans its epoch where the singles step.
  """
  common = {
      'steps_per_execution': steps_per_execution, 'num_epochs': 2,
      'population_steps_per_execution': population_steps_per_execution
  }
  singles = {s: _run(tmp_path / f'seed{s}', seed=s, **common) for s in (1, 3)}
  _run(tmp_path / 'population', seed=1, num_seeds=3, **{**common, 'num_epochs': 1})
  population = _run(tmp_path / 'population', seed=1, num_seeds=3, **common)
  assert population['steps'] == 6 and population['epochs'] == 2
  seeds = population['members']
  assert seeds['seed'] == [1, 2, 3]
  for k, s in ((0, 1), (2, 3)):
    assert seeds['val_loss'][k] == pytest.approx(singles[s]['val_loss'], rel=1e-5, abs=1e-6)
    assert seeds['val_accuracy'][k] == pytest.approx(singles[s]['val_accuracy'])
    for mine, alone in zip(jax.tree.leaves(_params(tmp_path / 'population')),
                           jax.tree.leaves(_params(tmp_path / f'seed{s}')), strict=True):
      np.testing.assert_allclose(mine[k], alone, rtol=1e-5, atol=1e-6)
  # The metrics are the means over the seeds, with their spread beside them.
  assert population['val_loss'] == pytest.approx(np.mean(seeds['val_loss']))
  assert population['std']['val_loss'] == pytest.approx(np.std(seeds['val_loss'], ddof=1))
  assert population['history'][-1]['val_loss'] == pytest.approx(population['val_loss'])
  assert seeds['val_loss'][1] not in (seeds['val_loss'][0], seeds['val_loss'][2])
  assert '; 3 models, their mean' in population['headline']


def _population_config(settings, **overrides):
  config = tiny(mnist1d, **overrides)
  for field, values in settings.items():
    config.population[field] = tuple(values)
  return config


@pytest.mark.parametrize('schedule', ['constant', 'cosine'])
def test_each_member_of_a_hyperparameter_population_is_its_own_run(tmp_path, schedule):
  """Two settings of (learning_rate, weight_decay, momentum) x seeds 4, 5 as one program: the
  members (0.05, 0, 0.9, seed 5) and (0.2, 1e-3, 0.5, seed 4) end as their single runs."""
  common = {'optimizer': 'sgd', 'lr_schedule': schedule, 'seed': 4, 'learning_rate': 0.1}
  settings = {'learning_rate': (0.05, 0.2), 'weight_decay': (0.0, 1e-3), 'momentum': (0.9, 0.5)}
  population = launcher.run(_population_config(settings, num_seeds=2, **common),
                            str(tmp_path / 'population'))
  members = population['members']
  assert members['seed'] == [4, 5, 4, 5] and members['learning_rate'] == [0.05, 0.05, 0.2, 0.2]
  assert members['momentum'] == [0.9, 0.9, 0.5, 0.5] and 'std' not in population
  for k, single in ((1, dict(learning_rate=0.05, weight_decay=0.0, momentum=0.9, seed=5)),
                    (2, dict(learning_rate=0.2, weight_decay=1e-3, momentum=0.5, seed=4))):
    alone = launcher.run(tiny(mnist1d, **{**common, **single}), str(tmp_path / str(k)))
    assert members['val_loss'][k] == pytest.approx(alone['val_loss'], rel=1e-5, abs=1e-6)
    assert members['val_accuracy'][k] == pytest.approx(alone['val_accuracy'])
    for mine, theirs in zip(jax.tree.leaves(_params(tmp_path / 'population')),
                            jax.tree.leaves(_params(tmp_path / str(k))), strict=True):
      np.testing.assert_allclose(mine[k], theirs, rtol=1e-5, atol=1e-6)
  assert len(set(members['val_loss'])) == 4


@pytest.mark.parametrize('overrides,settings,message', [
    ({'num_seeds': 0}, {}, 'config.num_seeds=0 must be at least 1'),
    ({'num_seeds': 2, 'lr_finder': True}, {}, 'config.lr_finder .* needs config.num_seeds=1'),
    ({}, {'learning_rate': (0.1, 0.2), 'seed': (1, 2, 3)}, 'must have equal lengths'),
    ({'optimizer': 'adam'}, {'momentum': (0.5, 0.9)}, "config.optimizer='adam' has no momentum"),
    ({}, {'weight_decay': (0.1, -1.0)}, r'weight_decay holds -1.0; it takes numbers >= 0'),
    ({'lr_finder': True}, {'learning_rate':
        (0.1, 0.2)}, 'config.lr_finder .* no config.population'),
    ({'num_seeds': 2, 'population_steps_per_execution': 2
     }, {}, 'population_steps_per_execution=2 must divide the 3 steps of an epoch'),
])
def test_bad_populations_are_clear_errors(tmp_path, overrides, settings, message):
  with pytest.raises(UserError, match=message):
    launcher.run(_population_config(settings, **overrides), str(tmp_path))


def test_experiments_whose_results_need_one_models_weights_refuse_a_population(tmp_path):
  with pytest.raises(UserError, match="experiment 'celsius' computes its results from one"):
    launcher.run(tiny(celsius, num_seeds=2), str(tmp_path / 'celsius'))
  with pytest.raises(UserError, match='activation_study trains its seeds one by one'):
    launcher.run(tiny(forecast, activation_study=True, num_seeds=2), str(tmp_path / 'study'))
  assert not (tmp_path / 'celsius').exists()  # Refused before the workdir is made.


_STACKED_LSTM_POPULATION = """
from lib import cpu
cpu.configure()
import numpy as np
from configs import forecast
from lib import models, parallel, train
config = forecast.get_config('conv_lstm')
config.num_seeds = 3
model = models.create(config.model, outputs=1, **config.model_kwargs)
tx = train.create_optimizer(config, train.learning_rate_schedule(config, 100, 10))
state = train.create_train_state(config, model, (config.window_size,), np.float32, tx,
                                 parallel.replicated(parallel.make_mesh()))
print(train.members(state))
"""


def test_a_population_of_stacked_lstms_initializes():
  """:conv_lstm's two LSTM(64) layers, 3 seeds: their orthogonal initializers' QRs.

  Batched over a vmapped init, two such QRs at once wait on XLA:CPU's thread pool from
  inside it and never return on 2 cores; a subprocess, so that a hang fails the test.
  """
  done = subprocess.run([sys.executable, '-c', _STACKED_LSTM_POPULATION], capture_output=True,
                        text=True, timeout=240, cwd=pathlib.Path(__file__).parents[1])
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.split() == ['3']


def test_a_population_that_needs_more_memory_than_is_free_names_how_many_members_fit(monkeypatch):
  from lib.errors import PopulationTooLarge  # pylint: disable=g-import-not-at-top
  from lib.train import population  # pylint: disable=g-import-not-at-top
  population.require_fit(4, needed=100, free=None)  # Unknown: no check.
  population.require_fit(4, needed=100, free=100)
  with pytest.raises(PopulationTooLarge, match='at most 2 members fit') as raised:
    population.require_fit(4, needed=100 * population.MIB, free=60 * population.MIB)
  assert raised.value.fits == 2 and '--max_members=2' in str(raised.value)
  monkeypatch.setenv(population.MEMORY_ENV, '1.5')
  assert population.free_memory(jax.devices()[0]) == int(1.5 * population.MIB)
  monkeypatch.delenv(population.MEMORY_ENV)
  assert population.free_memory(jax.devices()[0]) > 0  # The host's available memory.
