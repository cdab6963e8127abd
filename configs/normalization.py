"""Input normalization: raw pixels (0..255) vs [0, 1] vs standardized, with plain SGD.

For each normalization: a learning-rate sweep (the largest rate that still
trains) and loss curves at one shared rate; plus the notes' picture, a
two-parameter least-squares problem whose inputs differ in scale, solved by
gradient descent before and after standardizing (loss contours and path).
Commands:
  python -m experiments --config=configs/normalization.py --workdir=runs/normalization \
      --config.manual_dir=../shared/data/mnist
  python -m experiments --config=configs/normalization.py --workdir=runs/normalization_fashion \
      --config.dataset=fashion_mnist --config.manual_dir=../shared/data/fashion_mnist
Expected: raw pixels train only at learning rates 100-1,000 times smaller than [0, 1]
or standardized pixels, and lose at the shared rate (MNIST 0.39 vs 0.90 and 0.94); the
toy problem needs 3,180 gradient steps raw and 4 standardized. 2-core CPU: about a minute.
Measured values, hardware and wall time: docs/experiments.md (normalization).
Smoke test: --config=configs/normalization.py:tiny.
"""
import ml_collections

from configs import common

# Every variant get_config takes ('' is the config as it is).
VARIANTS = ('', 'tiny')


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = common.tfds_data(common.training('normalization'), 'mnist')
  c.model = 'mlp'
  c.model_kwargs = ml_collections.ConfigDict({'hidden': (128,), 'activation': 'relu'})
  c.optimizer = 'sgd'  # Plain SGD: Adam's per-parameter scaling would hide the input scale.
  c.momentum = 0.0
  c.learning_rate = 0.01  # The shared rate of the loss curves.
  c.batch_size = 128
  c.steps_per_epoch = 100  # An "epoch" is 100 steps: 20 points on each loss curve.
  c.num_epochs = 20
  c.steps_per_execution = 10
  c.log_every_steps = 100
  c.best_metric = 'val_accuracy'
  c.best_mode = 'max'

  c.normalizations = ('none', 'unit', 'standardize')  # Compared; each overrides normalization.
  # The sweep: one run of sweep_steps at each rate, per normalization.
  c.sweep_learning_rates = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
  c.sweep_steps = 500
  c.trains_accuracy = 0.8  # A rate "trains" when test accuracy ends at or above this.
  c.toy_scale = 20.0  # The toy problem's second input is this many times larger than the first.
  if variant == 'tiny':
    c.sweep_learning_rates = (1e-3, 1e4)  # 1e4 diverges: covers the NaN path.
    c.sweep_steps = 3
  return common.variant(c, variant)
