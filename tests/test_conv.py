"""lib.cpu.conv: im2col and the CPU kernel compute flax.linen.Conv's function, params and gradients."""
import collections
import os
import pathlib
import subprocess

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib import cpu, models
from lib.cpu import activations, conv, conv_kernel, convolutions

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


def _perturbed(params):
  """params with a non-zero bias too."""
  return jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params)


def _primitives(fn, *args):
  return [e.primitive.name for e in jax.make_jaxpr(fn)(*args).eqns]


@pytest.mark.parametrize('shape,kernel_size,strides,padding', CASES)
def test_im2col_matches_nn_conv_outputs_and_gradients(shape, kernel_size, strides, padding):
  x = jax.random.normal(jax.random.PRNGKey(1), shape)
  layer = nn.Conv(5, kernel_size, strides=strides, padding=padding)
  params = _perturbed(layer.init(jax.random.PRNGKey(0), x))
  ours = conv.specialize(layer.apply)
  with conv.implementation('im2col'):
    assert 'conv_general_dilated' not in _primitives(ours, params, x)  # Slices and a matmul.
    want, got = layer.apply(params, x), ours(params, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    cotangent = jax.random.normal(jax.random.PRNGKey(3), want.shape)

    def grads(apply):
      return jax.grad(lambda p, x: jnp.sum(apply(p, x) * cotangent), argnums=(0, 1))(params, x)

    for a, b in zip(jax.tree.leaves(grads(ours)), jax.tree.leaves(grads(layer.apply))):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


needs_kernel = pytest.mark.skipif(
    not conv_kernel.available(),
    reason='lib.cpu.conv_kernel is not available here (needs x86-64 with AVX-512 or AVX2 + FMA and '
    'a C++ compiler)')

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
  layer = nn.Conv(features, kernel_size, strides=strides, padding=padding)
  params = layer.init(jax.random.PRNGKey(0), x)
  cotangent = jax.random.normal(jax.random.PRNGKey(3), layer.apply(params, x).shape)
  ours = conv.specialize(layer.apply)

  def grads(apply):
    return jax.jit(jax.grad(lambda p, x: jnp.sum(apply(p, x) * cotangent), argnums=(0, 1)))(params,
                                                                                            x)

  with conv.implementation('kernel'):
    step = jax.jit(jax.grad(lambda p, x: jnp.sum(ours(p, x) * cotangent)))
    assert conv_kernel.WEIGHT_GRAD in step.lower(params, x).as_text()  # The kernel, not XLA's.
    got, again = grads(ours), grads(ours)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(grads(layer.apply))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  # Fixed chunks summed in order: the same bits every time.
  jax.tree.map(np.testing.assert_array_equal, again, got)


@needs_kernel
def test_a_population_computes_each_members_convolutions_alone():
  # config.num_seeds vmaps the step over its members. XLA would group the members'
  # convolutions into one, at half the speed; each member's gradients are still its own.
  layer = nn.Conv(64, (3, 3))
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 14, 14, 32))
  params = jax.vmap(layer.init)(jax.random.split(jax.random.PRNGKey(0), 3), x)
  ours = conv.specialize(layer.apply)

  def grads(apply):
    return jax.grad(lambda p, x: jnp.sum(jnp.sin(apply(p, x))), argnums=(0, 1))

  with conv.implementation('kernel'):
    population = jax.jit(jax.vmap(grads(ours)))
    text = population.lower(params, x).as_text()
    got = population(params, x)
  assert conv_kernel.WEIGHT_GRAD in text and 'feature_group_count = 3' not in text
  for i in range(3):
    alone = grads(layer.apply)(jax.tree.map(lambda p: p[i], params), x[i])
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(alone)):
      np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-4)


# (input shape, kernel, stride, padding, features) of 1-D convolutions: MNIST-1D's CNN layers,
# the forecast models' causal ones, and shapes that leave every vector and row tile part full.
CONV1D_CASES = [
    ((100, 40, 1), 5, 2, [(1, 1)], 25),  # mnist1d cnn: first layer.
    ((100, 19, 25), 3, 2, [(1, 1)], 25),  # mnist1d cnn: second layer.
    ((7, 10, 25), 3, 2, [(1, 1)], 25),
    ((3, 30, 8), 5, 1, 'CAUSAL', 70),  # forecast: a causal conv, more than 4 vectors of features.
    ((5, 33, 40), 4, 3, [(2, 2)], 17),
    ((2, 9, 130), 1, 1, 'VALID', 3),  # A patch of 130 values, in more than one tile.
]


