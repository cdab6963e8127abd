"""Celsius to Fahrenheit: the notes' first regression, f = 1.8 c + 32 learned from 7 examples.

Regression predicts a number (here one output, trained with mean squared
error) where classification predicts a distribution over classes. The model's
weight and bias are read back as the line it learned: weight = f(1) - f(0),
bias = f(0), which also holds for the linear three-layer variant.
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

CELSIUS = np.array([-40, -10, 0, 8, 15, 22, 38], np.float32)
FAHRENHEIT = np.array([-40, 14, 32, 46, 59, 72, 100], np.float32)


def headline(results: dict[str, Any]) -> str:
  """The fitted line against the least-squares line and the law."""
  return (f"learned f = {results['weight']:.4f} c + {results['bias']:.3f}; least squares "
          f"{results['lstsq_weight']:.4f} c + {results['lstsq_bias']:.3f}; the law 1.8 c + 32; "
          f"100 C -> {results['prediction_100c']:.2f} F")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Fits the 7 pairs; writes the loss curve and results.json (weight, bias, prediction_100c).

  Args:
    config: configs/celsius.py.
    workdir: the run's directory.

  Returns:
    The results (the launcher writes them to results.json).
  """
  model = models.create(config.model, **config.model_kwargs)
  pairs = {'x': CELSIUS[:, None], 'y': FAHRENHEIT[:, None]}
  # No held-out data in the notebook: 'val' is the loss on the same 7 pairs.
  state, summary = train.fit(config, workdir, model=model,
                             task=tasks.regression, train=input_pipeline.from_arrays(
                                 pairs, config.data_shards), val=input_pipeline.from_arrays(pairs))

  def predict(celsius):
    x = np.asarray(celsius, np.float32).reshape(-1, 1)
    return np.asarray(jax.jit(model.apply)({'params': state.params}, x))[:, 0]

  f0, f1, f100 = predict([0.0, 1.0, 100.0])
  lstsq_weight, lstsq_bias = np.polyfit(CELSIUS, FAHRENHEIT, 1)
  results = {
      **summary,
      'weight': float(f1 - f0),
      'bias': float(f0),
      'prediction_100c': float(f100),
      # The best any line can do on these rounded pairs; 1.8 and 32 are the exact law.
      'lstsq_weight': float(lstsq_weight),
      'lstsq_bias': float(lstsq_bias),
  }
  if summary['history']:
    history = summary['history']
    plots.lines([h['epoch'] for h in history],
                {'mean squared error': [h['train_loss'] for h in history]},
                os.path.join(workdir, 'plots', 'loss.png'), xlabel='epoch', ylabel='loss',
                title=f"weight {results['weight']:.4f}, bias {results['bias']:.3f}", logy=True)
  return results
