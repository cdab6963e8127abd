"""Batch normalization: faster training and less sensitivity to the initial weights (the notes).

Ioffe & Szegedy 2015, section 4.1: an MLP of three hidden layers of 100
sigmoid units on MNIST, small Gaussian initial weights, batch 60, trained with
and without batch norm. Batch norm's statistics live in the 'batch_stats'
collection of the engine's state: batch statistics in training (over the
global batch, however it is sharded over devices), running averages in
evaluation, saved in checkpoints with the params. A grid of initialization
scales x learning rates, trained both ways, measures the sensitivity claim.
"""
import copy
import os
import time
from typing import Any

import jax
from absl import logging
import ml_collections
import numpy as np

from lib import aot
from lib import input_pipeline
from lib import models
from lib import plots
from lib import tasks
from lib import train
from lib.errors import NonFiniteLossError, UserError

VARIANTS = (('plain', False), ('batch_norm', True))


def _check(config: ml_collections.ConfigDict) -> None:
  for field in ('sensitivity_init_stds', 'sensitivity_learning_rates'):
    if not config[field] or any(v <= 0 for v in config[field]):
      raise UserError(f'config.{field}={config[field]} must be a non-empty tuple of '
                      'positive numbers')
  if config.sensitivity_epochs < 1:
    raise UserError('config.sensitivity_epochs must be at least 1')


def steps_to(history: list[dict[str, Any]], accuracy: float) -> int | None:
  """The first evaluated step whose val_accuracy reaches `accuracy`; None if none does."""
  return next((h['step'] for h in history if h['val_accuracy'] >= accuracy), None)


def _fit(config: ml_collections.ConfigDict, workdir: str, data: input_pipeline.ImageData,
         batch_norm: bool) -> dict[str, Any]:
  model = models.create(config.model, outputs=data.num_classes, batch_norm=batch_norm,
                        **config.model_kwargs)
  _, summary = train.fit(config, workdir, model=model, task=tasks.classification, train=data.train,
                         val=data.val, test=data.test)
  return summary


def headline(results: dict[str, Any]) -> str:
  """Accuracy and steps to 97% with and without batch norm."""
  return '; '.join(f"{name}: test accuracy {results[name]['test_accuracy']:.4f}, "
                   f"97% at step {results[name]['steps_to_97']}" for name, _ in VARIANTS)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains with and without batch norm, then the sensitivity grid; writes results and plots.

  Args:
    config: configs/batchnorm.py.
    workdir: the run's directory; each training run has its own subdirectory.

  Returns:
    The results (the launcher writes them to results.json).
  """
  _check(config)
  info = input_pipeline.image_info(config)  # Checked before any work.
  models.create(config.model, batch_norm=True, **config.model_kwargs)
  data = input_pipeline.image_classification(config, info=info)

  if aot.active():  # --compile_for: both models; the sensitivity grid runs the same programs.
    for name, batch_norm in VARIANTS:
      with aot.part(name):
        _fit(config, os.path.join(workdir, name), data, batch_norm)
    raise aot.Compiled()

  results: dict[str, Any] = {}
  for name, batch_norm in VARIANTS:
    run_start = time.time()
    summary = _fit(config, os.path.join(workdir, name), data, batch_norm)
    history = summary['history']
    results[name] = {
        'test_accuracy': summary['test_accuracy'],
        'steps_to_95': steps_to(history, 0.95),
        'steps_to_97': steps_to(history, 0.97),
        'accuracy_by_step': [[h['step'], h['val_accuracy']] for h in history],
        'params': summary['params'],
        'wall_seconds': round(time.time() - run_start, 2),
    }
    steps_per_epoch = summary['steps_per_epoch']

  grid = []
  for name, batch_norm in VARIANTS:
    for init_std in config.sensitivity_init_stds:
      for lr in config.sensitivity_learning_rates:
        sub = copy.deepcopy(config)
        sub.model_kwargs.init_std = init_std
        sub.update(learning_rate=lr, num_epochs=config.sensitivity_epochs)
        cell = {'batch_norm': batch_norm, 'init_std': init_std, 'learning_rate': lr}
        try:
          cell['test_accuracy'] = _fit(
              sub, os.path.join(workdir, 'sensitivity', f'{name}_std{init_std}_lr{lr}'), data,
              batch_norm)['test_accuracy']
        except NonFiniteLossError as e:  # Diverged: a finding, not a failure of the run.
          logging.info('%s: %s', cell, e)
          cell['test_accuracy'] = None
        grid.append(cell)
  results['sensitivity'] = grid
  for name, batch_norm in VARIANTS:
    accs = [c['test_accuracy'] for c in grid if c['batch_norm'] == batch_norm]
    finite = [a for a in accs if a is not None]
    results[name]['sensitivity_spread'] = {
        'min': min(finite, default=None), 'max': max(finite, default=None),
        'std': float(np.std(finite)) if finite else None, 'diverged': len(accs) - len(finite)
    }

  if jax.process_index() == 0:
    plot_dir = os.path.join(workdir, 'plots')
    steps = [s for s, _ in results['plain']['accuracy_by_step']]
    plots.lines(steps,
                {name: [a for _, a in results[name]['accuracy_by_step']] for name, _ in VARIANTS},
                os.path.join(plot_dir, 'accuracy_vs_steps.png'), xlabel='training step',
                ylabel='test accuracy', title='MNIST, 3 x 100 sigmoid units (Ioffe & Szegedy 4.1)')
    stds, lrs = config.sensitivity_init_stds, config.sensitivity_learning_rates
    plots.heatmaps(
        {
            name: np.array([[
                next(c['test_accuracy']
                     for c in grid
                     if c['batch_norm'] == bn and c['init_std'] == s and c['learning_rate'] == lr)
                for lr in lrs
            ]
                            for s in stds], dtype=float) for name, bn in VARIANTS
        }, [str(lr) for lr in lrs], [str(s) for s in stds], os.path.join(
            plot_dir, 'sensitivity.png'), xlabel='learning rate', ylabel='initial weight std',
        title=f'test accuracy after {config.sensitivity_epochs * steps_per_epoch} steps')
  return results
