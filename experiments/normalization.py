"""Input normalization: why pixels 0..255 make gradient descent hard (the notes).

A weight's gradient is proportional to its input, so inputs of very different
scales give a loss surface that is steep in some directions and flat in
others (an elongated valley): the learning rate must suit the steepest
direction and then crawls along the flat ones. Standardized inputs make the
valley round. Measured two ways: a two-parameter least-squares problem solved
by gradient descent before and after standardizing (contours and path), and
the same MLP trained by plain SGD on raw, [0, 1] and standardized pixels (a
learning-rate sweep for the largest rate that trains, and loss curves at one
shared rate).
"""
import copy
import math
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import ml_collections
import numpy as np

from lib import input_pipeline
from lib import models
from lib import plots
from lib import tasks
from lib import train
from lib.errors import NonFiniteLossError, UserError


def _check(config: ml_collections.ConfigDict) -> None:
  for mode in config.normalizations:
    input_pipeline.check_normalization(mode)
  if not config.sweep_learning_rates or any(lr <= 0 for lr in config.sweep_learning_rates):
    raise UserError(f'config.sweep_learning_rates={config.sweep_learning_rates} must be a '
                    'non-empty tuple of positive rates')
  if config.sweep_steps < config.steps_per_execution:
    raise UserError(f'config.sweep_steps={config.sweep_steps} must be at least '
                    f'config.steps_per_execution={config.steps_per_execution}')
  if config.toy_scale <= 0:
    raise UserError('config.toy_scale must be positive')


def toy_problem(scale: float, seed: int, max_steps: int = 20_000,
                tol: float = 1e-6) -> dict[str, Any]:
  """Least squares in two weights, inputs N(0, 1) and N(0, scale²), by gradient descent.

  Both versions (raw and standardized inputs) start from the same predictions
  (weights 0) and step 1/λmax (λmax: the Hessian's largest eigenvalue; 2/λmax
  diverges) until the loss is within `tol` of its minimum.

  Returns:
    For 'raw' and 'standardized': the inputs' Hessian condition number, the
    steps to converge (None past max_steps), the weight path, and the data
    (x, y) to draw contours from.
  """
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(200, 2)) * np.array([1.0, scale])
  y = x @ np.array([2.0, -3.0 / scale]) + 0.1 * rng.normal(size=200)
  out = {}
  for name, inputs in (('raw', x), ('standardized', x / x.std(0))):
    inputs = jnp.asarray(inputs, jnp.float32)
    targets = jnp.asarray(y, jnp.float32)
    loss = lambda w, inputs=inputs, targets=targets: jnp.mean((inputs @ w - targets)**2)
    eig = np.linalg.eigvalsh(2 * np.asarray(inputs).T @ np.asarray(inputs) / len(y))
    best = float(loss(jnp.linalg.lstsq(inputs, targets)[0]))
    lr = float(1.0 / eig[-1])

    def step(w, _, loss=loss, lr=lr):
      w = w - lr * jax.grad(loss)(w)
      return w, (w, loss(w))

    _, (path, losses) = jax.lax.scan(step, jnp.zeros(2), None, length=max_steps)
    done = np.flatnonzero(np.asarray(losses) - best <= tol * max(best, 1.0))
    steps = int(done[0]) + 1 if done.size else None
    out[name] = {
        'condition': float(eig[-1] / eig[0]), 'steps': steps, 'learning_rate': lr,
        'path': np.concatenate([np.zeros(
            (1, 2)), np.asarray(path)[:steps or max_steps]]), 'x': np.asarray(inputs), 'y': y
    }
  return out