@needs_kernel
@pytest.mark.parametrize('shape,taps,stride,padding,features', CONV1D_CASES)
def test_a_populations_1d_convolutions_run_in_one_kernel_call_as_each_member_alone(
    shape, taps, stride, padding, features):
  layer = nn.Conv(features, (taps,), strides=(stride,), padding=padding)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, *shape))  # 3 members.
  params = jax.vmap(layer.init)(jax.random.split(jax.random.PRNGKey(0), 3), x)
  ours = conv.specialize(layer.apply)

  def grads(apply):
    return jax.grad(lambda p, x: jnp.sum(jnp.sin(apply(p, x))), argnums=(0, 1))

  def member(p, x):  # As lib.train.steps traces a population's step.
    with conv.population_steps():
      return grads(ours)(p, x)

  one = lambda tree: jax.tree.map(lambda a: a[1], tree)
  with conv.implementation('kernel'):
    population = jax.jit(jax.vmap(member))
    text = population.lower(params, x).as_text()
    got, again = population(params, x), population(params, x)
    single = jax.jit(grads(ours))
    alone_text = single.lower(one(params), x[1]).as_text()
    alone = single(one(params), x[1])
  for name in (conv_kernel.CONV1D_FORWARD, conv_kernel.CONV1D_INPUT_GRAD,
               conv_kernel.CONV1D_WEIGHT_GRAD):
    assert text.count(name) == 1 and name not in alone_text  # All members in one call.
  assert 'stablehlo.convolution' not in text and 'stablehlo.convolution' in alone_text
  want = [grads(layer.apply)(jax.tree.map(lambda p: p[i], params), x[i]) for i in range(3)
         ]  # noqa: B023
  for i in range(3):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want[i])):
      np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-4)
  # A single model keeps XLA's convolution: nn.Conv's bits.
  jax.tree.map(np.testing.assert_array_equal, alone, want[1])
  jax.tree.map(np.testing.assert_array_equal, again, got)  # Fixed chunks: the same bits again.


class _Conv1dStack(nn.Module):
  """MNIST-1D's CNN as the models write it: nn.Conv → nn.relu, three times, then nn.Dense."""
  @nn.compact
  def __call__(self, x):
    x = x[..., None]
    for features, taps in [(25, 5), (25, 3), (25, 3)]:
      x = nn.relu(nn.Conv(features, (taps,), strides=(2,), padding=[(1, 1)])(x))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


