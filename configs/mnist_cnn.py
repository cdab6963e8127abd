"""MNIST with the Flax example's CNN: Conv32 → AvgPool → Conv64 → AvgPool → Dense256 → Dense10.

Command:
  python -m experiments --config=configs/mnist_cnn.py --workdir=runs/mnist_cnn \
      --config.manual_dir=../shared/data/mnist
Expected: test_accuracy >= 0.992 after 10 epochs (Flax's Linen example reported 0.9917).
Hardware and time: see the README results table (2-core CPU: about 9 minutes).
Smoke test: --config=configs/mnist_cnn.py:tiny (a few steps, seconds).
"""
import ml_collections

from configs import common


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = common.tfds_data(common.training('classifier'), 'mnist')
  c.model = 'cnn'
  c.model_kwargs = ml_collections.ConfigDict(
      {'features': (32, 64), 'dense': 256, 'pool': 'avg'})  # The Flax example's CNN.
  c.optimizer = 'sgd'
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.batch_size = 128
  c.num_epochs = 10
  c.best_metric = 'val_accuracy'
  c.best_mode = 'max'
  return common.variant(c, variant)
