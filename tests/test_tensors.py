"""The tensors experiment: the notes' shapes and values."""
import math
import os

from configs import tensors as tensors_config
from experiments import tensors as tensors_experiment
import experiments.__main__ as launcher
from tests.conftest import read_results


def test_stacking_vs_concatenating_shapes_of_the_notes():
  shapes = tensors_experiment.stacking_vs_concatenating()
  assert shapes['concatenate (3,) (3,)'] == [6]
  assert shapes['stack (3,) (3,)'] == [2, 3]
  assert shapes['stack (3,) (3,) axis=1'] == [3, 2]
  assert shapes['concatenate (2,3) (2,3) axis=0'] == [4, 3]
  assert shapes['concatenate (2,3) (2,3) axis=1'] == [2, 6]
  assert shapes['stack (2,3) (2,3) axis=2'] == [2, 3, 2]


def test_ranks():
  r = tensors_experiment.ranks()
  assert [v['rank'] for v in r.values()] == [0, 1, 2, 3]
  assert r['RNN batch (batch, time, features)']['shape'] == [4, 30, 1]


def test_loss_from_logits_stays_finite_where_log_of_softmax_does_not():
  rows = tensors_experiment.softmax_stability((2.0, 1.0, 0.1), (1.0, 1000.0))
  small, large = rows
  assert math.isclose(small['log_of_softmax'], small['from_logits'], rel_tol=1e-5)
  assert math.isinf(large['log_of_softmax'])
  assert math.isclose(large['from_logits'], 1900.0, rel_tol=1e-4)  # 1000 * (2.0 - 0.1).


def test_kernels_are_the_weights():
  k = tensors_experiment.kernels_are_weights(0)
  assert k['dense_kernel_shape'] == [4, 3] and k['dense_bias_shape'] == [3]
  assert k['conv_kernel_shape'] == [3, 3, 1, 2]
  assert k['dense_max_error'] < 1e-5 and k['conv_max_error'] < 1e-5


def test_tensors_run_writes_results_and_plot(tmp_path):
  launcher.run(tensors_config.get_config('tiny'), str(tmp_path))
  results = read_results(tmp_path)
  assert abs(results['softmax']['sum'] - 1) < 1e-6
  assert os.path.getsize(tmp_path / 'plots' / 'tensors.png') > 1000