@needs_kernel
def test_a_populations_conv_bias_relu_layers_run_fused_and_a_nan_stays_nan():
  model = _Conv1dStack()
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 20, 40))
  params = jax.vmap(model.init)(jax.random.split(jax.random.PRNGKey(1), 3), x)
  ours = conv.specialize(model.apply)

  def grads(apply):
    return jax.grad(lambda p, x: jnp.sum(jnp.sin(apply(p, x))), argnums=(0, 1))

  def population(p, x):
    with conv.population_steps():
      return grads(ours)(p, x)

  with conv.implementation('kernel'):
    step = jax.jit(jax.vmap(population))
    text = step.lower(params, x).as_text()
    got = step(params, x)
    alone_text = jax.jit(grads(ours)).lower(jax.tree.map(lambda a: a[0], params), x[0]).as_text()
  fused = conv_kernel.CONV1D_RELU.values()
  pair = (conv_kernel.CONV1D_PAIR_FORWARD, conv_kernel.CONV1D_PAIR_BACKWARD_DX)
  # Layers 1 and 2 as one block (x is differentiated here: its gradient too), layer 3 fused
  # alone: one call each, for all members.
  assert all(text.count(f'@{name}(') == 1 for name in (*fused, *pair))
  assert f'@{conv_kernel.CONV1D_PAIR_BACKWARD}(' not in text
  assert 'stablehlo.convolution' not in text and 'stablehlo.pad' not in text
  assert not any(name in alone_text for name in fused)  # A single model runs as written.
  want = jax.vmap(grads(model.apply))(params, x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # A member whose weights are NaN (diverged) gives NaN, not ReLU's 0: its loss stays NaN.
  nan = jax.tree.map(lambda a: a.at[1].set(jnp.nan), params)
  with conv.implementation('kernel'), conv.population_steps():
    out = jax.jit(jax.vmap(ours))(nan, x)
  assert np.isnan(out[1]).all() and np.isfinite(out[0]).all()


@needs_kernel
@pytest.mark.parametrize('batch', [100, 30])
def test_two_conv_relu_layers_as_one_block_give_the_two_layers_results(batch):
  # MNIST-1D's first two layers, 3 members. At batch 100 (the CNN's) the first layer's weight
  # gradient chunks lie within the block's, so every result keeps its bits; at 30 they do not,
  # and the first layer's weight gradient sums in another order.
  keys = iter(jax.random.split(jax.random.PRNGKey(0), 6))
  normal = lambda *shape: 0.3 * jax.random.normal(next(keys), (3, *shape))
  x, w1, b1, w2, b2 = (normal(batch, 40, 1), normal(5, 1, 25), normal(25), normal(3, 25, 25),
                       normal(25))
  dy = normal(batch, 10, 25)
  layers = ((2, (1, 1)), (2, (1, 1)))

  def two(x, w1, b1, w2, b2):
    first = convolutions.population_conv1d_relu(x, w1, b1, 2, (1, 1))
    return convolutions.population_conv1d_relu(first, w2, b2, 2, (1, 1))

  def block(x, w1, b1, w2, b2):
    return convolutions.population_conv1d_pair(x, w1, b1, w2, b2, layers)

  def grads(fn, argnums):
    loss = lambda x, w1, b1, w2, b2: jnp.sum(fn(x, w1, b1, w2, b2) * dy)
    return jax.jit(jax.vmap(jax.grad(loss, argnums)))

  for argnums in [(1, 2, 3, 4), (0, 1, 2, 3, 4)]:
    step = grads(block, argnums)
    text = step.lower(x, w1, b1, w2, b2).as_text()
    # The input's gradient is computed only where it is asked for (not for a model's data).
    assert (f'@{conv_kernel.CONV1D_PAIR_BACKWARD_DX}(' in text) == (0 in argnums)
    got, want = step(x, w1, b1, w2, b2), grads(two, argnums)(x, w1, b1, w2, b2)
    for i, (a, b) in enumerate(zip(got, want)):
      if batch == 100 or argnums[i] not in (1, 2):
        np.testing.assert_array_equal(a, b)
      else:  # The first layer's kernel and bias.
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(
      jax.jit(jax.vmap(block))(x, w1, b1, w2, b2),
      jax.jit(jax.vmap(two))(x, w1, b1, w2, b2))


@needs_kernel
def test_both_instruction_sets_1d_kernels_match_a_scalar_loop(tmp_path):
  # JAX runs the widest set this CPU has; this builds both and compares them with plain loops.
  # AddressSanitizer checks that no kernel reads past its arrays (each is allocated to size):
  # the weight gradients load whole vectors past a patch's or a row's end.
  binary = tmp_path / 'check'
  source = pathlib.Path(__file__).with_name('conv1d_kernels_check.cc')
  subprocess.run([
      os.environ.get('CXX', 'g++'), '-O1', '-std=c++17', '-fsanitize=address',
      f'-I{conv_kernel.SOURCE.parent}', f'-I{jax.ffi.include_dir()}',
      str(source), '-o',
      str(binary)
  ], check=True, capture_output=True)
  done = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stdout + done.stderr[-3000:]
  assert done.stdout.count('worst |diff|') == 14


class _Block(nn.Module):
  """A first block as the models write it: nn.Conv → nn.relu → 2x2 pool."""
  features: int
  pool: str

  @nn.compact
  def __call__(self, x):
    return models.POOLS[self.pool](nn.relu(nn.Conv(self.features, (3, 3))(x)), (2, 2),
                                   strides=(2, 2))


class _Residual(nn.Module):
  """A block whose pre-activation is read twice: it cannot be computed in one pass."""
  @nn.compact
  def __call__(self, x):
    y = nn.Conv(16, (3, 3))(x)
    return nn.avg_pool(nn.relu(y), (2, 2), strides=(2, 2)) + y[:, ::2, ::2]


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
  block = _Block(features, pool)
  params = _perturbed(block.init(jax.random.PRNGKey(0), x))
  with conv.implementation('kernel'):
    step = jax.jit(conv.specialize(block.apply))
    assert conv_kernel.BLOCK_FORWARD in step.lower(params, x).as_text()
    want = block.apply(params, x)
    np.testing.assert_allclose(step(params, x), want, rtol=1e-5, atol=1e-5)
    cotangent = jax.random.normal(jax.random.PRNGKey(3), want.shape)
    loss = lambda apply: lambda p, x: jnp.sum(apply(p, x) * cotangent)
    # The input's gradient too (XLA's, for a block that is not a network's first layer).
    got = jax.jit(jax.grad(loss(conv.specialize(block.apply)), (0, 1)))(params, x)
  want = jax.grad(loss(block.apply), (0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  # A NaN in a window makes its output NaN, so that the engine's NaN guard sees it (where
  # XLA's does too; XLA:CPU's max pool drops NaNs).
  poisoned = x.at[0, 2, 3, 0].set(jnp.nan)
  ours = np.isnan(step(params, poisoned))
  assert ours[0, 0:2, 1:3].all() and ours.sum() == 4 * features  # Conv rows 1-3, columns 2-4.
  assert (ours >= np.isnan(block.apply(params, poisoned))).all()


@pytest.mark.parametrize(
    'model,shape,pools',
    [
        (models.CNN(), (2, 28, 28, 1), ['avg']),  # The second block has 32 channels in: matmuls.
        (models.CNN(pool='max'), (2, 28, 28, 1), ['max']),
        (models.CNN(features=(16,)), (2, 9, 9, 1), []),  # Odd sides: the pool drops a row.
        (models.AnySizeCNN(), (2, 40, 36, 1), ['max']),  # Its 'SAME' pool pads nothing here...
        (models.AnySizeCNN(), (2, 30, 30, 1), ['max']),
        (models.AnySizeCNN(), (2, 29, 30, 1), []),  # ...and pads here.
        (_Block(48, 'max'), (2, 8, 6, 2), ['max']),
        (_Residual(), (2, 8, 8, 1), []),
        (models.ConvAutoencoder(), (2, 28, 28, 1), []),  # Stride 2, no pool.
    ])
def test_fused_blocks_are_the_chains_the_kernel_takes(model, shape, pools):
  x = jnp.zeros(shape)
  jaxpr = jax.make_jaxpr(model.apply)(model.init(jax.random.PRNGKey(0), x), x).jaxpr
  assert [pool for _, _, pool, _ in conv._blocks(jaxpr).values()] == pools


@pytest.mark.parametrize(
    'name,kwargs,shape,calls',
    [
        ('cnn', {}, (2, 28, 28, 1), {'block': 1, 'conv': 1}),
        ('cnn', {'pool': 'max'}, (2, 28, 28, 1), {'block': 1, 'conv': 1}),
        ('any_size_cnn', {}, (2, 40, 36, 1), {'block': 1, 'conv': 2}),  # Not the 1x1 head to 10.
        ('conv_autoencoder', {'shape': (28, 28, 1)}, (2, 28, 28, 1), {'conv': 1}),
    ])
def test_kernel_substitutions_keep_the_models_function(monkeypatch, name, kwargs, shape, calls):
  """On any CPU: 'kernel' with the kernels' XLA references standing in, counting their calls."""
  called = collections.Counter()

  def block(x, kernel, bias, pool):
    called['block'] += 1
    return convolutions.relu_pool(convolutions.xla_conv(x, kernel, (1, 1), 'SAME') + bias, pool)

  def weight_grad_conv(x, kernel, strides, padding):
    called['conv'] += 1
    return convolutions.xla_conv(x, kernel, strides, padding)

  monkeypatch.setattr(conv_kernel, 'available', lambda: True)
  monkeypatch.setattr(conv, 'conv_relu_pool', block)
  monkeypatch.setattr(conv, 'kernel_conv', weight_grad_conv)
  model = models.create(name, **kwargs)
  x = jax.random.uniform(jax.random.PRNGKey(0), shape)
  variables = _perturbed(model.init(jax.random.PRNGKey(1), x))
  loss = lambda apply: lambda v: jnp.sum(apply(v, x)**2)
  with conv.implementation('kernel'):
    got = jax.value_and_grad(loss(conv.specialize(model.apply)))(variables)
  assert called == calls
  want = jax.value_and_grad(loss(model.apply))(variables)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got, want)


def test_kernel_off_or_unbuildable_means_xla(monkeypatch, tmp_path):
  monkeypatch.setenv('JAXNOTES_CONV_KERNEL', '0')
  assert not conv_kernel.available.__wrapped__()
  monkeypatch.delenv('JAXNOTES_CONV_KERNEL')
  monkeypatch.setenv('JAXNOTES_CACHE', str(tmp_path))
  monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
  assert not conv_kernel.available.__wrapped__()
  assert not list(tmp_path.glob('*.so'))


def test_a_model_without_convolutions_never_probes_the_kernel(monkeypatch):
  probes = []
  monkeypatch.setattr(conv_kernel, 'available', lambda: probes.append(1) or False)
  mlp = models.create('mlp', outputs=10, hidden=(8,))
  variables = mlp.init(jax.random.PRNGKey(0), jnp.ones((2, 4)))
  with conv.implementation('kernel'):
    jax.jit(conv.specialize(mlp.apply))(variables, jnp.ones((2, 4)))
  assert not probes
  cnn = models.create('cnn', outputs=10, features=(16, 16), dense=8)
  variables = cnn.init(jax.random.PRNGKey(0), jnp.ones((2, 8, 8, 1)))
  with conv.implementation('kernel'):
    jax.jit(conv.specialize(cnn.apply))(variables, jnp.ones((2, 8, 8, 1)))
  assert probes


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
  variables = model.init(jax.random.PRNGKey(1), x)
  want = model.apply(variables, x)
  ours = conv.specialize(model.apply)
  for impl in ('xla', 'im2col', 'auto'):
    with conv.implementation(impl):
      np.testing.assert_allclose(ours(variables, x), want, rtol=1e-4, atol=1e-5)
  if conv_kernel.available():  # Its gradients must match XLA's too.

    def grads(impl):
      with conv.implementation(impl):
        return jax.grad(lambda v: jnp.sum(ours(v, x)**2))(variables)

    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                 grads('kernel'), grads('xla'))


def test_specialize_keeps_static_arguments_and_the_outputs_structure():
  model = models.MLP(hidden=(8,), batch_norm=True)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 5))
  variables = model.init(jax.random.PRNGKey(1), x)
  ours = conv.specialize(model.apply)
  step = lambda apply: jax.jit(lambda v, x: apply(v, x, train=True, mutable=['batch_stats']))
  want, got = step(model.apply)(variables, x), step(ours)(variables, x)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  vae = models.VAE(latents=2, hidden=(8,))
  z = vae.init({'params': jax.random.PRNGKey(0), 'sample': jax.random.PRNGKey(1)}, x)
  np.testing.assert_array_equal(
      conv.specialize(vae.apply)(z, x, method=models.VAE.encode)[0],
      vae.apply(z, x, method=models.VAE.encode)[0])
  # Equal wrappers of one function: a TrainState's jitted steps are not traced again.
  assert conv.specialize(model.apply) == ours


