"""The training engine: steps, the loop's bookkeeping, resume, NaN guard, signals."""
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import celsius, mnist_cnn
from experiments import celsius as celsius_experiment
from lib import checkpoints, input_pipeline, models, parallel, tasks, train
from lib.errors import DiskFull, NonFiniteLossError, UserError
from tests.conftest import REPO, mock_tfds, read_results, run_cli, tiny


def test_train_step_lowers_the_loss_on_a_fixed_batch():
  config = tiny(mnist_cnn)
  model = models.create('cnn', outputs=10, **config.model_kwargs)
  mesh = parallel.make_mesh()
  state = train.create_train_state(config, model, (28, 28, 1), np.float32,
                                   train.create_optimizer(config, lambda _: 0.05),
                                   parallel.replicated(mesh))
  rng = np.random.default_rng(0)
  batch = parallel.shard(
      {'x': rng.random((8, 28, 28, 1), np.float32), 'y': rng.integers(0, 10, 8).astype(np.int32)},
      parallel.batch_sharding(mesh))
  step = jax.jit(
      train.make_train_step(tasks.classification, train.metrics_collection(['accuracy', 'loss'])),
      donate_argnums=0)
  losses = []
  for _ in range(10):
    state, metrics = step(state, batch)
    losses.append(float(metrics.compute()['loss']))
  assert losses[-1] < 0.75 * losses[0], losses
  assert int(state.step) == 10


def test_epochs_to_steps_keras_meaning():
  config = mnist_cnn.get_config()
  assert train.epochs_to_steps(config, 60_000) == (468, 4680)  # 60000 // 128, x 10 epochs.
  config.steps_per_epoch = 100
  assert train.epochs_to_steps(config, 60_000) == (100, 1000)
  config.batch_size = 100_000
  config.steps_per_epoch = None
  with pytest.raises(UserError, match='larger than the 60000 training examples'):
    train.epochs_to_steps(config, 60_000)


@pytest.mark.parametrize('field,value,match', [
    ('steps_per_execution', 0, 'must be at least 1'),
    ('optimizer', 'lbfgs', "config.optimizer='lbfgs' is unknown"),
    ('lr_schedule', 'step', "config.lr_schedule='step' is unknown"),
    ('batch_size', 0, 'must be a positive multiple'),
    ('steps_per_epoch', 0, 'must be at least 1'),
    ('population_steps_per_execution', 0, 'must be at least 1, or None'),
])
def test_bad_engine_fields_are_clear_errors(field, value, match):
  config = mnist_cnn.get_config()
  config[field] = value
  with pytest.raises(UserError, match=match):
    train.check_config(config)


def _mock_classifier_fit(workdir, config, num_examples=64):
  with mock_tfds(num_examples):
    data = input_pipeline.image_classification(config)
  model = models.create(config.model, outputs=10, **config.model_kwargs)
  return train.fit(config, str(workdir), model=model, task=tasks.classification, train=data.train,
                   val=data.val, test=data.test)


def test_resumed_run_ends_with_the_same_params_as_an_uninterrupted_one(tmp_path):
  # A constant schedule: a cosine one would change with num_epochs, which this test varies.
  config = tiny(mnist_cnn, num_epochs=3, lr_schedule='constant',
                model_kwargs={'features': (4, 8), 'dense': 16, 'pool': 'avg'})
  straight, straight_summary = _mock_classifier_fit(tmp_path / 'straight', config)
  config.num_epochs = 1  # "Stopped" after epoch 1 ...
  _mock_classifier_fit(tmp_path / 'resumed', config)
  config.num_epochs = 3  # ... and run again.
  resumed, resumed_summary = _mock_classifier_fit(tmp_path / 'resumed', config)
  assert int(resumed.step) == int(straight.step) == 9
  jax.tree.map(np.testing.assert_array_equal, resumed.params, straight.params)
  assert resumed_summary['history'] == straight_summary['history']


def test_steps_per_execution_scans_the_same_steps(tmp_path):
  config = tiny(mnist_cnn, num_epochs=2, steps_per_epoch=6, log_every_steps=4,
                model_kwargs={'features': (4, 8), 'dense': 16, 'pool': 'avg'})
  one, one_summary = _mock_classifier_fit(tmp_path / 'one', config)
  config.steps_per_execution = 3
  three, three_summary = _mock_classifier_fit(tmp_path / 'three', config)
  assert int(three.step) == int(one.step) == 12
  # Inside the scan XLA fuses the step differently, so sums round differently: after 12 steps
  # ~1e-6 apart on some CPUs, where one step more or less moves them by ~1e-2.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), three.params,
               one.params)
  for a, b in zip(one_summary['history'], three_summary['history'], strict=True):
    assert a['train_loss'] == pytest.approx(b['train_loss'], rel=1e-5)
  config.steps_per_epoch = 7  # Rounded down to a multiple of 3.
  assert train.epochs_to_steps(config, 64) == (6, 12)


