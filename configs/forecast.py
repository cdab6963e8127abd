"""Time-series forecasting: the course's synthetic series with linear, dense, RNN, LSTM, GRU,
Conv1D+LSTM and 1-D CNN models, beside the course's baselines.

Commands (no download; the series is generated):
  python -m experiments --config=configs/forecast.py --workdir=runs/forecast_rnn
  python -m experiments --config=configs/forecast.py:MODEL --workdir=runs/forecast_MODEL
  with MODEL one of linear, dense, rnn, lstm, gru, conv_lstm, cnn, or seasonal (dense on
  5 past values plus last year's values around the same date as a second feature).
LR range test (the course's 1e-8 * 10 ** (epoch / 20)):
  python -m experiments --config=configs/forecast.py:rnn --workdir=runs/forecast_lr \
      --config.lr_finder=True --config.num_epochs=100 --config.optimizer=sgd
ReLU vs tanh in a SimpleRNN, over seeds and learning rates:
  python -m experiments --config=configs/forecast.py:relu_study --workdir=runs/relu_study
Expected: val_mae 4.497 ± 0.055 over seeds 0-4 for :seasonal (--config.num_seeds=5; bar
4.5; the course: linear 4.95, best baseline 4.57); on 20 past values alone 4.8-5.6
(linear 4.843 ± 0.004, dense 4.816 ± 0.061, rnn 5.38 ± 0.17, gru 5.24 ± 0.19, lstm
5.61 ± 0.10, conv_lstm 5.35 ± 0.29, cnn 4.923 ± 0.048 over 5 seeds).
Measured values, hardware and wall times: README results table.
Smoke test: --config=configs/forecast.py:tiny.
"""
import ml_collections

from configs import common

# The course's models: (lib.models name, attributes).
MODELS = {
    'linear': ('mlp', {'hidden': (), 'activation': 'linear'}),
    'dense': ('mlp', {'hidden': (10, 10), 'activation': 'relu'}),
    'rnn': ('rnn', {'cell': 'simple', 'units': (40, 40), 'activation': 'tanh'}),
    'lstm': ('rnn', {'cell': 'lstm', 'units': (32, 32), 'bidirectional': True}),
    'gru': ('rnn', {'cell': 'gru', 'units': (32, 32), 'bidirectional': True}),
    'conv_lstm': ('rnn', {'cell': 'lstm', 'units': (64, 64), 'conv_features': 32}),
    'cnn': ('conv1d', {
        'features': (32,) * 5, 'kernel': (2,) * 5, 'strides': (1,) * 5,
        'dilations': (1, 2, 4, 8, 16), 'causal': True, 'readout': 'last'
    }),
}

# Every variant get_config takes ('' is the config as it is).
VARIANTS = ('', *MODELS, 'seasonal', 'relu_study', 'tiny')


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = common.training('forecast')
  name = {'': 'rnn', 'relu_study': 'rnn', 'tiny': 'rnn', 'seasonal': 'dense'}.get(variant, variant)
  if name not in MODELS:
    raise ValueError(f'unknown variant {variant!r}; choose one of {sorted(MODELS)}, '
                     "'seasonal', 'relu_study' or 'tiny'")
  c.model, kwargs = MODELS[name]
  c.model_kwargs = ml_collections.ConfigDict(kwargs)

  # The series: baseline + slope * t + seasonality(period, amplitude) + noise.
  c.series_length = 4 * 365 + 1  # Time steps 0..1460.
  c.baseline = 10.0
  c.slope = 0.05
  c.amplitude = 40.0
  c.period = 365
  c.noise_level = 5.0
  c.series_seed = 42
  c.split_time = 1000  # Train on t < 1000; forecast and validate on t >= 1000.
  c.window_size = 20  # Past values each forecast sees.
  # If positive (365: a year), each window gets a second feature, the values this
  # many steps earlier, shifted seasonal_lookahead steps forward so that the
  # target's anniversary lies inside: inputs (batch, window, 2). 0: (batch, window, 1).
  c.seasonal_lag = 0
  c.seasonal_lookahead = 10

  c.optimizer = 'adam'  # On standardized values; the course's SGD needs the LR range test first.
  c.learning_rate = 1e-3
  c.batch_size = 32
  c.eval_batch_size = 500
  c.num_epochs = 300
  c.steps_per_execution = 6  # Steps per compiled call: 30 steps per epoch with 980 windows / 32.
  c.log_every_steps = 300
  c.checkpoint_every_epochs = 50
  c.best_metric = 'val_mae'  # Validation MAE, in the series' units.
  c.best_mode = 'min'
  c.early_stopping_patience = 50
  c.restore_best = True  # The course's ModelCheckpoint(save_best_only=True) + EarlyStopping.

  # ReLU vs tanh: the SimpleRNN trained with each activation, for every seed and
  # learning rate below (SGD with momentum, as the course), each for study_epochs.
  c.activation_study = variant == 'relu_study'
  c.study_seeds = (0, 1, 2)
  c.study_learning_rates = (1e-3, 3e-3, 1e-2, 3e-2)
  c.study_epochs = 100
  if variant == 'seasonal':  # The dense model on 5 values and the same 5 of last year (+3).
    c.seasonal_lag = 365
    c.seasonal_lookahead = 3
    c.window_size = 5
  if variant == 'cnn':
    c.steps_per_execution = 1  # XLA:CPU runs convolutions far slower inside lax.scan.
  if variant == 'tiny':
    c.num_epochs = 2
    c.steps_per_epoch = 3
    c.steps_per_execution = 1
    c.log_every_steps = 2
    c.eval_batch_size = 100
    c.early_stopping_patience = 0
    c.study_seeds = (0,)
    c.study_learning_rates = (1e-3, 10.0)
    c.study_epochs = 1
  return c
