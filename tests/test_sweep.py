"""experiments.sweep: a grid of runs, resumable point by point, summarized as mean ± std over seeds."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO


def _sweep(*args):
  return subprocess.run([sys.executable, '-m', 'experiments.sweep', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=900)


def test_a_sweep_of_3_seeds_by_2_rates_summarizes_and_reruns_without_training(tmp_path):
  args = [
      '--config=configs/mnist1d.py:tiny', f'--workdir={tmp_path}', '--grid=seed=0,1,2',
      '--grid=learning_rate=0.01,0.001', '--plot=learning_rate:val_accuracy'
  ]
  first = _sweep(*args)
  assert first.returncode == 0, first.stderr[-3000:]
  with open(tmp_path / 'summary.json') as f:
    summary = json.load(f)
  assert len(summary['points']) == 6 and not summary['failed']
  assert len({p['name'] for p in summary['points']}) == 6
  for entry in summary['summary']:
    assert entry['n'] == 3
    seeds = [
        p['metrics']['val_loss']
        for p in summary['points']
        if p['point']['learning_rate'] == entry['point']['learning_rate']
    ]
    assert entry['val_loss']['mean'] == pytest.approx(np.mean(seeds))
    assert entry['val_loss']['std'] == pytest.approx(np.std(seeds, ddof=1))
    assert entry['val_loss']['n'] == 3
  assert os.path.getsize(tmp_path / 'plots' / 'val_accuracy_by_learning_rate.png') > 1000
  results = sorted(tmp_path.glob('*/results.json'))
  assert len(results) == 6
  stamps = [r.stat().st_mtime_ns for r in results]

  again = _sweep(*args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stderr.count('done before, skipped') == 6 and ': running' not in again.stderr
  assert [r.stat().st_mtime_ns for r in results] == stamps  # Nothing trained or rewritten.

  # A damaged results.json (here cut short) is set aside and its point runs again: it resumes
  # from its final checkpoint and reports what it reported before.
  damaged = results[2]
  damaged.write_bytes(damaged.read_bytes()[:200])
  third = _sweep(*args)
  assert third.returncode == 0, third.stderr[-3000:]
  assert third.stderr.count('done before, skipped') == 5, third.stderr[-3000:]
  assert f'{damaged} is damaged (not JSON' in third.stderr and 'Traceback' not in third.stderr
  with open(tmp_path / 'summary.json') as f:
    rerun = json.load(f)['summary']
  scores = lambda table: [{k: v
                           for k, v in e.items()
                           if k.startswith(('val_', 'test_'))}
                          for e in table]
  assert scores(rerun) == scores(summary['summary']) and scores(rerun)[0]


def _summary(workdir):
  with open(workdir / 'summary.json') as f:
    return json.load(f)


def test_points_that_differ_in_seed_and_rate_train_as_one_population_equal_to_runs_in_a_row(
    tmp_path):
  args = ['--config=configs/mnist1d.py:tiny', '--grid=seed=0,1', '--grid=learning_rate=0.01,1e9']
  together = _sweep(*args, f'--workdir={tmp_path / "together"}')
  assert together.returncode == 0, together.stderr[-3000:]
  assert '4 points as one population' in together.stderr and ': running' not in together.stderr
  alone = _sweep(*args, f'--workdir={tmp_path / "alone"}', '--nopopulations')
  assert alone.returncode == 0, alone.stderr[-3000:]
  assert alone.stderr.count(': running') == 4
  mine, theirs = _summary(tmp_path / 'together'), _summary(tmp_path / 'alone')
  # The rate of 1e9 diverges, in the population as alone: the same two points fail.
  assert sorted(f['name'] for f in mine['failed']) == sorted(f['name'] for f in theirs['failed'])
  assert [f['point']['learning_rate'] for f in mine['failed']] == [1e9, 1e9]
  assert all('loss is' in f['error'] for f in mine['failed'])
  for a, b in zip(mine['points'], theirs['points'], strict=True):
    assert a['name'] == b['name']
    for metric in ('val_loss', 'val_accuracy'):
      assert a['metrics'][metric] == pytest.approx(b['metrics'][metric], rel=1e-5, abs=1e-6)
  assert len(mine['summary']) == 1 and mine['summary'][0]['n'] == 2
  populations = list((tmp_path / 'together' / 'populations').iterdir())
  assert len(populations) == 1 and (populations[0] / 'results.json').exists()


def test_local_workers_give_the_summary_of_the_serial_sweep_and_report_failures_with_logs(tmp_path):
  args = [
      '--config=configs/mnist1d.py:tiny', '--grid=seed=0,1', '--grid=learning_rate=0.01,1e9',
      '--nopopulations'
  ]
  serial = _sweep(*args, f'--workdir={tmp_path / "serial"}')
  assert serial.returncode == 0, serial.stderr[-3000:]
  local = _sweep(*args, f'--workdir={tmp_path / "local"}', '--launcher=local', '--workers=2')
  assert local.returncode == 0, local.stderr[-3000:]
  mine, theirs = _summary(tmp_path / 'local'), _summary(tmp_path / 'serial')
  for a, b in zip(mine['points'], theirs['points'], strict=True):  # Threads apart, the same runs.
    assert a['name'] == b['name']
    for metric in ('val_loss', 'val_accuracy', 'test_accuracy', 'steps'):
      assert a['metrics'][metric] == pytest.approx(b['metrics'][metric], rel=1e-5, abs=1e-6)
  assert [e['name'] for e in mine['summary']] == [e['name'] for e in theirs['summary']]
  assert sorted(f['name'] for f in mine['failed']) == sorted(f['name'] for f in theirs['failed'])
  for failure in mine['failed']:  # Each diverged job: its error's last line and its log.
    assert 'loss is' in failure['error'] and os.path.isfile(failure['log'])
    with open(failure['log']) as f:
      assert 'NonFiniteLossError' in f.read()
  # Rerunning runs only what is left: the failed points.
  again = _sweep(*args, f'--workdir={tmp_path / "local"}', '--launcher=local', '--workers=2')
  assert again.returncode == 0 and again.stderr.count('done before, skipped') == 2


@pytest.mark.parametrize('grid,message', [
    ('learning_rate', 'write FIELD=V1,V2'),
    ('lerning_rate=0.1', "the config has no field 'lerning_rate'"),
    ('num_epochs=two', "'two' is not of type int"),
])
def test_bad_grids_are_one_error_line(tmp_path, grid, message):
  out = _sweep('--config=configs/mnist1d.py:tiny', f'--workdir={tmp_path}', f'--grid={grid}')
  assert out.returncode != 0 and 'Traceback' not in out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith('error:') and message in out.stderr


def test_a_population_too_large_for_the_memory_it_may_take_runs_as_smaller_groups(tmp_path):
  args = ['--config=configs/mnist1d.py:tiny', '--grid=seed=0,1,2,3']
  whole = _sweep(*args, f'--workdir={tmp_path / "whole"}')
  assert whole.returncode == 0, whole.stderr[-3000:]
  (population,) = (tmp_path / 'whole' / 'populations').iterdir()
  with open(population / 'results.json') as f:
    needed = json.load(f)['memory_needed_mb']  # The 4 members' steps, from XLA's analysis.
  assert needed > 0
  # Memory for about 3 of the 4 members: the population stops before its first step and its
  # points run in groups that fit, each member as it trained in the whole population.
  env = {**os.environ, 'JAXNOTES_POPULATION_MEMORY_MB': str(needed * 0.8)}
  split = subprocess.run([
      sys.executable, '-m', 'experiments.sweep', *args, f'--workdir={tmp_path / "split"}'
  ], cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
  assert split.returncode == 0, split.stderr[-3000:]
  assert 'a population of 4 members needs' in split.stderr and 'at most 3 members fit' in split.stderr
  assert 'the 4 points run in groups of 3' in split.stderr
  trained = [
      p.name.split('-')[0]
      for p in (tmp_path / 'split' / 'populations').iterdir()
      if (p / 'results.json').exists()
  ]
  assert trained == ['3_points'] and split.stderr.count(': running') == 1  # 3 together, 1 alone.
  mine, theirs = _summary(tmp_path / 'split'), _summary(tmp_path / 'whole')
  assert not mine['failed'] and len(mine['points']) == 4
  for a, b in zip(mine['points'], theirs['points'], strict=True):
    for metric in ('val_loss', 'val_accuracy'):
      assert a['metrics'][metric] == pytest.approx(b['metrics'][metric], rel=1e-5, abs=1e-6)
