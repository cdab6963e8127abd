"""The LR range test (the notes' "schedule to find the rate"): `fit` with an exponentially growing rate."""
import copy
from collections.abc import Sequence
import math
import os
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import optax

from lib import input_pipeline
from lib import plots
from lib.train.loop import fit
from lib.train.state import TrainState, epochs_to_steps
from lib.train.steps import Task


def lr_sweep_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """The LR range test's exponential sweep (the course's 1e-8 * 10 ** (epoch / 20)).

  lr_finder_start * 10 ** (epoch / lr_finder_epochs_per_decade), epoch fractional.
  """
  steps_per_decade = steps_per_epoch * config.lr_finder_epochs_per_decade
  return lambda step: config.lr_finder_start * 10.0**(step / steps_per_decade)


def _lr_range_result(history: list[dict[str, Any]], schedule: optax.Schedule, steps_per_epoch: int,
                     workdir: str) -> dict[str, Any]:
  """The LR range test's curve, its suggested rate and plot (plots/lr_finder.png).

  Each epoch's mean training loss is paired with the rate at the epoch's start.
  The suggestion is a tenth of the rate at the lowest loss: the loss still falls
  steadily there, well before the rates at which it turns up (as in fastai).
  """
  rates = [float(schedule(h['step'] - steps_per_epoch)) for h in history]
  losses = [h['train_loss'] for h in history]
  finite = [i for i, loss in enumerate(losses) if math.isfinite(loss)]
  if not finite:
    return {'lr_finder': {'learning_rates': rates, 'losses': losses}, 'suggested_lr': None}
  lowest = min(finite, key=lambda i: losses[i])
  suggested = rates[lowest] / 10
  if jax.process_index() == 0:
    plots.lines(
        rates, {'training loss (epoch mean)': losses},
        os.path.join(workdir, 'plots', 'lr_finder.png'), xlabel='learning rate', ylabel='loss',
        title=f'LR range test: lowest loss at {rates[lowest]:.2g}, '
        f'suggested {suggested:.2g}', logx=True, logy=True, vline=suggested)
  return {
      'lr_finder': {'learning_rates': rates, 'losses': losses}, 'suggested_lr': suggested,
      'lowest_loss_lr': rates[lowest]
  }


def lr_range_test(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    model: nn.Module,
    task: Task,
    train: input_pipeline.Source,
    val: input_pipeline.Source,
    test: input_pipeline.Source | None = None,
    rng_streams: Sequence[str] = (),
    augment: input_pipeline.Augment | input_pipeline.Augmentation | None = None,
) -> tuple[TrainState, dict[str, Any]]:
  """The LR range test (the notes' "schedule to find the rate") on the same engine.

  Trains with `lr_sweep_schedule` in place of the config's schedule, without
  early stopping or a best checkpoint, until the loss turns non-finite or
  config.num_epochs end; adds the loss-vs-rate curve, `suggested_lr` and
  plots/lr_finder.png to the results. Arguments as `fit`'s.
  """
  steps_per_epoch, _ = epochs_to_steps(config, train.num_examples)
  schedule = lr_sweep_schedule(config, steps_per_epoch)
  without_selection = copy.deepcopy(config)
  without_selection.update(early_stopping_patience=0, restore_best=False, best_metric='')
  state, results = fit(without_selection, workdir, model=model, task=task, train=train, val=val,
                       test=test, rng_streams=rng_streams, augment=augment, schedule=schedule,
                       end_on_nonfinite=True)
  results.update(_lr_range_result(results['history'], schedule, steps_per_epoch, workdir))
  return state, results
