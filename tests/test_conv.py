"""lib.cpu.conv: im2col and the CPU kernel compute flax.linen.Conv's function, params and gradients."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib import cpu, models
from lib.cpu import conv, conv_kernel

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


needs_kernel = pytest.mark.skipif(
    not conv_kernel.available(),
    reason='lib.cpu.conv_kernel is not available here (needs x86-64 with AVX-512 and a C++ compiler)'
)

# (input shape, kernel, strides, padding, features) the kernel takes: in-channels a multiple
# of 4, features of 16; between them every register tiling it picks.
KERNEL_CASES = [
    ((4, 14, 14, 32), (3, 3), (1, 1), 'SAME', 64),  # cnn: second block.
    ((3, 14, 14, 16), (3, 3), (2, 2), 'SAME', 32),  # conv_autoencoder: second encoder conv.
    ((2, 9, 7, 64), (3, 3), (1, 1), 'SAME', 128),  # any_size_cnn: fourth block.
    ((2, 13, 11, 12), (5, 3), (2, 1), 'SAME', 48),
    ((2, 12, 12, 4), (3, 3), (3, 2), ((2, 0), (1, 3)), 32),
    ((2, 13, 11, 8), (3, 3), (1, 1), 'VALID', 16),
    ((2, 7, 9, 16), (1, 1), (1, 1), 'SAME', 16),
]


@needs_kernel
@pytest.mark.parametrize('shape,kernel_size,strides,padding,features', KERNEL_CASES)
def test_kernel_matches_nn_conv_gradients(shape, kernel_size, strides, padding, features):
  x = jax.random.normal(jax.random.PRNGKey(1), shape)
  reference = nn.Conv(features, kernel_size, strides=strides, padding=padding)
  ours = conv.Conv(features, kernel_size, strides=strides, padding=padding, impl='kernel')
  params = reference.init(jax.random.PRNGKey(0), x)
  jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.PRNGKey(0), x), params)
  cotangent = jax.random.normal(jax.random.PRNGKey(3), reference.apply(params, x).shape)

  def grads(module):
    loss = lambda p, x: jnp.sum(module.apply(p, x) * cotangent)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)

  step = jax.jit(jax.grad(lambda p, x: jnp.sum(ours.apply(p, x) * cotangent)))
  assert conv_kernel.WEIGHT_GRAD in step.lower(params, x).as_text()  # The kernel, not XLA's.
  got, want = grads(ours), grads(reference)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  # Fixed chunks summed in order: the same bits every time.
  jax.tree.map(np.testing.assert_array_equal, grads(ours), got)


@needs_kernel
@pytest.mark.parametrize(
    'shape,features,pool',
    [
        ((4, 28, 28, 1), 32, 'avg'),  # mnist_cnn's first block.
        ((4, 28, 28, 1), 32, 'max'),  # fashion_cnn's.
        ((3, 10, 12, 3), 16, 'avg'),  # RGB.
        ((3, 10, 12, 3), 16, 'max'),
        ((2, 8, 6, 2), 48, 'max'),
    ])
def test_fused_block_matches_conv_relu_pool(shape, features, pool):
  x = jax.random.normal(jax.random.PRNGKey(1), shape)

  def reference(p, x):
    y = conv.xla_conv(x, p['kernel'], (1, 1), 'SAME')
    pooling = nn.avg_pool if pool == 'avg' else nn.max_pool
    return pooling(models.relu(y + p['bias']), (2, 2), strides=(2, 2))

  block = conv.Conv(features, (3, 3), impl='kernel', relu_pool=pool)
  params = block.init(jax.random.PRNGKey(0), x)
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape),
                        params)
  want = reference(params['params'], x)
  step = jax.jit(lambda p, x: block.apply(p, x))
  assert conv_kernel.BLOCK_FORWARD in step.lower(params, x).as_text()
  np.testing.assert_allclose(step(params, x), want, rtol=1e-5, atol=1e-5)
  cotangent = jax.random.normal(jax.random.PRNGKey(3), want.shape)
  # The input's gradient too (XLA's, for a block that is not a network's first layer).
  got = jax.jit(jax.grad(lambda p, x: jnp.sum(block.apply(p, x) * cotangent), (0, 1)))(params, x)
  want = jax.grad(lambda p, x: jnp.sum(reference(p['params'], x) * cotangent), (0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  # A NaN in a window makes its output NaN, so that the engine's NaN guard sees it (where
  # XLA's does too; XLA:CPU's max pool drops NaNs).
  poisoned = x.at[0, 2, 3, 0].set(jnp.nan)
  ours = np.isnan(step(params, poisoned))
  assert ours[0, 0:2, 1:3].all() and ours.sum() == 4 * features  # Conv rows 1-3, columns 2-4.
  assert (ours >= np.isnan(reference(params['params'], poisoned))).all()


def test_fused_block_falls_back_where_the_kernel_does_not_tile():
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 9, 9, 1))  # Odd sides: the pool drops a row.
  block = conv.Conv(16, (3, 3), impl='kernel', relu_pool='avg')
  params = block.init(jax.random.PRNGKey(0), x)
  assert conv_kernel.BLOCK_FORWARD not in jax.jit(block.apply).lower(params, x).as_text()
  want = nn.avg_pool(models.relu(conv.Conv(16, (3, 3), impl='xla').apply(params, x)), (2, 2),
                     strides=(2, 2))
  np.testing.assert_allclose(block.apply(params, x), want, rtol=1e-6)
  assert block.apply(params, x).shape == (2, 4, 4, 16)


def test_kernel_off_or_unbuildable_means_xla(monkeypatch, tmp_path):
  monkeypatch.setenv('JAXNOTES_CONV_KERNEL', '0')
  assert not conv_kernel.available.__wrapped__()
  monkeypatch.delenv('JAXNOTES_CONV_KERNEL')
  monkeypatch.setenv('JAXNOTES_CACHE', str(tmp_path))
  monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
  assert not conv_kernel.available.__wrapped__()
  assert not list(tmp_path.glob('*.so'))


def test_kernel_takes_only_the_channels_it_tiles():
  assert conv_kernel.supports((8, 14, 14, 32), 64)
  assert not conv_kernel.supports((8, 28, 28, 1), 32)  # The first layer: XLA's gradient.
  assert not conv_kernel.supports((8, 14, 14, 32), 10)
  assert conv_kernel.block_supports((8, 28, 28, 1), (3, 3), 32)
  assert conv_kernel.block_supports((8, 32, 32, 3), (3, 3), 64)
  assert not conv_kernel.block_supports((8, 14, 14, 32), (3, 3), 64)  # Many channels: matmuls.
  assert not conv_kernel.block_supports((8, 27, 28, 1), (3, 3), 32)


def test_auto_takes_im2col_only_where_xla_sends_convolutions_to_ynnpack(monkeypatch):
  assert jax.default_backend() == 'cpu'
  assert cpu.xla_convolutions_are_fast()  # tests/conftest.py configured XLA:CPU as the launcher.
  assert conv.resolve('auto') == ('kernel' if conv_kernel.available() else 'xla')
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
  model = models.create(name, **kwargs)  # Models never name their convolution.
  with conv.implementation('xla'):
    variables = model.init(jax.random.PRNGKey(1), x)
    want = model.apply(variables, x)
  with conv.implementation('im2col'):
    jax.tree.map(np.testing.assert_array_equal, model.init(jax.random.PRNGKey(1), x), variables)
    np.testing.assert_allclose(model.apply(variables, x), want, rtol=1e-4, atol=1e-5)
  if conv_kernel.available():  # Its forward is XLA's; its kernel gradients must match too.

    def grads(impl):
      with conv.implementation(impl):
        return jax.grad(lambda v: jnp.sum(model.apply(v, x)**2))(variables)

    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                 grads('kernel'), grads('xla'))


def test_unknown_convolution_is_a_clear_error():
  with pytest.raises(
      Exception,
      match=r"convolution 'fft' is unknown; choose one of \['auto', 'xla', 'im2col', 'kernel'\]"):
    with conv.implementation('fft'):
      pass
