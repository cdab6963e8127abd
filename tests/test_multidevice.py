"""The same run on 8 (fake CPU) devices, on 1 device and on 2 processes gives the same numbers."""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from lib import checkpoints
from tests.conftest import REPO, read_results

_RUN = r'''
import json, sys
import jax
import ml_collections
from configs import mnist_cnn
from experiments import classifier
from tests.conftest import mock_tfds, tiny
config = tiny(mnist_cnn, num_epochs=2)
if sys.argv[2] == 'batch_norm':  # One example per device: per-device statistics would differ.
  config.model = 'mlp'
  config.model_kwargs = ml_collections.ConfigDict({'hidden': (32,), 'batch_norm': True})
with mock_tfds(64):
  results = classifier.train_and_evaluate(config, sys.argv[1])
print('RESULT', json.dumps({'devices': jax.device_count(), 'history': results['history'],
                            'test_loss': results['test_loss']}))
'''


def _run(devices: int, workdir: str, model: str) -> dict:
  env = {
      **os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
      'JAX_PLATFORMS': 'cpu'
  }
  out = subprocess.run([sys.executable, '-c', _RUN, workdir, model], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  line = [l for l in out.stdout.splitlines() if l.startswith('RESULT ')][-1]
  return json.loads(line[len('RESULT '):])


@pytest.mark.parametrize('model', ['cnn', 'batch_norm'])
def test_eight_devices_match_one(tmp_path, model):
  """Batch norm included: its statistics are those of the global batch, however it is sharded."""
  one, eight = _run(1, str(tmp_path / 'one'), model), _run(8, str(tmp_path / 'eight'), model)
  assert (one['devices'], eight['devices']) == (1, 8)
  for a, b in zip(one['history'], eight['history'], strict=True):
    for key in ('train_loss', 'val_loss', 'val_accuracy'):
      assert abs(a[key] - b[key]) < 1e-4, (key, a, b)
  assert abs(one['test_loss'] - eight['test_loss']) < 1e-4


def test_two_processes_end_like_one_process_with_the_same_global_batch(tmp_path):
  """Two CPU processes on 127.0.0.1 (jax.distributed) against one process with two devices.

  With the same config.data_shards the global batch of every step holds the same
  examples in the same order, so the runs differ by float summation order at most.
  Every process holds the split on its devices; only process 0 writes results.json.
  """
  args = ['--config=configs/mnist1d.py:tiny', '--config.data_shards=2', '--config.num_epochs=4']
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  one = subprocess.run([
      sys.executable, '-m', 'experiments', *args, f'--workdir={tmp_path / "one"}'
  ], cwd=REPO, env={**env, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2'},
                       capture_output=True, text=True, timeout=300)
  assert one.returncode == 0, one.stderr[-3000:]
  port = 20000 + os.getpid() % 10000
  distributed = [
      *args, f'--workdir={tmp_path / "two"}', '--distributed',
      f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2'
  ]
  procs = [
      subprocess.Popen([sys.executable, '-m', 'experiments', *distributed, f'--process_id={i}'],
                       cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True) for i in range(2)
  ]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  one, two = read_results(tmp_path / 'one'), read_results(tmp_path / 'two')
  assert (one['devices'], two['devices']) == ('2 x cpu', '2 x cpu')
  assert '2 processes; training data on the devices' in outs[1]
  assert len(two['history']) == 4
  for a, b in zip(one['history'], two['history'], strict=True):
    for key in ('train_loss', 'val_loss', 'val_accuracy'):
      assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (key, a, b)
  assert two['test_accuracy'] == pytest.approx(one['test_accuracy'], abs=1e-6)


def _final_params(workdir) -> dict:
  ckpt = checkpoints.Checkpoints(str(workdir), keep=2)
  state, _ = ckpt.restore(ckpt.latest_step())  # Onto this process's one device.
  ckpt.close()
  return state['params']


def test_a_run_saved_on_8_devices_resumes_on_1_and_on_4_like_an_uninterrupted_run(tmp_path):
  """Orbax restores the replicated state into the new run's shardings; the data order is the step's."""
  args = [
      '--config=configs/mnist1d.py:tiny', '--config.batch_size=16', '--config.eval_batch_size=48'
  ]

  def run(devices, workdir, epochs):
    out = subprocess.run(
        [
            sys.executable, '-m', 'experiments', *args, f'--workdir={workdir}',
            f'--config.num_epochs={epochs}'
        ], cwd=REPO, capture_output=True, text=True, timeout=300, env={
            **os.environ, 'JAX_PLATFORMS': 'cpu',
            'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'
        })
    assert out.returncode == 0, out.stderr[-3000:]
    return out

  run(8, tmp_path / 'whole', 4)
  run(8, tmp_path / 'half', 2)
  whole = _final_params(tmp_path / 'whole')
  for devices in (1, 4):
    shutil.copytree(tmp_path / 'half', tmp_path / f'on{devices}')
    out = run(devices, tmp_path / f'on{devices}', 4)
    assert 'at step 6' in out.stderr and f'{devices} devices' in out.stderr
    resumed = _final_params(tmp_path / f'on{devices}')
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed), strict=True):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
    assert read_results(tmp_path / f'on{devices}')['steps'] == 12
