"""Forecasting a time series: RNN input/output shapes, ReLU vs tanh, and the training tricks.

The course's synthetic series (trend + yearly seasonality + noise) is cut into
windows of `window_size` past values, shaped (batch, window, 1) for the
recurrent models: the notes' 3-D RNN input (batch, time, features). Each
model forecasts the next value; the validation period (t >= split_time) is
forecast window by window and compared, by MAE, with the course's baselines:
the last value, a moving average, and seasonal differencing plus a moving
average (plus the smoothed past). The models train on standardized values;
the loss (Huber) and MAE are taken in the series' own units. Early stopping
and the best checkpoint (restored at the end) are the engine's; so is the LR
range test (--config.lr_finder=True).
"""
import copy
import functools
import os
from typing import Any

from absl import logging
import jax
import matplotlib.pyplot as plt
import ml_collections
import numpy as np

from lib import input_pipeline
from lib import models
from lib import plots
from lib import tasks
from lib import train
from lib.errors import NonFiniteLossError, UserError

# The results are fit's metrics (the activation study excepted, which trains one seed per run).
REPORTS_EACH_MEMBER = True


def make_series(config: ml_collections.ConfigDict) -> np.ndarray:
  """The course's series: baseline + slope·t + seasonality + Gaussian noise, float32."""
  t = np.arange(config.series_length, dtype=np.float32)
  season = (t % config.period) / config.period
  pattern = np.where(season < 0.4, np.cos(season * 2 * np.pi), 1 / np.exp(3 * season))
  noise = np.random.RandomState(config.series_seed).randn(len(t)) * config.noise_level
  return (config.baseline + config.slope * t + config.amplitude * pattern + noise).astype(
      np.float32)


def windows(series: np.ndarray, window: int, start: int, stop: int, lag: int = 0,
            lookahead: int = 0) -> dict[str, np.ndarray]:
  """Inputs of the past `window` values and targets series[t], t in [start, stop).

  Args:
    series: the (standardized) series.
    window: past values per input.
    start, stop: the targets' time range (t starts no earlier than the inputs allow).
    lag: if positive, a second feature: the values `lag` steps earlier, shifted
      `lookahead` steps forward: series[t - window + i - lag + lookahead] at
      position i, so that the target's anniversary t - lag lies in the window.
    lookahead: see lag; less than `lag`, so every input value is in the past.

  Returns:
    'x' (n, window, 1 or 2), 'y' (n,), 't' (n,) the targets' times.
  """
  first = max(start, window, window + lag - lookahead)
  targets = np.arange(first, stop)
  x = [np.stack([series[t - window:t] for t in targets])]
  if lag:
    shift = lag - lookahead
    x.append(np.stack([series[t - window - shift:t - shift] for t in targets]))
  return {
      'x': np.stack(x, -1).astype(np.float32), 'y': series[targets].astype(np.float32), 't': targets
  }


def moving_average(series: np.ndarray, window: int) -> np.ndarray:
  """forecast[i] = mean(series[i:i + window]): the forecast of series[i + window]."""
  cumsum = np.cumsum(np.concatenate([[0.0], series]))
  return (cumsum[window:] - cumsum[:-window])[:-1] / window


def baselines(series: np.ndarray, split: int, period: int) -> dict[str, np.ndarray]:
  """The course's forecasts of series[split:], from past values only."""
  diff = series[period:] - series[:-period]  # Seasonal differencing: trend and season removed.
  diff_ma = moving_average(diff, 50)[split - period - 50:]
  return {
      'naive': series[split - 1:-1],
      'moving_average': moving_average(series, 30)[split - 30:],
      'seasonal_diff_moving_average': series[split - period:-period] + diff_ma,
      # The past year's values smoothed by a centered window of 10.
      'seasonal_diff_moving_average_smoothed_past': moving_average(
          series[split - period - 5:len(series) - period + 5], 10) + diff_ma,
  }


def _check(config: ml_collections.ConfigDict) -> None:
  if config.activation_study and config.num_seeds > 1:
    raise UserError('config.activation_study trains its seeds one by one (config.study_seeds); '
                    'it needs config.num_seeds=1')
  if not 1 <= config.window_size < config.split_time < config.series_length:
    raise UserError(f'need 1 <= config.window_size ({config.window_size}) < config.split_time '
                    f'({config.split_time}) < config.series_length ({config.series_length})')
  if config.seasonal_lag and not 0 <= config.seasonal_lookahead < config.seasonal_lag:
    raise UserError(f'config.seasonal_lookahead={config.seasonal_lookahead} must be in '
                    f'[0, config.seasonal_lag={config.seasonal_lag})')
  if config.split_time < config.period + 55:
    raise UserError(f'config.split_time={config.split_time} leaves no full season for the '
                    f'seasonal baselines: it must be at least config.period + 55')


def _fit(config, workdir, train_split, val_split, std):
  model = models.create(config.model, outputs=1, **config.model_kwargs)
  task = functools.partial(tasks.huber, delta=1.0, scale=std)
  return model, *train.fit(config, workdir, model=model, task=task, train=train_split,
                           val=val_split)


