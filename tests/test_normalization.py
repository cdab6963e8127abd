"""Normalization: the toy valley, and the experiment end to end."""
import os

import pytest

from configs import normalization as norm_config
from experiments import normalization as norm_experiment
import experiments.__main__ as launcher
from lib import input_pipeline, models, tasks, train
from lib.errors import UserError
from tests.conftest import mock_tfds, read_results, tiny


def test_toy_valley_is_elongated_before_standardizing_and_round_after():
  toy = norm_experiment.toy_problem(scale=10.0, seed=0)
  assert 50 < toy['raw']['condition'] < 200  # ~scale²: the inputs' variances differ 100x.
  assert toy['standardized']['condition'] < 1.5
  assert toy['standardized']['steps'] < 20
  assert toy['raw']['steps'] > 20 * toy['standardized']['steps']
  # Both reach the same predictions: the raw weights are the standardized ones over the stds.
  raw_end, std_end = toy['raw']['path'][-1], toy['standardized']['path'][-1]
  stds = toy['raw']['x'].std(0)
  assert raw_end * stds == pytest.approx(std_end, rel=1e-2)


def test_unknown_normalization_in_the_comparison_is_a_clear_error(tmp_path):
  with mock_tfds(16), pytest.raises(UserError, match="normalization='minmax' is unknown"):
    launcher.run(tiny(norm_config, normalizations=('unit', 'minmax')), str(tmp_path))


def test_normalization_tiny_writes_results_and_plots(tmp_path):
  with mock_tfds(64):
    launcher.run(tiny(norm_config), str(tmp_path))
  results = read_results(tmp_path)
  for mode in ('none', 'unit', 'standardize'):
    assert len(results[mode]['sweep']) == 2
    assert 'largest_learning_rate_that_trains' in results[mode]
  assert results['toy']['raw']['steps'] > results['toy']['standardized']['steps']
  for plot in ('toy_contours', 'lr_sweep', 'loss_curves'):
    assert os.path.getsize(tmp_path / 'plots' / f'{plot}.png') > 1000


def test_on_real_mnist_raw_pixels_lose_at_the_shared_rate(mnist_data_dir, tmp_path):
  """The notes' claim at the config's shared rate, 1,000 steps: 0..255 pixels far behind [0, 1]."""
  accuracy = {}
  for normalization in ('none', 'unit'):
    config = norm_config.get_config()
    config.update(data_dir=mnist_data_dir, normalization=normalization, num_epochs=10,
                  checkpoint_every_epochs=10, best_metric='', eval_batch_size=2000)
    data = input_pipeline.image_classification(config)
    model = models.create(config.model, outputs=10, **config.model_kwargs)
    _, results = train.fit(config, str(tmp_path / normalization), model=model,
                           task=tasks.classification, train=data.train, val=data.val)
    accuracy[normalization] = results['val_accuracy']
  assert accuracy['unit'] > 0.85 and accuracy['unit'] > accuracy['none'] + 0.2, accuracy
