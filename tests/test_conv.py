"""lib.conv: the im2col convolution computes flax.linen.Conv's function, params and gradients."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib import conv, cpu, models

# (input shape, kernel, strides, padding): the codebase's convolutions, then harder cases.
CASES = [
    ((4, 28, 28, 1), (3, 3), (1, 1), 'SAME'),  # cnn, any_size_cnn: first block.
    ((4, 14, 14, 32), (3, 3), (1, 1), 'SAME'),  # cnn: second block.
    ((2, 7, 9, 16), (1, 1), (1, 1), 'SAME'),  # any_size_cnn: the 1x1 head.
    ((3, 28, 28, 1), (3, 3), (2, 2), 'SAME'),  # conv_autoencoder: stride-2 encoder.
    ((3, 14, 14, 8), (3, 3), (2, 2), 'SAME'),
    ((2, 13, 11, 3), (3, 3), (1, 1), 'VALID'),
    ((2, 13, 11, 3), (5, 3), (2, 1), 'SAME'),  # Rectangular kernel, odd sizes, mixed strides.
    ((2, 12, 12, 3), (3, 3), (3, 2), ((2, 0), (1, 3))),  # Explicit, uneven padding.
]


@pytest.mark.parametrize('shape,kernel_size,strides,padding', CASES)
def test_im2col_matches_nn_conv_outputs_and_gradients(shape, kernel_size, strides, padding):
  x = jax.random.normal(jax.random.PRNGKey(1), shape)
  reference = nn.Conv(5, kernel_size, strides=strides, padding=padding)
  ours = conv.Conv(5, kernel_size, strides=strides, padding=padding, impl='im2col')
  params = reference.init(jax.random.PRNGKey(0), x)
  # The same params: names, shapes and initial values.
  jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.PRNGKey(0), x), params)
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape),
                        params)  # A non-zero bias too.
  want, got = reference.apply(params, x), ours.apply(params, x)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

  cotangent = jax.random.normal(jax.random.PRNGKey(3), want.shape)
  def grads(module):
    return jax.grad(lambda p, x: jnp.sum(module.apply(p, x) * cotangent), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(grads(ours)), jax.tree.leaves(grads(reference))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_auto_takes_im2col_only_where_xla_sends_convolutions_to_ynnpack(monkeypatch):
  assert jax.default_backend() == 'cpu'
  assert cpu.xla_convolutions_are_fast()  # tests/conftest.py configured XLA:CPU as the launcher.
  assert conv.resolve('auto') == 'xla'
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')  # YNNPACK's default.
  assert conv.resolve('auto') == 'im2col'
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=individual_convolution')
  assert conv.resolve('auto') == 'im2col'
  assert conv.resolve('xla') == 'xla'


@pytest.mark.parametrize('name,kwargs,shape', [
    ('cnn', {}, (2, 28, 28, 1)),
    ('any_size_cnn', {}, (2, 40, 36, 1)),
    ('conv_autoencoder', {'shape': (28, 28, 1)}, (2, 28, 28, 1)),
])
def test_models_give_the_same_outputs_with_either_convolution(name, kwargs, shape):
  x = jax.random.uniform(jax.random.PRNGKey(0), shape)
  xla = models.create(name, conv='xla', **kwargs)
  fast = models.create(name, conv='im2col', **kwargs)
  variables = xla.init(jax.random.PRNGKey(1), x)
  jax.tree.map(np.testing.assert_array_equal, fast.init(jax.random.PRNGKey(1), x), variables)
  np.testing.assert_allclose(fast.apply(variables, x), xla.apply(variables, x), rtol=1e-4,
                             atol=1e-5)


def test_unknown_convolution_is_a_clear_error():
  with pytest.raises(Exception, match=r"conv='fft' is unknown; choose one of \['auto', 'im2col', 'xla'\]"):
    models.create('cnn', conv='fft')