def test_early_stopping_and_best_checkpoint(tmp_path):
  # With a learning rate of 0 the metric never improves after epoch 1.
  config = tiny(mnist_cnn, num_epochs=8, learning_rate=0.0, best_metric='val_loss', best_mode='min',
                early_stopping_patience=2)
  _, summary = _mock_classifier_fit(tmp_path / 'frozen', config)
  assert summary['stopped_early'] and summary['epochs'] == 3 and summary['best_epoch'] == 1

  config = tiny(mnist_cnn, num_epochs=5, learning_rate=0.05, best_metric='val_accuracy',
                best_mode='max', restore_best=True)
  _, summary = _mock_classifier_fit(tmp_path / 'best', config)
  history = summary['history']
  best = max(h['val_accuracy'] for h in history)
  assert summary['best_val_accuracy'] == best
  assert history[summary['best_epoch'] - 1]['val_accuracy'] == best
  # The run ends on the best epoch's weights: its validation numbers come back exactly.
  assert summary['val_loss'] == pytest.approx(history[summary['best_epoch'] - 1]['val_loss'],
                                              abs=1e-6)


def test_unmeasured_best_metric_is_a_clear_error(tmp_path):
  config = tiny(mnist_cnn, best_metric='val_auc')
  with pytest.raises(UserError, match=r"best_metric='val_auc' is not measured.*val_accuracy"):
    _mock_classifier_fit(tmp_path, config)


def _diverge(workdir, steps_per_execution):
  # SGD at 0.01 is far above the stable rate for inputs up to 40: the error grows
  # ~11x per step and overflows float32 after a few dozen steps.
  config = celsius.get_config('tiny')
  config.update(optimizer='sgd', momentum=0.0, learning_rate=0.01, num_epochs=200,
                checkpoint_every_epochs=5, steps_per_execution=steps_per_execution,
                steps_per_epoch=steps_per_execution)
  with pytest.raises(NonFiniteLossError, match=r'loss is (nan|inf) at step (\d+)') as error:
    celsius_experiment.train_and_evaluate(config, str(workdir))
  return error.value, int(error.value.args[0].split(' at step ')[1].split(';')[0])


def test_nan_guard_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  error, bad_step = _diverge(tmp_path, 1)
  # Several steps per call still name the first bad step.
  assert _diverge(tmp_path / 'scan', 4)[1] == bad_step
  ckpt = checkpoints.Checkpoints(str(tmp_path), keep=2)
  good = ckpt.latest_step()
  assert good is not None and good < bad_step
  assert f'step {good})' in str(error)
  restored, _ = ckpt.restore(good)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored['params']))
  ckpt.close()


def test_an_async_save_keeps_the_meta_as_it_was_when_save_was_called(tmp_path):
  ckpt = checkpoints.Checkpoints(str(tmp_path), keep=2)
  meta = {'history': [{'epoch': e} for e in range(200)]}
  for step in range(1, 6):
    ckpt.save(step, {'w': np.full(1000, step, np.float32)}, meta)
    meta['history'].append({'epoch': 200 + step})  # The loop goes on while the save runs.
  ckpt.close()
  ckpt = checkpoints.Checkpoints(str(tmp_path), keep=2)
  for step in (4, 5):
    assert len(ckpt.restore(step)[1]['history']) == 199 + step
  ckpt.close()


def test_sigterm_saves_a_checkpoint_and_the_rerun_resumes(tmp_path):
  args = [
      sys.executable, '-m', 'experiments', '--config=configs/celsius.py', f'--workdir={tmp_path}',
      '--config.num_epochs=100000', '--config.log_every_steps=50'
  ]
  proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  seen = []
  for line in proc.stdout:  # Wait until training is under way.
    seen.append(line)
    if 'train_loss=' in line:
      break
  proc.send_signal(signal.SIGTERM)
  out = ''.join(seen) + proc.communicate(timeout=120)[0]
  assert proc.returncode == 1, out
  last = out.strip().splitlines()[-1]
  assert last.startswith('error: SIGTERM at step ') and 'checkpoint saved' in last, last
  step = int(last.split(' at step ')[1].split(':')[0])
  ckpt = checkpoints.Checkpoints(str(tmp_path), keep=2)
  assert ckpt.latest_step() == step
  ckpt.close()
  rerun = subprocess.run(args[:-2] + [f'--config.num_epochs={step + 10}'], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert f'at step {step}' in rerun.stderr and 'resumed from' in rerun.stderr


def _regression_fit(workdir, **overrides):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(256, 1)).astype(np.float32)
  y = (3 * x[:, 0] + 1 + 0.1 * rng.normal(size=256)).astype(np.float32)
  split = input_pipeline.from_arrays({'x': x, 'y': y})
  config = tiny(celsius, batch_size=32, steps_per_epoch=8, best_metric='', momentum=0.0,
                optimizer='sgd', **overrides)
  model = models.create('mlp', hidden=(), outputs=1, activation='linear')
  return train.fit(config, str(workdir), model=model, task=tasks.regression, train=split,
                   val=split)[1]


