"""Flax Linen models. Each is a pure function of its variables: `model.apply(variables, x, train=...)`."""
from collections.abc import Callable, Sequence
import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lib.errors import UserError

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'relu': nn.relu,
    'tanh': jnp.tanh,
    'sigmoid': nn.sigmoid,
    'linear': lambda x: x,
}

# How a sequence model turns (batch, time, features) into the head's input.
READOUTS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'last': lambda x: x[:, -1],  # The last time step: forecasting the next value.
    'flatten': lambda x: x.reshape((x.shape[0], -1)),  # Every step: MNIST-1D's heads.
}

POOLS = {'avg': nn.avg_pool, 'max': nn.max_pool}

# How the weights start: 'flax' is Flax's defaults (LeCun-normal kernels, zero
# biases; a GRU's recurrent kernels orthogonal); 'torch' is PyTorch's (every
# kernel and bias uniform in ±1/sqrt(fan_in); a recurrent layer's fan_in is its
# units), so that a model ported from PyTorch starts where its paper's did.
INITS = ('flax', 'torch')


def _uniform(bound: float) -> nn.initializers.Initializer:
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _inits(init: str, fan_in: int) -> dict[str, nn.initializers.Initializer]:
  """The kernel_init and bias_init of a layer with this fan_in ({} keeps Flax's)."""
  if init == 'flax':
    return {}
  return {'kernel_init': _uniform(fan_in**-0.5), 'bias_init': _uniform(fan_in**-0.5)}


def _pick(table: dict[str, Any], name: str, what: str) -> Any:
  if name not in table:
    raise UserError(f'{what}={name!r} is unknown; choose one of {sorted(table)}')
  return table[name]


def _activation(name: str) -> Callable[[jax.Array], jax.Array]:
  return _pick(ACTIVATIONS, name, 'activation')


def _with_feature_axis(x: jax.Array) -> jax.Array:
  """(batch, time) → (batch, time, 1); (batch, time, features) unchanged."""
  return x[..., None] if x.ndim == 2 else x


class MLP(nn.Module):
  """Flatten → Dense layers → Dense(outputs); Dense(1) alone when `hidden` is empty.

  Attributes:
    hidden: units of each hidden layer.
    outputs: units of the last layer (classes, or 1 for a regression).
    activation: name of the hidden layers' nonlinearity, a key of ACTIVATIONS.
    batch_norm: batch normalization between each hidden Dense (then without
      bias, which BN's shift replaces) and its nonlinearity, as in Ioffe &
      Szegedy 2015. Batch statistics in training, running averages (in the
      'batch_stats' collection) in evaluation.
    init_std: standard deviation of a Gaussian initialization of every kernel;
      None keeps `initializer`'s.
    initializer: a key of INITS: Flax's or PyTorch's default initialization.
    residual: add a hidden layer's input to its output where their widths
      match (the MNIST-1D paper's MLP: h = h + relu(W h)).
  """
  hidden: Sequence[int] = (128,)
  outputs: int = 10
  activation: str = 'relu'
  batch_norm: bool = False
  init_std: float | None = None
  initializer: str = 'flax'
  residual: bool = False

  @nn.nowrap
  def _dense(self, units: int, fan_in: int, **kwargs: Any) -> nn.Dense:
    inits = _inits(self.initializer, fan_in)
    if self.init_std:
      inits['kernel_init'] = nn.initializers.normal(self.init_std)
    return nn.Dense(units, **inits, **kwargs)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    act = _activation(self.activation)
    x = x.reshape((x.shape[0], -1))
    for units in self.hidden:
      h = self._dense(units, x.shape[-1], use_bias=not self.batch_norm)(x)
      if self.batch_norm:
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
      x = x + act(h) if self.residual and x.shape[-1] == units else act(h)
    return self._dense(self.outputs, x.shape[-1])(x)


