"""Fashion-MNIST with the Udacity l03 network: Flatten → Dense128 ReLU → Dense10, Adam, batch 32.

Command:
  python -m experiments --config=configs/fashion_mlp.py --workdir=runs/fashion_mlp \
      --config.manual_dir=../shared/data/fashion_mnist
Expected: test_accuracy >= 0.88 after 5 epochs (the notebook got 0.8665).
Hardware and time: see the README results table (2-core CPU: about 1 minute).
Smoke test: --config=configs/fashion_mlp.py:tiny.
"""
import ml_collections

from configs import common


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = common.tfds_data(common.training('classifier'), 'fashion_mnist')
  c.model = 'mlp'
  c.model_kwargs = ml_collections.ConfigDict({'hidden': (128,), 'activation': 'relu'})
  c.optimizer = 'adam'
  c.learning_rate = 1e-3  # Keras' Adam default.
  c.batch_size = 32
  c.num_epochs = 5
  c.log_every_steps = 500
  c.best_metric = 'val_accuracy'
  c.best_mode = 'max'
  return common.variant(c, variant)