def test_lr_finder_suggests_a_rate_within_10x_of_the_best_constant_rate(tmp_path):
  rates = [10.0**e for e in range(-4, 1)] + [0.3]
  final = {
      lr: _regression_fit(tmp_path / f'grid{lr}', learning_rate=lr, num_epochs=8)['val_loss']
      for lr in rates
  }
  best = min(final, key=final.get)
  finder = _regression_fit(tmp_path / 'finder', lr_finder=True, lr_finder_start=1e-4,
                           lr_finder_epochs_per_decade=2.0, num_epochs=20)
  assert finder['stopped_early']  # The sweep reached rates where the loss is no longer finite.
  assert best / 10 <= finder['suggested_lr'] <= best * 10, (best, finder['suggested_lr'], final)
  rates_seen = finder['lr_finder']['learning_rates']
  assert rates_seen[1] / rates_seen[0] == pytest.approx(10**0.5)  # 2 epochs per decade.
  assert os.path.getsize(tmp_path / 'finder' / 'plots' / 'lr_finder.png') > 1000


def test_corrupted_latest_checkpoint_resumes_from_the_previous_good_one(tmp_path):
  config = tiny(mnist_cnn, num_epochs=3, lr_schedule='constant',
                model_kwargs={'features': (4, 8), 'dense': 16, 'pool': 'avg'})
  straight, straight_summary = _mock_classifier_fit(tmp_path / 'straight', config)
  config.num_epochs = 2  # Checkpoints at steps 3 and 6 ...
  _mock_classifier_fit(tmp_path / 'broken', config)
  latest = tmp_path / 'broken' / 'checkpoints' / '6'
  for path in latest.rglob('*'):  # ... and step 6 is damaged on disk.
    if path.is_file():
      path.write_bytes(b'\x00garbage')
  config.num_epochs = 3
  resumed, resumed_summary = _mock_classifier_fit(tmp_path / 'broken', config)
  assert (tmp_path / 'broken' / 'checkpoints_unreadable' / '6').is_dir()  # Kept for a look.
  jax.tree.map(np.testing.assert_array_equal, resumed.params, straight.params)
  assert resumed_summary['history'] == straight_summary['history']


def test_a_full_disk_stops_before_the_save_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
  config = tiny(mnist_cnn, num_epochs=3, model_kwargs={'features': (4, 8), 'dense': 16})
  real = shutil.disk_usage
  calls = []

  def disk_fills_after_the_first_save(path):
    calls.append(path)
    usage = real(path)
    return usage._replace(free=usage.free if len(calls) == 1 else 2**20)

  monkeypatch.setattr(checkpoints.shutil, 'disk_usage', disk_fills_after_the_first_save)
  with pytest.raises(
      DiskFull, match=r'no space left for checkpoint 6 .* MiB are free\. The '
      r'last complete checkpoint \(step 3\) is kept'):
    _mock_classifier_fit(tmp_path, config)
  monkeypatch.undo()
  ckpt = checkpoints.Checkpoints(str(tmp_path), keep=2)
  assert ckpt.all_steps() == [3]
  _, meta = ckpt.restore(3)
  assert len(meta['history']) == 1
  ckpt.close()


def test_a_full_disk_anywhere_is_one_line_from_the_launcher(tmp_path):
  os.symlink('/dev/full', tmp_path / 'results.json.tmp')  # Every write there: ENOSPC.
  run = run_cli('--config=configs/celsius.py:tiny', f'--workdir={tmp_path}')
  assert run.returncode == 1
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith(
      f'error: no space left on the device of --workdir={tmp_path} (OSError'), last
  assert 'Traceback' not in run.stderr


def test_kill_9_then_the_same_command_ends_like_an_uninterrupted_run(tmp_path):
  def command(workdir):
    return [
        sys.executable, '-m', 'experiments', '--config=configs/celsius.py', f'--workdir={workdir}',
        '--config.num_epochs=600', '--config.log_every_steps=20', '--config.steps_per_execution=1',
        '--config.eval_every_epochs=1', '--config.log_every_seconds=0',
        '--config.checkpoint_every_epochs=25'
    ]

  proc = subprocess.Popen(command(tmp_path / 'killed'), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  for line in proc.stdout:  # Some checkpoints in, then no chance to save anything more.
    if '] epoch 260 (' in line:
      break
  proc.kill()
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  assert not (tmp_path / 'killed' / 'results.json').exists()
  for workdir in ('killed', 'straight'):
    run = subprocess.run(command(tmp_path / workdir), cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    if workdir == 'killed':
      assert 'resumed from' in run.stderr  # From a checkpoint, not from scratch.
  killed, straight = (read_results(tmp_path / w) for w in ('killed', 'straight'))
  for key in ('weight', 'bias', 'val_loss', 'steps'):
    assert killed[key] == straight[key], key
  assert killed['history'] == straight['history']
