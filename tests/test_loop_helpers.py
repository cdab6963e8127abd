"""The loop's bookkeeping on its own: when it is time, epoch and window means, the best epoch."""
import types

import ml_collections
import numpy as np
import pytest
from clu import metrics as clu_metrics

from lib.train import evaluators
from lib.train import hooks


@pytest.mark.parametrize(
    'first,last,period,total,due',
    [
        (0, 10, 10, 100, True),  # Reached a multiple.
        (5, 25, 10, 100, True),  # Crossed two: still one event.
        (10, 19, 10, 100, False),  # Inside a period.
        (90, 95, 10, 95, True),  # The run's end, off the period.
        (0, 1, 1, 100, True),
    ])
def test_due_fires_once_a_call_crosses_a_period_or_ends_the_run(first, last, period, total, due):
  assert hooks.due(first, last, period, total) is due


def _metrics(losses, accuracies):
  """A call's stacked CLU Averages, as the train step returns them (batch of 10 each step)."""
  losses, accuracies = np.asarray(losses, np.float32), np.asarray(accuracies, np.float32)
  count = np.full(losses.shape, 10, np.int32)
  return types.SimpleNamespace(loss=clu_metrics.Average(total=losses * 10, count=count),
                               accuracy=clu_metrics.Average(total=accuracies * 10, count=count))


def test_progress_cuts_calls_into_epochs_and_windows_whatever_the_call_length():
  steps = np.arange(1, 13, dtype=np.float32)  # Step s has loss s and accuracy s / 100.
  results = []
  for per_call in (1, 4, 5):
    progress = hooks.Progress(steps_per_epoch=6, total_steps=12, log_every_steps=4)
    for first in range(0, 12, per_call):
      n = min(per_call, 12 - first)
      chunk = steps[first:first + n]
      assert progress.add(first, n, _metrics(chunk, chunk / 100)) is None
    results.append((progress.epochs, progress.windows))
  epochs, windows = results[0]
  assert all(r == results[0] for r in results)
  assert [e['epoch'] for e in epochs] == [1, 2] and [e['step'] for e in epochs] == [6, 12]
  assert epochs[0]['train_loss'] == pytest.approx(3.5) and epochs[1]['train_loss'] == 9.5
  assert epochs[1]['train_accuracy'] == pytest.approx(0.095)
  assert [(s, m['loss']) for s, m in windows] == [(4, 2.5), (8, 6.5), (12, 10.5)]


def test_progress_names_the_first_non_finite_loss_with_its_step_and_member():
  progress = hooks.Progress(steps_per_epoch=10, total_steps=100, log_every_steps=5)
  # 3 steps of a population of 2: member 1 diverges at the second step of the call.
  losses = np.array([[1.0, 1.0], [1.0, np.inf], [np.nan, np.nan]])
  assert progress.add(20, 3, _metrics(losses, np.zeros_like(losses))) == (22, np.inf, 1)
  assert not progress.epochs and not progress.windows


@pytest.mark.parametrize(
    'mode,values,best_epoch',
    [
        ('min', [3.0, 2.0, 2.0, 2.5], 2),  # A tie is no improvement: the first best stays.
        ('max', [0.5, 0.7, 0.6, 0.7], 2),
    ])
def test_checkpoint_policy_keeps_the_first_best_and_stops_after_patience(mode, values, best_epoch):
  meta = {
      'best_value': None, 'best_step': None, 'best_epoch': None, 'epochs_since_best': 0,
      'stopped_early': False
  }
  policy = evaluators.CheckpointPolicy(100, 'val_loss', mode, patience=2)
  save = [
      policy.after_evaluation(meta, {'val_loss': v}, 10 * e, e)
      for e, v in enumerate(values, start=1)
  ]
  assert save == [True, True, False, True]  # New bests, then the early stop.
  assert meta['best_epoch'] == best_epoch and meta['best_step'] == 10 * best_epoch
  assert meta['epochs_since_best'] == 2 and meta['stopped_early']
  unstoppable = dict(meta, stopped_early=False, epochs_since_best=0)
  for e in range(10):
    evaluators.CheckpointPolicy(100, 'val_loss', mode).after_evaluation(
        unstoppable, {'val_loss': values[0]}, e, e)
  assert not unstoppable['stopped_early']
  unranked = evaluators.CheckpointPolicy(100)
  assert not unranked.after_evaluation(meta, {'val_loss': 0.0}, 50, 5)
  assert policy.due(90, 100, 1000) and policy.due(950, 1000, 1000) and not policy.due(0, 99, 1000)


def test_the_config_gives_val_every_period_test_at_the_end_and_ema_beside_each():
  config = ml_collections.ConfigDict({
      'ema_decay': 0.99, 'eval_every_epochs': 2, 'validation_steps': 3
  })
  val, test = object(), object()
  found = evaluators.evaluators(config, 10, val, test)
  assert [e.prefix for e in found] == ['val_', 'val_ema_', 'test_', 'test_ema_']
  assert [e.split for e in found] == [val, val, test, test]
  assert [e.every_steps for e in found] == [20, 20, 0, 0]
  assert found[0].max_batches == 3 and found[2].max_batches is None
  assert found[0].due(19, 20, 100) and not found[0].due(20, 39, 100) and found[0].due(95, 100, 100)
  assert not found[2].due(95, 100, 100)  # The test split waits for the end of training.
  config.ema_decay = 0.0
  assert [e.prefix for e in evaluators.evaluators(config, 10, val, None)] == ['val_']
