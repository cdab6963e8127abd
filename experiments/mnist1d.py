"""MNIST-1D: can a CNN do everything an RNN can, and better? (the notes)

Greydanus (2020) built MNIST-1D so that model families separate: ten 1-D
digit templates padded, translated, scaled, sheared and noised into sequences
of length 40. A CNN's translation-invariant filters and a GRU's recurrence
both exploit the sequence structure that logistic regression and an MLP
cannot. The shuffled variants permute the 40 positions (one permutation for
every sequence), which takes that structure away: where the CNN's lead over the
GRU comes from its prior, it should vanish there. The data is generated
locally (the mnist1d package), then trained through the one engine and
pipeline.
"""
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from lib import input_pipeline
from lib import models
from lib import plots
from lib import tasks
from lib import train
from lib.errors import UserError

# The results are fit's metrics: config.num_seeds > 1 reports each seed's.
REPORTS_EACH_MEMBER = True


def make_dataset(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """MNIST-1D from the mnist1d package's generator: x (n, 40) float32, y (n,) int32.

  With config.shuffle_positions, every sequence's positions are permuted alike
  (the paper's shuffled MNIST-1D).
  """
  from mnist1d.data import get_dataset_args, make_dataset as generate  # pylint: disable=g-import-not-at-top
  args = get_dataset_args()
  args.num_samples, args.train_split, args.seed = (config.num_samples, config.train_fraction,
                                                   config.data_seed)
  data = generate(args)
  positions = np.arange(data['x'].shape[1])
  if config.shuffle_positions:
    positions = np.random.default_rng(config.data_seed).permutation(positions)
  return {
      'x': data['x'][:, positions].astype(np.float32), 'y': data['y'].astype(np.int32),
      'x_test': data['x_test']
                [:, positions].astype(np.float32), 'y_test': data['y_test'].astype(np.int32)
  }


def headline(results: dict[str, Any]) -> str:
  """Test accuracy."""
  return f"test accuracy {results['test_accuracy']:.4f} on {results['test_examples']} examples"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the configured model on MNIST-1D; writes results.json and plots.

  Args:
    config: configs/mnist1d.py.
    workdir: the run's directory.

  Returns:
    The results (the launcher writes them to results.json).
  """
  if not 0 < config.train_fraction < 1:
    raise UserError(f'config.train_fraction={config.train_fraction} must be in (0, 1)')
  model = models.create(config.model, outputs=10, **config.model_kwargs)
  data = make_dataset(config)
  train_split = input_pipeline.from_arrays({'x': data['x'], 'y': data['y']}, config.data_shards)
  test_split = input_pipeline.from_arrays({'x': data['x_test'], 'y': data['y_test']})
  _, summary = train.fit(config, workdir, model=model, task=tasks.classification, train=train_split,
                         val=test_split)
  results = {
      **summary, 'test_accuracy': summary['val_accuracy'], 'train_examples': len(data['y']),
      'test_examples': len(data['y_test'])
  }
  if jax.process_index() == 0:
    plot_dir = os.path.join(workdir, 'plots')
    plots.training_curves(summary['history'], os.path.join(plot_dir, 'curves.png'))
    firsts = [int(np.flatnonzero(data['y'] == d)[0]) for d in range(10)]
    plots.lines(np.arange(data['x'].shape[1]),
                {f'digit {d}': data['x'][i] + 3 * d for d, i in enumerate(firsts)},
                os.path.join(plot_dir, 'examples.png'), xlabel='position',
                ylabel='value (offset by class)', title='MNIST-1D: one training sequence per class')
  return results
