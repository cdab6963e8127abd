"""Celsius to Fahrenheit (Udacity l02c01): 7 pairs, one Dense unit, Adam 0.1, the 7 as one batch.

Command:
  python -m experiments --config=configs/celsius.py --workdir=runs/celsius
Variants (--config=configs/celsius.py:VARIANT):
  ''           the notebook: 500 epochs. Expected: not yet converged, like the
               notebook's weight 1.8283, bias 28.45 (about 1.82 and 29 here).
  converged    2000 epochs. Expected: |weight - 1.8| < 0.005, |bias - 32| < 0.1
               (the 7 rounded pairs' least-squares fit is 1.7979, 31.9525).
  three_layer  the notebook's Dense(4) → Dense(4) → Dense(1), no activations: still
               a line, reported as its effective weight and bias.
  tiny         20 epochs, for tests.
Hardware and time: 2-core CPU, 2-3 s a process (README results table). No download.
"""
import ml_collections

from configs import common

# Every variant get_config takes ('' is the config as it is).
VARIANTS = ('', 'converged', 'three_layer', 'tiny')


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = common.training('celsius')
  c.model = 'mlp'
  c.model_kwargs = ml_collections.ConfigDict({'hidden': (), 'outputs': 1,
                                              'activation': 'linear'})  # Dense(1): f = w * c + b.
  c.optimizer = 'adam'
  c.learning_rate = 0.1
  c.batch_size = 7  # All 7 pairs in one batch, so one step per epoch (as in Keras' fit).
  c.eval_batch_size = 7
  c.num_epochs = 500
  # An epoch is one step here: 100 epochs per compiled call, evaluated and saved
  # after each call, so per-epoch chores do not dominate.
  c.steps_per_execution = 100
  c.eval_every_epochs = 100
  c.checkpoint_every_epochs = 100
  c.log_every_steps = 100
  c.best_metric = ''  # The notebook keeps the last weights.
  if variant == 'converged':
    c.num_epochs = 2000
  elif variant == 'three_layer':
    c.model_kwargs.hidden = (4, 4)
  elif variant == 'tiny':
    c.num_epochs = 20
    c.steps_per_execution = c.eval_every_epochs = c.checkpoint_every_epochs = 10
    c.log_every_steps = 5
  elif variant:
    raise ValueError(
        f"unknown variant {variant!r}; choose '', 'converged', 'three_layer' or 'tiny'")
  return c
