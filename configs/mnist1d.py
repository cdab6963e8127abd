"""MNIST-1D (Greydanus 2020): the paper's logistic regression, MLP, CNN and GRU.

The dataset is generated locally by the mnist1d package (4000 train / 1000 test
sequences of length 40, seed 42): no download.
Commands:
  python -m experiments --config=configs/mnist1d.py:MODEL --workdir=runs/mnist1d_MODEL
  with MODEL one of logistic, mlp, cnn (the default), gru.
Expected (the paper's table): logistic 32%, MLP 68%, CNN 94%, GRU 91% test accuracy.
Measured values, hardware and wall times: README results table.
Smoke test: --config=configs/mnist1d.py:tiny.
"""
import ml_collections

from configs import common

# The paper's models: (lib.models name, attributes).
MODELS = {
    'logistic': ('mlp', {'hidden': (), 'activation': 'linear'}),
    'mlp': ('mlp', {'hidden': (100, 100), 'activation': 'relu'}),
    # Conv1d(1→25, k5, s2, pad 1) → Conv1d(25→25, k3, s2, pad 1) x 2 → Linear; 5,210 params.
    'cnn': ('conv1d', {
        'features': (25, 25, 25), 'kernel': (5, 3, 3), 'strides': (2, 2, 2), 'dilations': (1, 1, 1),
        'causal': False, 'readout': 'flatten'
    }),
    # Bidirectional GRU of 6 units, every time step flattened → Linear.
    'gru': ('rnn', {'cell': 'gru', 'units': (6,), 'bidirectional': True, 'readout': 'flatten'}),
}

# Every variant get_config takes ('' is the config as it is).
VARIANTS = ('', *MODELS, 'tiny')


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = common.training('mnist1d')
  name = {'': 'cnn', 'tiny': 'cnn'}.get(variant, variant)
  if name not in MODELS:
    raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(MODELS)} or 'tiny'")
  c.model, kwargs = MODELS[name]
  c.model_kwargs = ml_collections.ConfigDict(kwargs)
  c.num_samples = 5000  # Train and test together; the package's default.
  c.train_fraction = 0.8  # 4000 train / 1000 test.
  c.data_seed = 42  # The generator's seed (the paper's dataset).
  c.optimizer = 'adam'
  c.learning_rate = 1e-2
  c.batch_size = 100
  c.eval_batch_size = 1000
  c.steps_per_epoch = 40  # One pass over the 4000 training sequences.
  c.num_epochs = 150  # 6000 steps, as the paper.
  c.log_every_steps = 1000
  c.checkpoint_every_epochs = 50
  c.best_metric = 'val_accuracy'  # On the test set, evaluated every epoch (the paper's curves).
  c.best_mode = 'max'
  if variant == 'tiny':
    c.num_samples = 200
    c.batch_size = 20
    c.eval_batch_size = 50
    c.steps_per_epoch = 3
    c.num_epochs = 2
    c.log_every_steps = 2
  return c