class CNN(nn.Module):
  """[Conv 3x3 → ReLU → pool 2x2] per entry of `features`, then Flatten → Dense → ReLU → Dense.

  With the defaults this is the Flax MNIST example's CNN (824,458 params on 28x28x1).
  The Flatten fixes the input size the Dense layer was built for.

  Attributes:
    features: channels of each conv block.
    dense: units of the hidden Dense layer.
    pool: 'avg' (the Flax example) or 'max' (the Udacity Fashion-MNIST notebook).
    outputs: number of classes.
  """
  features: Sequence[int] = (32, 64)
  dense: int = 256
  pool: str = 'avg'
  outputs: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    pool = _pick(POOLS, self.pool, 'pool')
    size = x.shape[1:3]
    for channels in self.features:
      x = pool(nn.relu(nn.Conv(channels, (3, 3))(x)), (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    built = self.variables.get('params', {}).get('Dense_0', {}).get('kernel')
    if built is not None and built.shape[0] != x.shape[-1]:
      raise UserError(
          f'cnn takes only the image size it was built for: a {size[0]}x{size[1]} image '
          f'flattens to {x.shape[-1]} features, but its Dense layer takes {built.shape[0]}; '
          'use model any_size_cnn (fully convolutional) for other sizes')
    x = nn.relu(nn.Dense(self.dense)(x))
    return nn.Dense(self.outputs)(x)


class AnySizeCNN(nn.Module):
  """A fully convolutional classifier: one set of weights takes any height and width.

  [Conv 3x3 → ReLU → max-pool 2x2] per entry of `features`, then a 1x1 conv to
  the classes (a Dense layer applied at every position, in place of Flatten,
  as RetinaNet's heads do), then a global pool over the positions → logits.

  Attributes:
    features: channels of each conv block.
    outputs: number of classes.
    pool: the global pool, 'max' (where the object is does not matter, nor how
      much empty canvas surrounds it) or 'avg'.
  """
  features: Sequence[int] = (16, 32, 64)
  outputs: int = 10
  pool: str = 'max'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    for channels in self.features:
      x = nn.relu(nn.Conv(channels, (3, 3))(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='SAME')
    x = nn.Conv(self.outputs, (1, 1))(x)
    return jnp.max(x, axis=(1, 2)) if self.pool == 'max' else jnp.mean(x, axis=(1, 2))


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
    x = _with_feature_axis(x)
    if self.conv_features:
      x = nn.relu(nn.Conv(self.conv_features, (5,), padding='CAUSAL')(x))
    cell = _pick(CELLS, self.cell, 'cell')
    for units in self.units:
      kwargs = {} if self.initializer == 'flax' else {
          'kernel_init': _uniform(units**-0.5), 'recurrent_kernel_init': _uniform(units**-0.5),
          'bias_init': _uniform(units**-0.5)
      }
      if self.cell == 'simple':
        kwargs['activation_fn'] = _activation(self.activation)
      make = lambda: nn.RNN(cell(units, **kwargs))  # pylint: disable=cell-var-from-loop
      x = nn.Bidirectional(make(), make())(x) if self.bidirectional else make()(x)
    x = _pick(READOUTS, self.readout, 'readout')(x)
    return nn.Dense(self.outputs, **_inits(self.initializer, x.shape[-1]))(x)


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
    x = _with_feature_axis(x)
    for f, k, s, d in zip(self.features, self.kernel, self.strides, self.dilations, strict=True):
      padding = 'CAUSAL' if self.causal else [(1, 1)]
      conv = nn.Conv(f, (k,), strides=(s,), kernel_dilation=(d,), padding=padding,
                     **_inits(self.initializer, k * x.shape[-1]))
      x = nn.relu(conv(x))
    x = _pick(READOUTS, self.readout, 'readout')(x)
    return nn.Dense(self.outputs, **_inits(self.initializer, x.shape[-1]))(x)


class VAE(nn.Module):
  """The MLP VAE of Kingma & Welling (and the Flax example): x → 500 ReLU → (mean, log-variance).

  The decoder maps a latent z → 500 ReLU → 784 Bernoulli logits. The latent is
  sampled with the reparameterization trick, z = mean + exp(logvar / 2) * eps,
  eps ~ N(0, I) from the 'sample' stream, so gradients reach the encoder
  through z. Sampling happens in evaluation too: the same image gives a
  different latent every call, as the notes say.

  Attributes:
    latents: size of the latent vector.
    hidden: units of the encoder's hidden layers; the decoder mirrors them.
    outputs: pixels per image (the decoder's logits).
  """
  latents: int = 20
  hidden: Sequence[int] = (500,)
  outputs: int = 784

  def setup(self):
    self.encoder = MLP(hidden=self.hidden, outputs=2 * self.latents)
    self.decoder = MLP(hidden=tuple(reversed(self.hidden)), outputs=self.outputs)

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean, logvar) of q(z | x), each (batch, latents)."""
    mean, logvar = jnp.split(self.encoder(x), 2, axis=-1)
    return mean, logvar

  def decode(self, z: jax.Array) -> jax.Array:
    """Bernoulli logits of p(x | z), (batch, outputs)."""
    return self.decoder(z)

  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    del train  # Same function in training and evaluation.
    mean, logvar = self.encode(x)
    eps = jax.random.normal(self.make_rng('sample'), mean.shape)
    z = mean + jnp.exp(0.5 * logvar) * eps
    return {'logits': self.decode(z), 'mean': mean, 'logvar': logvar, 'z': z}


class MLPAutoencoder(nn.Module):
  """Flatten → Dense ReLU layers → latent vector → mirrored Dense layers → sigmoid image.

  Attributes:
    latents: size of the code the image is compressed to.
    hidden: units of the encoder's hidden layers; the decoder mirrors them.
    shape: the image shape (height, width, channels) the decoder outputs.
  """
  latents: int = 32
  hidden: Sequence[int] = (512, 256)
  shape: Sequence[int] = (28, 28, 1)

  def setup(self):
    self.encoder = MLP(hidden=self.hidden, outputs=self.latents)
    self.decoder = MLP(hidden=tuple(reversed(self.hidden)), outputs=math.prod(self.shape))

  def encode(self, x: jax.Array) -> jax.Array:
    """The latent code, (batch, latents)."""
    return self.encoder(x)

  def decode(self, z: jax.Array) -> jax.Array:
    """Pixels in [0, 1], (batch, *shape)."""
    return nn.sigmoid(self.decoder(z)).reshape((z.shape[0], *self.shape))

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    return self.decode(self.encode(x))


class ConvAutoencoder(nn.Module):
  """[Conv 3x3 stride 2 → ReLU] per entry of `features` → Dense latent; the decoder mirrors it
  with transposed convolutions back to a sigmoid image.

  Attributes:
    latents: size of the code the image is compressed to.
    features: channels of each stride-2 conv block (the decoder reverses them).
    shape: the image shape (height, width, channels); height and width must be
      multiples of 2 ** len(features).
  """
  latents: int = 32
  features: Sequence[int] = (32, 64)
  shape: Sequence[int] = (28, 28, 1)

  def check(self) -> None:
    """Raises UserError for an image size the stride-2 blocks cannot halve evenly."""
    scale = 2**len(self.features)
    if self.shape[0] % scale or self.shape[1] % scale:
      raise UserError(f'conv_autoencoder halves the image {len(self.features)} times: height '
                      f'and width must be multiples of {scale}, not {tuple(self.shape[:2])}')

  def setup(self):
    scale = 2**len(self.features)
    self.encoder_convs = [nn.Conv(f, (3, 3), strides=2) for f in self.features]
    self.encoder_out = nn.Dense(self.latents)
    self.code_shape = (self.shape[0] // scale, self.shape[1] // scale, self.features[-1])
    self.decoder_in = nn.Dense(math.prod(self.code_shape))
    channels = [*reversed(self.features[:-1]), self.shape[2]]
    self.decoder_convs = [nn.ConvTranspose(f, (3, 3), strides=(2, 2)) for f in channels]

  def encode(self, x: jax.Array) -> jax.Array:
    """The latent code, (batch, latents)."""
    for conv in self.encoder_convs:
      x = nn.relu(conv(x))
    return self.encoder_out(x.reshape((x.shape[0], -1)))

  def decode(self, z: jax.Array) -> jax.Array:
    """Pixels in [0, 1], (batch, *shape)."""
    x = nn.relu(self.decoder_in(z)).reshape((z.shape[0], *self.code_shape))
    for i, conv in enumerate(self.decoder_convs):
      x = conv(x)
      x = nn.sigmoid(x) if i == len(self.decoder_convs) - 1 else nn.relu(x)
    return x

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    return self.decode(self.encode(x))


MODELS: dict[str, type[nn.Module]] = {
    'mlp': MLP, 'cnn': CNN, 'any_size_cnn': AnySizeCNN, 'rnn': RNN, 'conv1d': Conv1D, 'vae': VAE,
    'mlp_autoencoder': MLPAutoencoder, 'conv_autoencoder': ConvAutoencoder
}


def create(name: str, **kwargs: Any) -> nn.Module:
  """Builds a model from its config name and fields.

  Args:
    name: a key of MODELS.
    **kwargs: the model's attributes (config.model_kwargs plus `outputs`).

  Returns:
    The Flax module.

  Raises:
    UserError: unknown model or attribute.
  """
  cls = _pick(MODELS, name, 'config.model')
  fields = {f.name for f in dataclasses.fields(cls)} - {'parent', 'name'}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise UserError(f'config.model_kwargs has {unknown} that model {name!r} does not take; '
                    f'it takes {sorted(fields)}')
  model = cls(**kwargs)
  # Names are checked now, before any work, not at the first trace inside jit.
  if 'activation' in fields:
    _activation(model.activation)
  if 'pool' in fields:
    _pick(POOLS, model.pool, 'pool')  # AnySizeCNN's global pool takes the same names.
  if 'cell' in fields:
    _pick(CELLS, model.cell, 'cell')
  if 'readout' in fields:
    _pick(READOUTS, model.readout, 'readout')
  if 'initializer' in fields and model.initializer not in INITS:
    raise UserError(f'initializer={model.initializer!r} is unknown; choose one of {list(INITS)}')
  if hasattr(model, 'check'):
    model.check()
  return model


def count_params(params: Any) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
