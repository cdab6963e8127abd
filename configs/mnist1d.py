"""MNIST-1D (Greydanus 2020): the paper's four models, trained by the paper's protocol.

The dataset is generated locally by the mnist1d package (4000 train / 1000 test
sequences of length 40, seed 42): no download. The protocol is the paper's
PyTorch loop (github.com/greydanus/mnist1d): Adam 1e-2, batch 100, 6,000 steps
over the training sequences in their stored order (no shuffling), PyTorch's
default initialization and GRU layout, test accuracy after the last step.
Commands:
  python -m experiments --config=configs/mnist1d.py:MODEL --workdir=runs/mnist1d_MODEL
  with MODEL one of logistic, mlp, cnn (the default), gru, or MODEL_shuffled for
  the paper's shuffled MNIST-1D (one permutation of the 40 positions for every
  sequence: what a CNN's and a GRU's priors assume is gone). Add
  --config.num_seeds=5 for seeds 0-4 in one program.
Expected (the paper's table): logistic 32%, MLP 68%, CNN 94%, GRU 91% test
accuracy; shuffled: CNN 56%, GRU 57%. Measured values beside a PyTorch rewrite
of the protocol (python -m benchmarks.mnist1d): README results table.
Hardware and time: any CPU; a whole run of one seed takes about 13 s (CNN) and 25 s (GRU)
on 2 cores.
Smoke test: --config=configs/mnist1d.py:tiny.
"""
import ml_collections

from configs import common

# The paper's models: (lib.models name, attributes). Every one starts from
# PyTorch's default initialization ('torch': uniform in ±1/sqrt(fan_in)).
MODELS = {
    'logistic': ('mlp', {'hidden': (), 'activation': 'linear', 'initializer': 'torch'}),
    # Linear(40→100) → ReLU → h + ReLU(Linear(100→100) h) → Linear(100→10); 15,210 params.
    'mlp': ('mlp', {
        'hidden': (100, 100), 'activation': 'relu', 'residual': True, 'initializer': 'torch'
    }),
    # Conv1d(1→25, k5, s2, pad 1) → Conv1d(25→25, k3, s2, pad 1) x 2 → Linear; 5,210 params.
    'cnn': ('conv1d', {
        'features': (25, 25, 25), 'kernel': (5, 3, 3), 'strides': (2, 2, 2), 'dilations': (1, 1, 1),
        'causal': False, 'readout': 'flatten', 'initializer': 'torch'
    }),
    # Bidirectional GRU of 6 units in PyTorch's layout (5,134 params), every time step
    # flattened → Linear.
    'gru': ('rnn', {
        'cell': 'torch_gru', 'units': (6,), 'bidirectional': True, 'readout': 'flatten',
        'initializer': 'torch'
    }),
}

# Every variant get_config takes ('' is the config as it is).
VARIANTS = ('', *MODELS, *(f'{m}_shuffled' for m in MODELS), 'tiny')


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = common.training('mnist1d')
  name = {'': 'cnn', 'tiny': 'cnn'}.get(variant, variant.removesuffix('_shuffled'))
  if name not in MODELS or variant not in VARIANTS:
    raise ValueError(f'unknown variant {variant!r}; choose one of {[v for v in VARIANTS if v]}')
  c.model, kwargs = MODELS[name]
  c.model_kwargs = ml_collections.ConfigDict(kwargs)
  c.num_samples = 5000  # Train and test together; the package's default.
  c.train_fraction = 0.8  # 4000 train / 1000 test.
  c.data_seed = 42  # The generator's seed (the paper's dataset).
  # The paper's shuffled MNIST-1D: the 40 positions of every sequence, train and test,
  # permuted by one permutation drawn from data_seed.
  c.shuffle_positions = variant.endswith('_shuffled')
  c.optimizer = 'adam'  # optax.adam: the same update and defaults as torch.optim.Adam.
  c.learning_rate = 1e-2
  c.batch_size = 100
  c.eval_batch_size = 1000
  c.shuffle = False  # The paper's loop takes batches in the stored order, pass after pass.
  c.steps_per_epoch = 40  # One pass over the 4000 training sequences.
  c.num_epochs = 150  # 6000 steps, as the paper.
  # A population's epoch in one compiled call: its convolutions run in lib.cpu's kernels,
  # as fast inside the call's scan (a single run's XLA convolutions are not).
  c.population_steps_per_execution = 40 if name == 'cnn' else None
  c.log_every_steps = 1000
  c.checkpoint_every_epochs = 50
  # On the test set, evaluated every epoch (the paper's curves). results.json reports the
  # final accuracy (the paper's figure) and, as best_val_accuracy, the best epoch's.
  c.best_metric = 'val_accuracy'
  c.best_mode = 'max'
  if variant == 'tiny':
    c.shuffle = True  # The tests that run tiny check the data order's seeds and shards.
    c.num_samples = 200
    c.batch_size = 20
    c.eval_batch_size = 50
    c.steps_per_epoch = 3
    c.population_steps_per_execution = 3  # The population's epoch in one call, as above.
    c.num_epochs = 2
    c.log_every_steps = 2
  return c
