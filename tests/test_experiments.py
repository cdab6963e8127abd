"""Every experiment end to end: tiny runs write results.json, plots, checkpoints and events."""
import glob
import os

import pytest

from configs import celsius, fashion_cnn, fashion_mlp, gradient_descent, mnist_cnn
import experiments.__main__ as launcher
from lib.errors import UserError
from tests.conftest import mock_tfds, read_results, run_cli, tiny


def _assert_run_outputs(workdir, plots):
  for plot in plots:
    assert os.path.getsize(os.path.join(workdir, 'plots', plot)) > 1000, plot
  assert os.listdir(os.path.join(workdir, 'checkpoints'))
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  results = read_results(workdir)
  assert results['wall_seconds'] > 0 and results['config']['experiment']
  return results


@pytest.mark.parametrize('config_module', [mnist_cnn, fashion_mlp, fashion_cnn])
def test_classifier_tiny(config_module, tmp_path):
  with mock_tfds(64):
    launcher.run(tiny(config_module), str(tmp_path))
  results = _assert_run_outputs(tmp_path, ['curves.png', 'predictions.png'])
  assert results['steps'] == 6 and len(results['history']) == 2
  assert 0 <= results['test_accuracy'] <= 1 and results['test_loss'] > 0


def test_celsius_tiny_and_three_layer(tmp_path):
  launcher.run(celsius.get_config('tiny'), str(tmp_path / 'tiny'))
  results = _assert_run_outputs(tmp_path / 'tiny', ['loss.png'])
  assert {'weight', 'bias', 'prediction_100c'} <= set(results)
  assert results['prediction_100c'] == pytest.approx(100 * results['weight'] + results['bias'],
                                                     rel=1e-4)
  three = celsius.get_config('three_layer')
  three.num_epochs = 20
  launcher.run(three, str(tmp_path / 'three'))
  assert read_results(tmp_path / 'three')['params'] == (1 * 4 + 4) + (4 * 4 + 4) + (4 * 1 + 1)


def test_celsius_converged_variant_meets_its_bar(tmp_path):
  results = launcher.run(celsius.get_config('converged'), str(tmp_path))
  assert abs(results['weight'] - 1.8) < 0.005 and abs(results['bias'] - 32) < 0.1, results


def test_gradient_descent_reaches_4_by_hand_and_with_optax(tmp_path):
  results = launcher.run(gradient_descent.get_config(), str(tmp_path))
  _assert_run_outputs(tmp_path, ['x_per_step.png'])
  assert abs(results['x_final'] - 4) < 1e-3 and abs(results['x_final_optax'] - 4) < 1e-3
  assert results['x_final'] == pytest.approx(results['x_final_closed_form'], abs=1e-5)
  assert launcher.run(gradient_descent.get_config(), str(tmp_path)) == results  # Resumed, same.


def test_unknown_experiment_and_unwritable_workdir_are_clear_errors(tmp_path):
  config = celsius.get_config('tiny')
  config.experiment = 'celcius'
  with pytest.raises(UserError, match=r"config.experiment='celcius' is unknown; choose one of"):
    launcher.run(config, str(tmp_path))
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  with pytest.raises(UserError, match=r'--workdir=.* cannot be written'):
    launcher.run(celsius.get_config('tiny'), str(blocker / 'run'))


def test_cli_runs_reports_where_outputs_are_and_rejects_bad_input(tmp_path):
  ok = run_cli('--config=configs/celsius.py:tiny', f'--workdir={tmp_path}/run',
               '--config.learning_rate=0.2')
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert f'are in {tmp_path}/run' in ok.stderr.strip().splitlines()[-1]
  assert read_results(tmp_path / 'run')['config']['learning_rate'] == 0.2

  unknown = run_cli('--config=configs/celsius.py:tiny', f'--workdir={tmp_path}/x',
                    '--config.learning_rte=0.2')
  assert unknown.returncode != 0 and 'learning_rte' in unknown.stderr
  wrong_type = run_cli('--config=configs/celsius.py:tiny', f'--workdir={tmp_path}/x',
                       '--config.num_epochs=many')
  assert wrong_type.returncode != 0 and 'num_epochs' in wrong_type.stderr
  bad_value = run_cli('--config=configs/celsius.py:tiny', f'--workdir={tmp_path}/x',
                      '--config.optimizer=adamm')
  assert bad_value.returncode == 1
  assert bad_value.stderr.strip().splitlines()[-1] == (
      "error: config.optimizer='adamm' is unknown; choose one of ['sgd', 'adam']")
  assert not os.path.exists(tmp_path / 'x' / 'checkpoints')  # Failed before any work.


def test_a_run_without_tfds_data_never_imports_tensorflow_and_logs_by_epoch_or_time(tmp_path):
  out = run_cli('--config=configs/celsius.py', f'--workdir={tmp_path}', report_tensorflow=True)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'tensorflow imported: False' in out.stdout
  # 500 one-step epochs, 100 per compiled call and evaluation: a handful of lines.
  epoch_lines = [line for line in out.stderr.splitlines() if '] epoch ' in line]
  assert 1 <= len(epoch_lines) <= 5, epoch_lines
  assert len(read_results(tmp_path)['history']) == 500
