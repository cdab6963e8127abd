"""Flax Linen models. Each is a pure function of its variables: `model.apply(variables, x, train=...)`.

  common.py        activations, readouts, pools, initializations ('flax' or 'torch')
  images.py        MLP, CNN (the Flax example's), AnySizeCNN (fully convolutional)
  sequences.py     RNN (SimpleRNN, LSTM, GRU, PyTorch's GRU layout), Conv1D
  autoencoders.py  VAE, MLPAutoencoder, ConvAutoencoder

`create(name, **kwargs)` builds one from its config name, checking its fields first.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax

from lib.errors import UserError
from lib.models.autoencoders import ConvAutoencoder, MLPAutoencoder, VAE
from lib.models.common import ACTIVATIONS, activation_fn, INITS, pick, POOLS, READOUTS
from lib.models.images import AnySizeCNN, CNN, MLP
from lib.models.sequences import CELLS, Conv1D, RNN, TorchGRUCell

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
  cls = pick(MODELS, name, 'config.model')
  fields = {f.name for f in dataclasses.fields(cls)} - {'parent', 'name'}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise UserError(f'config.model_kwargs has {unknown} that model {name!r} does not take; '
                    f'it takes {sorted(fields)}')
  model = cls(**kwargs)
  # Names are checked now, before any work, not at the first trace inside jit.
  if 'activation' in fields:
    activation_fn(model.activation)
  if 'pool' in fields:
    pick(POOLS, model.pool, 'pool')  # AnySizeCNN's global pool takes the same names.
  if 'cell' in fields:
    pick(CELLS, model.cell, 'cell')
  if 'readout' in fields:
    pick(READOUTS, model.readout, 'readout')
  if 'initializer' in fields and model.initializer not in INITS:
    raise UserError(f'initializer={model.initializer!r} is unknown; choose one of {list(INITS)}')
  if hasattr(model, 'check'):
    model.check()
  return model


def count_params(params: Any) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


__all__ = [
    'ACTIVATIONS', 'AnySizeCNN', 'CELLS', 'CNN', 'Conv1D', 'ConvAutoencoder', 'INITS', 'MLP',
    'MLPAutoencoder', 'MODELS', 'POOLS', 'READOUTS', 'RNN', 'TorchGRUCell', 'VAE', 'count_params',
    'create'
]
