"""Model shapes and parameter counts against the published networks."""
import jax
import jax.numpy as jnp
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
])
def test_bad_model_config_is_a_clear_error(name, kwargs, match):
  with pytest.raises(UserError, match=match):
    models.create(name, **kwargs)
