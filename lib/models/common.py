"""What the models share: activations, readouts, pools, initializations, and the name checks."""
from collections.abc import Callable
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


def uniform(bound: float) -> nn.initializers.Initializer:
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def initializers(init: str, fan_in: int) -> dict[str, nn.initializers.Initializer]:
  """The kernel_init and bias_init of a layer with this fan_in ({} keeps Flax's)."""
  if init == 'flax':
    return {}
  return {'kernel_init': uniform(fan_in**-0.5), 'bias_init': uniform(fan_in**-0.5)}


def pick(table: dict[str, Any], name: str, what: str) -> Any:
  if name not in table:
    raise UserError(f'{what}={name!r} is unknown; choose one of {sorted(table)}')
  return table[name]


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
  return pick(ACTIVATIONS, name, 'activation')


def with_feature_axis(x: jax.Array) -> jax.Array:
  """(batch, time) → (batch, time, 1); (batch, time, features) unchanged."""
  return x[..., None] if x.ndim == 2 else x
