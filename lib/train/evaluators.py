"""What the loop asks after a call: which evaluations are due, and whether to save a checkpoint.

The loop holds a list of `Evaluator`s and one `CheckpointPolicy` built from
the config (`evaluators`, `checkpoint_policy`); it never reads the config's
evaluation or checkpoint fields itself. An exponential moving average of the
params (config.ema_decay) is one more evaluator on the same split.
"""
from collections.abc import Callable
import dataclasses
from typing import Any

from absl import logging
import ml_collections

from lib import input_pipeline
from lib.train.hooks import due
from lib.train.state import TrainState


def _params(state: TrainState) -> TrainState:
  return state


def _moving_average(state: TrainState) -> TrainState:
  return state.replace(params=state.ema_params)


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """One evaluation: a split, the weights it reads and the prefix of its metrics.

  Attributes:
    prefix: put before each metric's name ('val_', 'val_ema_', 'test_').
    split: the split, every example once (padding masked).
    weights: the state to evaluate, from the trained one (the params, or their average).
    every_steps: evaluate after calls that cross a multiple of this, and after
      the last; 0: once, when training is over.
    max_batches: at most this many batches (Keras' validation_steps); None: all.
  """
  prefix: str
  split: input_pipeline.Source
  weights: Callable[[TrainState], TrainState] = _params
  every_steps: int = 0
  max_batches: int | None = None

  def due(self, first: int, last: int, total: int) -> bool:
    """Whether a call that ran steps (first, last] of `total` ends with this evaluation."""
    return bool(self.every_steps) and due(first, last, self.every_steps, total)

  def __call__(self, evaluate: Callable[..., dict[str, Any]], state: TrainState) -> dict[str, Any]:
    """The metrics (a population's as arrays of its members' values), by `evaluate` (Engine's)."""
    return evaluate(self.weights(state), self.split, prefix=self.prefix,
                    max_batches=self.max_batches)


def evaluators(config: ml_collections.ConfigDict, steps_per_epoch: int, val: input_pipeline.Source,
               test: input_pipeline.Source | None) -> list[Evaluator]:
  """The run's evaluations: `val` every config.eval_every_epochs, `test` at the end; each
  twice with config.ema_decay (the params, then their moving average under '*_ema_')."""
  weights = [('', _params)] + ([('ema_', _moving_average)] if config.ema_decay else [])
  every = config.eval_every_epochs * steps_per_epoch
  found = [Evaluator(f'val_{w}', val, f, every, config.validation_steps) for w, f in weights]
  if test is not None:
    found += [Evaluator(f'test_{w}', test, f) for w, f in weights]
  return found


@dataclasses.dataclass(frozen=True)
class CheckpointPolicy:
  """When the loop saves, which checkpoint counts as best, and when training stops early.

  The loop saves the latest state every `every_steps`, at the end, on a new
  best, on an early stop and before it exits on a signal; lib.checkpoints
  keeps the latest few and the best.

  Attributes:
    every_steps: save after calls that cross a multiple of this.
    best_metric: the validation metric that ranks checkpoints ('' : none).
    best_mode: 'max' or 'min'.
    patience: stop after this many evaluations without a new best (0: never).
    restore_best: end with the best weights rather than the last.
  """
  every_steps: int
  best_metric: str = ''
  best_mode: str = 'max'
  patience: int = 0
  restore_best: bool = False

  def due(self, first: int, last: int, total: int) -> bool:
    """Whether a call that ran steps (first, last] of `total` ends with a checkpoint."""
    return due(first, last, self.every_steps, total)

  def after_evaluation(self, meta: dict[str, Any], metrics: dict[str, float], step: int,
                       epoch: int) -> bool:
    """Updates the best value and patience in `meta` (saved with each checkpoint).

    Equal values do not count as improvements: the first best epoch is kept, as in Keras.

    Returns:
      Whether to save now: a new best, or an early stop.
    """
    if not self.best_metric:
      return False
    value, best = metrics[self.best_metric], meta['best_value']
    improved = best is None or (value > best if self.best_mode == 'max' else value < best)
    if improved:
      meta.update(best_value=value, best_step=step, best_epoch=epoch, epochs_since_best=0)
    else:
      meta['epochs_since_best'] += 1
    if self.patience and meta['epochs_since_best'] >= self.patience:
      meta['stopped_early'] = True
      logging.info(
          'early stopping at epoch %d: %s has not improved for %d epochs '
          '(best %.5g at epoch %d)', epoch, self.best_metric, meta['epochs_since_best'],
          meta['best_value'], meta['best_epoch'])
    return improved or meta['stopped_early']


def checkpoint_policy(config: ml_collections.ConfigDict, steps_per_epoch: int) -> CheckpointPolicy:
  """The config's checkpoint fields, as the loop asks them."""
  return CheckpointPolicy(config.checkpoint_every_epochs * steps_per_epoch,
                          config.best_metric, config.best_mode, config.early_stopping_patience,
                          bool(config.restore_best))
