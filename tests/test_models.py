"""Model shapes and parameter counts against the published networks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import fashion_cnn, fashion_mlp, mnist_cnn
from lib import models
from lib.errors import UserError


def _params(config, outputs=10):
  model = models.create(config.model, outputs=outputs, **config.model_kwargs)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  return model, variables


@pytest.mark.parametrize(
    'config_module,count',
    [
        (mnist_cnn, 824_458),  # The Flax MNIST example.
        (fashion_mlp, 101_770),  # Udacity l03.
        (fashion_cnn, 421_642),  # Udacity l04.
    ])
def test_published_param_counts_and_logit_shapes(config_module, count):
  model, variables = _params(config_module.get_config())
  assert models.count_params(variables['params']) == count
  assert model.apply(variables, jnp.ones((5, 28, 28, 1))).shape == (5, 10)


def test_celsius_dense_is_a_line():
  model = models.create('mlp', hidden=(), outputs=1, activation='linear')
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1)))
  kernel, bias = variables['params']['Dense_0']['kernel'], variables['params']['Dense_0']['bias']
  x = jnp.array([[0.0], [1.0], [100.0]])
  assert jnp.allclose(model.apply(variables, x)[:, 0], kernel[0, 0] * x[:, 0] + bias[0])


@pytest.mark.parametrize('name,kwargs,match', [
    ('resnet', {}, "config.model='resnet' is unknown"),
    ('cnn', {'width': 3}, "does not take"),
    ('mlp', {'activation': 'swish'}, "activation='swish' is unknown"),
    ('cnn', {'pool': 'median'}, "pool='median' is unknown"),
    ('conv1d', {'initializer': 'kaiming'}, "initializer='kaiming' is unknown"),
])
def test_bad_model_config_is_a_clear_error(name, kwargs, match):
  with pytest.raises(UserError, match=match):
    models.create(name, **kwargs)


def test_torch_gru_cell_is_flax_gru_with_pytorchs_bias_layout():
  """The same function as nn.GRUCell once each gate's two biases are added: only the layout differs."""
  h, x = jax.random.normal(jax.random.key(1), (4, 6)), jax.random.normal(jax.random.key(2), (4, 3))
  torch_cell = models.TorchGRUCell(6, bias_init=jax.nn.initializers.normal(1.0))
  p = torch_cell.init(jax.random.key(0), h, x)['params']
  flax_params = {
      **{k: {'kernel': p[k]['kernel'], 'bias': p[k]['bias']} for k in ('in', 'hn')},
      'ir': {'kernel': p['ir']['kernel'], 'bias': p['ir']['bias'] + p['hr']['bias']},
      'iz': {'kernel': p['iz']['kernel'], 'bias': p['iz']['bias'] + p['hz']['bias']},
      'hr': {'kernel': p['hr']['kernel']},
      'hz': {'kernel': p['hz']['kernel']},
  }
  ours, _ = torch_cell.apply({'params': p}, h, x)
  theirs, _ = models.CELLS['gru'](6).apply({'params': flax_params}, h, x)
  np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
  assert sum(v.size for v in jax.tree.leaves(p)) == 3 * (3 * 6 + 6 * 6) + 6 * 6


@pytest.mark.parametrize('name,kwargs', [
    ('mlp', {'hidden': (100, 100), 'residual': True}),
    ('conv1d', {}),
    ('rnn', {'cell': 'torch_gru', 'units': (6,), 'bidirectional': True, 'readout': 'flatten'}),
])
def test_torch_initializer_draws_every_param_uniformly_within_one_over_sqrt_fan_in(name, kwargs):
  model = models.create(name, initializer='torch', outputs=10, **kwargs)
  params = model.init(jax.random.key(0), jnp.ones((2, 40)))['params']
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    where = jax.tree_util.keystr(path)
    if 'Cell' in where:
      fan_in = 6  # PyTorch's RNNs draw every weight and bias from ±1/sqrt(hidden units).
    else:
      kernel = params
      for key in path[:-1]:
        kernel = kernel[key.key]
      fan_in = int(np.prod(kernel['kernel'].shape[:-1]))
    bound = fan_in**-0.5
    assert float(jnp.abs(leaf).max()) <= bound, where
    if leaf.size >= 50:  # Uniform over the whole range, not a narrower law.
      assert float(jnp.abs(leaf).max()) > 0.8 * bound, where
      assert abs(float(jnp.std(leaf)) - bound / 3**0.5) < 0.25 * bound, where


def test_residual_mlp_adds_each_hidden_layers_input_where_widths_match():
  plain = models.create('mlp', hidden=(100, 100), outputs=10)
  residual = models.create('mlp', hidden=(100, 100), outputs=10, residual=True)
  x = jax.random.normal(jax.random.key(0), (3, 40))
  variables = plain.init(jax.random.key(1), x)  # The same params serve both.
  h1 = jax.nn.relu(x @ variables['params']['Dense_0']['kernel'] +
                   variables['params']['Dense_0']['bias'])
  h2 = h1 + jax.nn.relu(h1 @ variables['params']['Dense_1']['kernel'] +
                        variables['params']['Dense_1']['bias'])
  expected = h2 @ variables['params']['Dense_2']['kernel'] + variables['params']['Dense_2']['bias']
  np.testing.assert_allclose(residual.apply(variables, x), expected, rtol=1e-5, atol=1e-5)
  assert not np.allclose(plain.apply(variables, x), expected)
