"""Fashion-MNIST with the Udacity l04 CNN: Conv32 → MaxPool → Conv64 → MaxPool → Dense128 → Dense10.

Command:
  python -m experiments --config=configs/fashion_cnn.py --workdir=runs/fashion_cnn \
      --config.manual_dir=../shared/data/fashion_mnist
Expected: test_accuracy >= 0.92 after 10 epochs (notebook 0.9176; published 2-conv nets 0.916-0.934).
Hardware and time: see the README results table (2-core CPU: about 8 minutes).
Smoke test: --config=configs/fashion_cnn.py:tiny.
"""
import ml_collections

from configs import common


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = common.tfds_data(common.training('classifier'), 'fashion_mnist')
  c.model = 'cnn'
  c.model_kwargs = ml_collections.ConfigDict(
      {'features': (32, 64), 'dense': 128, 'pool': 'max'})  # The notebook's CNN.
  c.optimizer = 'adam'
  c.learning_rate = 1e-3
  c.batch_size = 32
  c.num_epochs = 10
  c.log_every_steps = 500
  c.best_metric = 'val_accuracy'
  c.best_mode = 'max'
  return common.variant(c, variant)
