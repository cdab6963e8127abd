"""Sequence models over (batch, time[, features]): recurrent layers and 1-D convolutions."""
from collections.abc import Sequence
import functools

import flax.linen as nn
import jax

from lib.models.common import READOUTS, activation_fn, initializers, pick, uniform, with_feature_axis


class TorchGRUCell(nn.GRUCell):
  """nn.GRUCell with PyTorch's parameters: the reset and update gates' hidden
  projections carry biases too (6 bias vectors, not 4).

  It computes the same function (b_ir + b_hr acts as one bias), but PyTorch's
  initialization draws both and Adam steps each on its own, so a GRU ported
  from PyTorch trains as it did there only with this layout.
  """
  @nn.compact
  def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = carry
    dense = functools.partial(nn.Dense, h.shape[-1], dtype=self.dtype, param_dtype=self.param_dtype,
                              bias_init=self.bias_init)
    i = lambda name: dense(name=name, kernel_init=self.kernel_init)(inputs)
    r_h = lambda name: dense(name=name, kernel_init=self.recurrent_kernel_init)(h)
    r = self.gate_fn(i('ir') + r_h('hr'))
    z = self.gate_fn(i('iz') + r_h('hz'))
    n = self.activation_fn(i('in') + r * r_h('hn'))
    h = (1.0 - z) * n + z * h
    return h, h


CELLS = {'simple': nn.SimpleCell, 'lstm': nn.LSTMCell, 'gru': nn.GRUCell, 'torch_gru': TorchGRUCell}


class RNN(nn.Module):
  """Stacked recurrent layers over (batch, time, features) → Dense(outputs).

  Each layer is `nn.RNN` (a compiled `lax.scan` over time, not a Python loop)
  and returns the full sequence, (batch, time, units), to the next layer; the
  head reads the last time step ('last') or every step flattened ('flatten',
  as MNIST-1D's GRU does). A 2-D input (batch, time) gets a feature axis of 1.

  Attributes:
    cell: 'simple' (Keras' SimpleRNN), 'lstm', 'gru' (Flax's) or 'torch_gru'
      (PyTorch's parameter layout, TorchGRUCell).
    units: units of each recurrent layer.
    activation: the simple cell's nonlinearity (a key of ACTIVATIONS); LSTM and
      GRU keep tanh.
    bidirectional: each layer reads the sequence both ways and concatenates.
    conv_features: if positive, a causal Conv1D (kernel 5) + ReLU with this many
      filters first (the course's Conv1D + LSTM).
    readout: a key of READOUTS: 'last' or 'flatten'.
    outputs: units of the Dense head.
    initializer: a key of INITS: Flax's or PyTorch's default initialization.
  """
  cell: str = 'simple'
  units: Sequence[int] = (40, 40)
  activation: str = 'tanh'
  bidirectional: bool = False
  conv_features: int = 0
  readout: str = 'last'
  outputs: int = 1
  initializer: str = 'flax'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    x = with_feature_axis(x)
    if self.conv_features:
      x = nn.relu(nn.Conv(self.conv_features, (5,), padding='CAUSAL')(x))
    cell = pick(CELLS, self.cell, 'cell')
    for units in self.units:
      kwargs = {} if self.initializer == 'flax' else {
          'kernel_init': uniform(units**-0.5), 'recurrent_kernel_init': uniform(units**-0.5),
          'bias_init': uniform(units**-0.5)
      }
      if self.cell == 'simple':
        kwargs['activation_fn'] = activation_fn(self.activation)
      make = lambda: nn.RNN(cell(units, **kwargs))  # pylint: disable=cell-var-from-loop
      x = nn.Bidirectional(make(), make())(x) if self.bidirectional else make()(x)
    x = pick(READOUTS, self.readout, 'readout')(x)
    return nn.Dense(self.outputs, **initializers(self.initializer, x.shape[-1]))(x)


class Conv1D(nn.Module):
  """1-D convolutions over (batch, time[, features]) → Dense(outputs).

  Attributes:
    features: channels of each conv layer (ReLU after each).
    kernel: kernel width of each layer.
    strides: stride of each layer (1: keep the length).
    dilations: dilation of each layer (the course's WaveNet-style 1, 2, 4, ...).
    causal: pad on the left only, so step t sees nothing after t.
    readout: a key of READOUTS: 'last' (for forecasting) or 'flatten'.
    outputs: units of the Dense head.
    initializer: a key of INITS: Flax's or PyTorch's default initialization.
  """
  features: Sequence[int] = (25, 25, 25)
  kernel: Sequence[int] = (5, 3, 3)
  strides: Sequence[int] = (2, 2, 2)
  dilations: Sequence[int] = (1, 1, 1)
  causal: bool = False
  readout: str = 'flatten'
  outputs: int = 10
  initializer: str = 'flax'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    x = with_feature_axis(x)
    for f, k, s, d in zip(self.features, self.kernel, self.strides, self.dilations, strict=True):
      padding = 'CAUSAL' if self.causal else [(1, 1)]
      conv = nn.Conv(f, (k,), strides=(s,), kernel_dilation=(d,), padding=padding,
                     **initializers(self.initializer, k * x.shape[-1]))
      x = nn.relu(conv(x))
    x = pick(READOUTS, self.readout, 'readout')(x)
    return nn.Dense(self.outputs, **initializers(self.initializer, x.shape[-1]))(x)