def test_relu_is_nn_relu_in_values_and_gradient():
  x = jnp.concatenate([
      jax.random.normal(jax.random.PRNGKey(0), (1000,)),
      jnp.array([0.0, -0.0, 1e-38, -1e-38, jnp.inf, -jnp.inf])
  ])
  assert (activations.relu(x) == jax.nn.relu(x)).all()  # As floats: a zero's sign may differ.
  grad = lambda f: jax.grad(lambda x: (f(x) * jnp.arange(x.size)).sum())(x)
  assert (grad(activations.relu) == grad(jax.nn.relu)).all()
  assert jnp.isnan(activations.relu(jnp.array(jnp.nan)))
  assert (jax.jit(jax.vmap(jax.grad(activations.relu)))(x) == (x > 0)).all()
  # specialize computes the models' nn.relu as this one on CPU, and leaves other ReLUs be.
  f = lambda x: nn.relu(x) + jnp.maximum(x, 0.0)

  def zeros(fn):  # The zero each max compares with: its sign bit, outermost equations first.
    eqns = jax.make_jaxpr(fn)(x).eqns
    eqns = [e.params['call_jaxpr'].eqns[0] if 'call_jaxpr' in e.params else e for e in eqns]
    return [
        bool(np.signbit(v.val)) for e in eqns if e.primitive.name == 'max' for v in e.invars
        if not hasattr(v, 'aval') or v.aval.shape == ()
    ]

  assert zeros(conv.specialize(f)) == [True, False]
  np.testing.assert_array_equal(conv.specialize(f)(x), f(x))


def test_unknown_convolution_is_a_clear_error():
  with pytest.raises(
      Exception,
      match=r"convolution 'fft' is unknown; choose one of \['auto', 'xla', 'im2col', 'kernel'\]"):
    with conv.implementation('fft'):
      pass