def _toy_plot(toy: dict[str, Any], path: str) -> None:
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
  for ax, (name, r) in zip(axes, toy.items()):
    p = r['path']
    end = p[-1]
    span = np.abs(p - end).max(0) * 1.3 + 1e-3
    span = np.full(2, span.max())  # Equal scales: an elongated valley looks elongated.
    w1, w2 = np.meshgrid(np.linspace(end[0] - span[0], end[0] + span[0], 200),
                         np.linspace(end[1] - span[1], end[1] + span[1], 200))
    grid = np.stack([w1.ravel(), w2.ravel()], 1)
    loss = np.mean((grid @ r['x'].T - r['y'])**2, 1).reshape(w1.shape)
    ax.contour(
        w1,
        w2,
        loss,
        cmap='viridis',  # Geometric levels: the valley floor shows too.
        levels=loss.min() + np.geomspace(1e-4, 1, 16) * (loss.max() - loss.min()))
    shown = p[::max(1, len(p) // 400)]
    ax.plot(shown[:, 0], shown[:, 1], '.-', color='tab:red', markersize=3, linewidth=0.8)
    ax.set_aspect('equal')
    ax.set(
        xlabel='w1', ylabel='w2', title=f"{name} inputs: condition {r['condition']:.0f}, "
        f"{r['steps'] or 'no convergence in'} GD steps")
  fig.suptitle('loss contours and the gradient-descent path (step 1/λmax) from w = 0')
  plots.save(fig, path)


def _fit(config: ml_collections.ConfigDict, workdir: str,
         data: input_pipeline.ImageData) -> dict[str, Any] | None:
  """One training run; None if its loss became NaN or inf (it diverged)."""
  model = models.create(config.model, outputs=data.num_classes, **config.model_kwargs)
  try:
    return train.fit(config, workdir, model=model, task=tasks.classification, train=data.train,
                     val=data.val, test=data.test)[1]
  except NonFiniteLossError as e:
    logging.info('diverged (%s)', e)
    return None


def headline(results: dict[str, Any]) -> str:
  """The largest learning rate that trains, per input normalization."""
  modes = [k for k in results if k != 'toy']
  return 'largest learning rate that trains: ' + ', '.join(
      f"{m} {results[m]['largest_learning_rate_that_trains']}" for m in modes)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The toy problem, then per normalization the LR sweep and the shared-rate curves.

  Args:
    config: configs/normalization.py.
    workdir: the run's directory; each training run has its own subdirectory.

  Returns:
    The results (the launcher writes them to results.json).
  """
  _check(config)
  info = input_pipeline.image_info(config)  # Checked before any work.
  models.create(config.model, **config.model_kwargs)
  plot_dir = os.path.join(workdir, 'plots')

  toy = toy_problem(config.toy_scale, config.seed)
  results: dict[str, Any] = {
      'toy': {
          name: {k: r[k] for k in ('condition', 'steps', 'learning_rate')} for name, r in toy.items()
      }
  }
  if jax.process_index() == 0:
    _toy_plot(toy, os.path.join(plot_dir, 'toy_contours.png'))

  curves, sweeps = {}, {}
  for mode in config.normalizations:
    sub = copy.deepcopy(config)
    sub.normalization = mode
    data = input_pipeline.image_classification(sub, info=info)
    sweep = []
    for lr in config.sweep_learning_rates:
      run = copy.deepcopy(sub)
      run.update(learning_rate=lr, steps_per_epoch=config.sweep_steps, num_epochs=1)
      summary = _fit(run, os.path.join(workdir, 'sweep', f'{mode}_lr{lr:g}'), data)
      accuracy = None if summary is None else summary['test_accuracy']
      if accuracy is not None and not math.isfinite(summary['test_loss']):
        accuracy = None
      sweep.append({'learning_rate': lr, 'test_accuracy': accuracy})
    trained = [
        s['learning_rate']
        for s in sweep
        if s['test_accuracy'] is not None and s['test_accuracy'] >= config.trains_accuracy
    ]
    sweeps[mode] = sweep
    summary = _fit(sub, os.path.join(workdir, mode), data)
    curves[mode] = summary['history'] if summary else []
    results[mode] = {
        'largest_learning_rate_that_trains': max(trained, default=None),
        'best_sweep_accuracy': max(
            (s['test_accuracy'] for s in sweep if s['test_accuracy'] is not None), default=None),
        'sweep': sweep,
        'shared_rate_test_accuracy': summary['test_accuracy'] if summary else None,
        'shared_rate_test_loss': summary['test_loss'] if summary else None,
    }

  if jax.process_index() == 0:
    lrs = list(config.sweep_learning_rates)
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, sweep in sweeps.items():
      ax.plot(lrs, [np.nan if s['test_accuracy'] is None else s['test_accuracy'] for s in sweep],
              marker='o', label=mode)
    ax.axhline(config.trains_accuracy, color='gray', linestyle='--', linewidth=1)
    ax.set_xscale('log')
    ax.set(xlabel='learning rate (plain SGD)', ylabel=f'test accuracy after {config.sweep_steps} '
           'steps', title=f'{config.dataset}: which rates train (gaps: diverged)')
    ax.grid(alpha=0.3)
    ax.legend(title='pixels')
    plots.save(fig, os.path.join(plot_dir, 'lr_sweep.png'))
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, history in curves.items():
      ax.plot([h['step'] for h in history], [h['train_loss'] for h in history], label=mode)
    ax.set_yscale('log')
    ax.set(xlabel='step', ylabel='training loss',
           title=f'{config.dataset}, SGD at learning rate {config.learning_rate:g}')
    ax.grid(alpha=0.3)
    ax.legend(title='pixels')
    plots.save(fig, os.path.join(plot_dir, 'loss_curves.png'))
  return results
