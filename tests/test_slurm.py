"""experiments.sweep --launcher=slurm through a real single-node Slurm (.ci/slurm start)."""
import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _slurm_up() -> bool:
  if shutil.which('sinfo') is None:
    return False
  out = subprocess.run(['sinfo', '-h', '-o', '%T'], capture_output=True, text=True, check=False)
  return out.returncode == 0 and 'idle' in out.stdout.split()


def _sweep(*args):
  return subprocess.run([sys.executable, '-m', 'experiments.sweep', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=900)


def test_a_sweep_runs_as_a_slurm_job_array_like_the_serial_sweep(tmp_path):
  if not _slurm_up():
    pytest.skip('no Slurm here: `.ci/slurm start` (as root) starts a single-node one, as CI does')
  args = [
      '--config=configs/mnist1d.py:tiny', '--grid=seed=0,1', '--grid=learning_rate=0.01,1e9',
      '--nopopulations'
  ]
  slurm = _sweep(*args, f'--workdir={tmp_path / "slurm"}', '--launcher=slurm',
                 '--slurm_cpus_per_task=1', '--slurm_time_min=10')
  assert slurm.returncode == 0, slurm.stderr[-3000:]
  serial = _sweep(*args, f'--workdir={tmp_path / "serial"}')
  assert serial.returncode == 0, serial.stderr[-3000:]
  summaries = []
  for name in ('slurm', 'serial'):
    with open(tmp_path / name / 'summary.json') as f:
      summaries.append(json.load(f))
  mine, theirs = summaries
  assert [p['name'] for p in mine['points']] == [p['name'] for p in theirs['points']]
  for a, b in zip(mine['points'], theirs['points']):
    for metric in ('val_loss', 'val_accuracy'):
      assert a['metrics'][metric] == pytest.approx(b['metrics'][metric], rel=1e-5, abs=1e-6)
  # The diverging rate fails in its array task, with that task's log.
  assert sorted(f['name'] for f in mine['failed']) == sorted(f['name'] for f in theirs['failed'])
  assert all('loss is' in f['error'] and f['log'].endswith('_log.err') for f in mine['failed'])
  assert len(list((tmp_path / 'slurm' / 'jobs').glob('*_log.err'))) == 4  # One array, 4 tasks.
