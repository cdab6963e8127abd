"""The convolutions `lib.cpu.conv.specialize` chooses from: XLA's, im2col, and lib.cpu.conv_kernel's (with the fused first block)."""
from collections.abc import Callable, Sequence
import functools

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from lib.cpu import conv_kernel
from lib.cpu.activations import relu

# nn.Conv's padding: a name ('SAME', 'VALID') or (low, high) per spatial axis.
Padding = str | Sequence[tuple[int, int]]
Pair = tuple[int, int]  # A 1-D convolution's (left, right) padding.


def _explicit(padding: Padding, x_shape: Sequence[int], kernel_size: Sequence[int],
              strides: Sequence[int]) -> tuple[tuple[int, int], ...]:
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x_shape[1:3], kernel_size, strides, padding)
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def xla_conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
             padding: Padding) -> jax.Array:
  """`lax.conv_general_dilated` in NHWC/HWIO, as nn.Conv calls it."""
  return lax.conv_general_dilated(x, kernel, strides, padding,
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _member_by_member(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """`fn` whose vmap calls it once per member (unrolled) and stacks the results.

  A population (config.num_seeds) vmaps the step over its members; XLA:CPU then computes
  each convolution as one grouped convolution, about half as fast as the members' own
  convolutions one after another. Unrolled, not a loop: a convolution inside a while loop
  runs slower still.
  """
  fn = jax.custom_batching.custom_vmap(fn)

  @fn.def_vmap
  def _rule(axis_size, in_batched, *args):
    members = [fn(*(a[i] if b else a for a, b in zip(args, in_batched))) for i in range(axis_size)]
    return jnp.stack(members), True

  return fn


def _forward(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
             padding: Padding) -> jax.Array:
  return _member_by_member(lambda x, k: xla_conv(x, k, strides, padding))(x, kernel)


def _input_grad(x: jax.Array, kernel: jax.Array, dy: jax.Array, strides: Sequence[int],
                padding: Padding) -> jax.Array:
  # XLA's input gradient is at matmul speed; where x needs none (the first layer) XLA drops it.
  def grad(x, k, dy):
    return jax.vjp(lambda x: xla_conv(x, k, strides, padding), x)[1](dy)[0]

  return _member_by_member(grad)(x, kernel, dy)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def kernel_conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                padding: tuple[tuple[int, int], ...]) -> jax.Array:
  """XLA's convolution whose kernel gradient is lib.cpu.conv_kernel's (CPU only; see `resolve`).

  Args:
    x: (batch, height, width, in_channels) float32; in_channels a multiple of 4.
    kernel: (kh, kw, in_channels, out_channels) float32; out_channels a multiple of 16.
    strides: (sh, sw).
    padding: ((top, bottom), (left, right)), explicit.

  Returns:
    (batch, out_height, out_width, out_channels), as `xla_conv`.
  """
  return _forward(x, kernel, strides, padding)


def _kernel_conv_fwd(x, kernel, strides, padding):
  return _forward(x, kernel, strides, padding), (x, kernel)


def _kernel_conv_bwd(strides, padding, residuals, dy):
  x, kernel = residuals
  dx = _input_grad(x, kernel, dy, strides, padding)
  return dx, conv_kernel.weight_grad(x, dy, kernel.shape[:2], strides, padding)


kernel_conv.defvjp(_kernel_conv_fwd, _kernel_conv_bwd)


def _pad_same(x: jax.Array, kernel_size: Sequence[int]) -> jax.Array:
  pads = _explicit('SAME', x.shape, kernel_size, (1, 1))
  return jnp.pad(x, ((0, 0), *pads, (0, 0)))


_POOLS = {'avg': nn.avg_pool, 'max': nn.max_pool}


def relu_pool(y: jax.Array, pool: str) -> jax.Array:
  """The 2x2 pool ('avg' or 'max', stride 2, 'VALID') of lib.cpu.activations.relu(y)."""
  return _POOLS[pool](relu(y), (2, 2), strides=(2, 2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv_relu_pool(x: jax.Array, kernel: jax.Array, bias: jax.Array, pool: str) -> jax.Array:
  """`relu_pool(conv 'SAME' stride 1 + bias, pool)` by lib.cpu.conv_kernel's fused block.

  CPU only, where `conv_kernel.block_supports` (the first layer of an image CNN).

  Args:
    x: (batch, height, width, channels) float32.
    kernel: (kh, kw, channels, features) float32.
    bias: (features,) float32.
    pool: 'avg' or 'max'.

  Returns:
    (batch, height // 2, width // 2, features).
  """
  return conv_kernel.block_forward(_pad_same(x, kernel.shape[:2]), kernel, bias, pool)


def _block_fwd(x, kernel, bias, pool):
  return conv_relu_pool(x, kernel, bias, pool), (x, kernel, bias)


def _block_bwd(pool, residuals, dout):
  x, kernel, bias = residuals
  # The input's gradient by XLA; for a network's first layer (the images) XLA drops it unused.
  plain = lambda x: relu_pool(xla_conv(x, kernel, (1, 1), 'SAME') + bias, pool)
  dx = jax.vjp(plain, x)[1](dout)[0]
  padded = _pad_same(x, kernel.shape[:2])
  return (dx, *conv_kernel.block_backward(padded, kernel, bias, pool, dout))


conv_relu_pool.defvjp(_block_fwd, _block_bwd)


def im2col_conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                padding: Padding) -> jax.Array:
  """`lax.conv_general_dilated` in NHWC/HWIO (no dilation, one group) as slices and a matmul.

  Args:
    x: (batch, height, width, in_channels).
    kernel: (kh, kw, in_channels, out_channels).
    strides: (sh, sw).
    padding: 'SAME', 'VALID' or ((top, bottom), (left, right)).

  Returns:
    (batch, out_height, out_width, out_channels).
  """
  kh, kw, cin, cout = kernel.shape
  sh, sw = strides
  padding = _explicit(padding, x.shape, (kh, kw), strides)
  x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  n, height, width, _ = x.shape
  out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
  if kh == kw == 1 and sh == sw == 1:
    patches = x
  else:  # Column (i, j, c) of the patches meets row (i, j, c) of the reshaped kernel.
    patches = jnp.concatenate([
        lax.slice(x, (0, i, j, 0), (n, i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, cin),
                  (1, sh, sw, 1)) for i in range(kh) for j in range(kw)
    ], axis=-1)
  out = patches.reshape(-1, kh * kw * cin) @ kernel.reshape(kh * kw * cin, cout)
  return out.reshape(n, out_h, out_w, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def population_conv1d(x: jax.Array, kernel: jax.Array, stride: int, padding: Pair) -> jax.Array:
  """nn.Conv's 1-D convolution (NWC, WIO, no dilation, one group) in lib.cpu.conv_kernel's kernels.

  For a population's steps (`lib.cpu.conv.population_steps`): vmapped over the members,
  the forward and both gradients compute every member in one call, where XLA would group
  the members' convolutions into one at a fraction of the speed. A single model's
  convolutions stay XLA's, as fast for one model. CPU only; see `lib.cpu.conv.resolve`.

  Args:
    x: (batch, length, in_channels) float32.
    kernel: (taps, in_channels, out_channels) float32.
    stride: the window's stride.
    padding: (left, right), explicit, >= 0.

  Returns:
    (batch, out_length, out_channels), as `lax.conv_general_dilated`.
  """
  return conv_kernel.conv1d_forward(x, kernel, stride, padding)


def _population_conv1d_fwd(x, kernel, stride, padding):
  return population_conv1d(x, kernel, stride, padding), (x, kernel)


def _population_conv1d_bwd(stride, padding, residuals, dy):
  x, kernel = residuals
  return (conv_kernel.conv1d_input_grad(dy, kernel, x.shape[-2], stride, padding[0]),
          conv_kernel.conv1d_weight_grad(x, dy, kernel.shape[-3], stride, padding[0]))


population_conv1d.defvjp(_population_conv1d_fwd, _population_conv1d_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def population_conv1d_relu(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int,
                           padding: Pair) -> jax.Array:
  """ReLU(nn.Conv's 1-D convolution + bias), a population's, in lib.cpu.conv_kernel's fused kernels.

  The forward adds the bias and applies ReLU as it writes; the gradients take the output's
  gradient where the output is > 0 and sum the bias's. Nothing between two layers is written
  but each one's output and its gradient: XLA would add the bias, apply ReLU, pad, and mask,
  slice and sum the gradients in passes over the activations. `lib.cpu.conv` uses it for a
  population's steps only (`population_steps`); a single model's layers run as written.

  Args:
    x: (batch, length, in_channels) float32.
    kernel: (taps, in_channels, out_channels) float32.
    bias: (out_channels,) float32.
    stride: the window's stride.
    padding: (left, right), explicit, >= 0.

  Returns:
    (batch, out_length, out_channels).
  """
  return conv_kernel.conv1d_forward(x, kernel, stride, padding, bias)


def _conv1d_relu_fwd(x, kernel, bias, stride, padding):
  out = population_conv1d_relu(x, kernel, bias, stride, padding)
  return out, (x, kernel, out)


def _conv1d_relu_bwd(stride, padding, residuals, dout):
  x, kernel, out = residuals
  dx = conv_kernel.conv1d_input_grad(dout, kernel, x.shape[-2], stride, padding[0], out)
  dw, db = conv_kernel.conv1d_weight_grad(x, dout, kernel.shape[-3], stride, padding[0], out)
  return dx, dw, db


population_conv1d_relu.defvjp(_conv1d_relu_fwd, _conv1d_relu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def population_conv1d_pair(x: jax.Array, w1: jax.Array, b1: jax.Array, w2: jax.Array, b2: jax.Array,
                           layers: conv_kernel.Layers) -> jax.Array:
  """Two of `population_conv1d_relu`'s layers as one block: the first one's output never leaves
  the cache.

  The forward computes the first layer's output per chunk of sequences and feeds it to the
  second at once; the backward recomputes it per chunk and sums both layers' gradients while it
  is in cache. The input's gradient is computed only where the input is differentiated (not
  for a model's data). For a population's steps only (`lib.cpu.conv.population_steps`).

  Args:
    x: (batch, length, in_channels) float32.
    w1, b1: the first layer's kernel (taps, in_channels, features) and bias (features,).
    w2, b2: the second layer's, reading the first one's features.
    layers: each layer's (stride, (left, right) padding), explicit, >= 0.

  Returns:
    (batch, out_length, w2's features), as the two layers one after the other.
  """
  return conv_kernel.conv1d_pair_forward(x, w1, b1, w2, b2, layers)


def _pair_fwd(x, w1, b1, w2, b2, layers):
  y = conv_kernel.conv1d_pair_forward(x.value, w1.value, b1.value, w2.value, b2.value, layers)
  # Whether x is differentiated is known here, while tracing, and rides in the residuals' tree
  # structure (an empty tuple or None, no array): its gradient is computed only then.
  return y, ((x.value, w1.value, b1.value, w2.value, b2.value, y), () if x.perturbed else None)


def _pair_bwd(layers, residuals, dy):
  (x, w1, b1, w2, b2, y), marker = residuals
  input_grad = marker is not None
  if isinstance(dy, jax.custom_derivatives.SymbolicZero):
    dy = jnp.zeros(dy.shape, dy.dtype)
  grads = conv_kernel.conv1d_pair_backward(x, w1, b1, w2, b2, y, dy, layers, input_grad)
  return tuple(grads) if input_grad else (jnp.zeros_like(x), *grads)


population_conv1d_pair.defvjp(_pair_fwd, _pair_bwd, symbolic_zeros=True)
