"""experiments.search: Optuna trials over a config's fields, pruned by epoch, resumable after kill -9."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from configs import mnist1d
from experiments import search
from lib.errors import UserError
from tests.conftest import REPO

_TINY = ['--config=configs/mnist1d.py:tiny', '--config.num_epochs=40']


def _search(*args, **kwargs):
  return subprocess.Popen([sys.executable, '-m', 'experiments.search', *args], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_the_space_parses_each_kind_with_the_fields_types():
  space = search.parse_space([
      'learning_rate=log:1e-4:1e-1', 'weight_decay=uniform:0:0.01', 'batch_size=int:10:40',
      'model_kwargs.features=choice:(8,8,8),(16,16,16)'
  ], mnist1d.get_config('tiny'))
  assert [d.kind for d in space] == ['log', 'uniform', 'int', 'choice']
  assert space[0].low == 1e-4 and space[0].high == 0.1
  assert space[3].choices == ((8, 8, 8), (16, 16, 16))


@pytest.mark.parametrize('spec,message', [
    ('lerning_rate=log:1e-4:1', "the config has no field 'lerning_rate'"),
    ('learning_rate=log:1e-1:1e-4', 'the range [0.1, 0.0001] is empty'),
    ('learning_rate=log:0:1', 'empty or not positive'),
    ('learning_rate=normal:0:1', "KIND one of ['log', 'uniform', 'int', 'choice']"),
    ('optimizer=choice:adam', 'at least two choices'),
])
def test_a_bad_space_is_one_error(spec, message):
  with pytest.raises(UserError, match=re.escape(message)):
    search.parse_space([spec], mnist1d.get_config('tiny'))


@pytest.mark.parametrize('args,message', [
    (['--space=learning_rate=log:1e-3:1e-1', '--metric=loss'], 'choose a val_* metric'),
    (['--space=learning_rate=log:1e-3:1e-1', '--metric=val_auc'
     ], "config.best_metric='val_auc' is not measured"),
    ([], 'no --space'),
])
def test_bad_input_is_one_line_before_any_training(tmp_path, args, message):
  out = _search(*_TINY, f'--workdir={tmp_path}', *args)
  _, stderr = out.communicate(timeout=300)
  assert out.returncode != 0 and 'Traceback' not in stderr, stderr[-2000:]
  assert stderr.strip().splitlines()[-1].startswith('error:') and message in stderr, stderr[-2000:]
  assert not list(tmp_path.glob('trials/*/checkpoints/*'))


def test_a_search_killed_midway_ends_with_its_budget_and_the_best_command(tmp_path):
  args = [
      *_TINY, f'--workdir={tmp_path}', '--space=learning_rate=log:1e-4:1e-1',
      '--space=weight_decay=uniform:0:1e-3', '--trials=8', '--metric=val_accuracy'
  ]
  first = _search(*args, start_new_session=True)
  journal = tmp_path / 'study.journal'
  deadline = time.time() + 240
  while time.time() < deadline and first.poll() is None:  # Until a third trial has begun.
    if journal.exists() and journal.read_text().count('"op_code":4') >= 3:
      break
    time.sleep(0.05)
  assert first.poll() is None, first.communicate()[1][-2000:]
  os.killpg(first.pid, signal.SIGKILL)
  first.wait()
  second = _search(*args)
  _, stderr = second.communicate(timeout=600)
  assert second.returncode == 0, stderr[-3000:]
  with open(tmp_path / 'search.json') as f:
    summary = json.load(f)
  assert summary['complete'] + summary['pruned'] == 8, summary
  assert summary['command'].startswith('python -m experiments --config=configs/mnist1d.py:tiny')
  assert '--config.learning_rate=' in summary['command'] and 'rerun it:' in stderr
  assert 'was running when the search stopped: it runs again' in stderr
  best = summary['best']
  assert best['value'] == max(t['value'] for t in summary['trials'] if t['state'] == 'COMPLETE')
  assert os.path.getsize(tmp_path / 'plots' / 'val_accuracy_by_trial.png') > 1000
