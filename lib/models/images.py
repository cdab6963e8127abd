"""Classifiers of images and flat inputs: the MLP, the Flatten CNN and the any-size CNN."""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lib.errors import UserError
from lib.models.common import POOLS, activation_fn, initializers, pick


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
    inits = initializers(self.initializer, fan_in)
    if self.init_std:
      inits['kernel_init'] = nn.initializers.normal(self.init_std)
    return nn.Dense(units, **inits, **kwargs)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    act = activation_fn(self.activation)
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
    pool = pick(POOLS, self.pool, 'pool')
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