def _activation_study(config, workdir, train_split, val_split, std, naive_mae):
  """The SimpleRNN with tanh and with ReLU over seeds x learning rates (SGD with momentum).

  A run diverges when its loss turns NaN or inf, or when it ends with a
  validation MAE over 3x the naive forecast's.
  """
  runs = []
  for activation in ('tanh', 'relu'):
    for lr in config.study_learning_rates:
      for seed in config.study_seeds:
        sub = copy.deepcopy(config)
        sub.model_kwargs.activation = activation
        sub.update(seed=seed, learning_rate=lr, num_epochs=config.study_epochs, optimizer='sgd',
                   momentum=0.9, early_stopping_patience=0, restore_best=False)
        run = {'activation': activation, 'learning_rate': lr, 'seed': seed}
        try:
          summary = _fit(sub, os.path.join(workdir, 'study', f'{activation}_lr{lr:g}_seed{seed}'),
                         train_split, val_split, std)[2]
          run['val_mae'] = summary['val_mae']
          run['diverged'] = not np.isfinite(
              summary['val_mae']) or summary['val_mae'] > 3 * naive_mae
        except NonFiniteLossError as e:
          logging.info('%s diverged: %s', run, e)
          run.update(val_mae=None, diverged=True)
        runs.append(run)
  table = {}
  for activation in ('tanh', 'relu'):
    mine = [r for r in runs if r['activation'] == activation]
    kept = [r['val_mae'] for r in mine if not r['diverged']]
    table[activation] = {
        'runs': len(mine), 'diverged': sum(r['diverged'] for r in mine),
        'median_val_mae': float(np.median(kept)) if kept else None, 'best_val_mae': min(
            kept, default=None)
    }
  return {'runs': runs, 'by_activation': table}


def headline(results: dict[str, Any]) -> str:
  """Validation MAE against the best baseline (or the activation study's tally)."""
  if 'activation_study' in results:
    return '; '.join(
        f"{a}: {t['diverged']}/{t['runs']} runs diverged, median val MAE "
        f"{t['median_val_mae'] if t['median_val_mae'] is None else round(t['median_val_mae'], 2)}"
        for a, t in results['activation_study']['by_activation'].items())
  name, mae = min(results['baselines_val_mae'].items(), key=lambda kv: kv[1])
  return f"val MAE {results['val_mae']:.3f}; the best baseline ({name}) {mae:.3f}"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the configured forecaster (or runs the ReLU vs tanh study); writes results and plots.

  Args:
    config: configs/forecast.py.
    workdir: the run's directory.

  Returns:
    The results (the launcher writes them to results.json).
  """
  _check(config)
  models.create(config.model, outputs=1, **config.model_kwargs)

  series = make_series(config)
  mean, std = float(series[:config.split_time].mean()), float(series[:config.split_time].std())
  standardized = (series - mean) / std
  make = functools.partial(windows, standardized, config.window_size, lag=config.seasonal_lag,
                           lookahead=config.seasonal_lookahead)
  train_arrays = make(0, config.split_time)
  val_arrays = make(config.split_time, len(series))
  train_split = input_pipeline.from_arrays({k: train_arrays[k] for k in ('x', 'y')},
                                           config.data_shards)
  val_split = input_pipeline.from_arrays({k: val_arrays[k] for k in ('x', 'y')})
  actual = series[config.split_time:]
  forecasts = baselines(series, config.split_time, config.period)
  results: dict[str, Any] = {
      'baselines_val_mae': {k: float(np.mean(np.abs(f - actual))) for k, f in forecasts.items()},
      'train_windows': train_split.num_examples,
      'val_windows': val_split.num_examples,
  }
  plot_dir = os.path.join(workdir, 'plots')
  if config.activation_study:
    results['activation_study'] = _activation_study(config, workdir, train_split, val_split, std,
                                                    results['baselines_val_mae']['naive'])
    if jax.process_index() == 0:
      fig, ax = plt.subplots(figsize=(6, 4))
      for i, activation in enumerate(('tanh', 'relu')):
        for r in results['activation_study']['runs']:
          if r['activation'] == activation:
            y = r['val_mae'] if not r['diverged'] else 3 * results['baselines_val_mae']['naive']
            ax.scatter(r['learning_rate'] * (1.08 if i else 0.93), min(y, 60),
                       marker='x' if r['diverged'] else 'o', color=f'C{i}',
                       label=activation if r['seed'] == config.study_seeds[0] else None)
      ax.set_xscale('log')
      ax.set(xlabel='learning rate (SGD, momentum 0.9)', ylabel='validation MAE (x: diverged)',
             title='SimpleRNN 40x2: tanh vs ReLU')
      handles, labels = ax.get_legend_handles_labels()
      ax.legend(dict(zip(labels, handles)).values(), dict(zip(labels, handles)).keys())
      ax.grid(alpha=0.3)
      plots.save(fig, os.path.join(plot_dir, 'activation_study.png'))
    return results

  model, state, summary = _fit(config, workdir, train_split, val_split, std)
  variables = {'params': state.params, **state.model_state}
  forecast = np.asarray(jax.jit(model.apply)(variables, val_arrays['x']))[:, 0] * std + mean
  # The task's val_mae is the forecast's MAE over the validation period, in the series'
  # units (for a population, the mean over its models; the plot shows the first model).
  results.update(summary)
  if jax.process_index() == 0:
    if summary['history']:
      plots.training_curves(summary['history'], os.path.join(plot_dir, 'curves.png'))
    t = np.arange(len(series))
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(t, series, color='lightgray', label='series')
    ax.plot(val_arrays['t'], forecast, color='tab:red', linewidth=1,
            label=f"{config.model} forecast (MAE {np.mean(np.abs(forecast - actual)):.2f})")
    best = min(results['baselines_val_mae'], key=results['baselines_val_mae'].get)
    ax.plot(val_arrays['t'], forecasts[best], color='tab:blue', linewidth=1, alpha=0.7,
            label=f"baseline {best} (MAE {results['baselines_val_mae'][best]:.2f})")
    ax.axvline(config.split_time, color='gray', linestyle='--', linewidth=1)
    ax.set(xlabel='time', ylabel='value', title='forecast over the validation period')
    ax.legend()
    plots.save(fig, os.path.join(plot_dir, 'forecast.png'))
  return results
