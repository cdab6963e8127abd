"""`Conv`: flax.linen.Conv's function and params, by XLA's convolution, im2col or a CPU kernel.

GPU and TPU run XLA's convolution ('xla'). On CPU, with lib.cpu's settings (the
launcher's), 'auto' is 'kernel' on one device where lib.cpu.conv_kernel builds: XLA
computes the forward and input-gradient convolutions (near this CPU's matmul
speed once lib.cpu keeps lone convolutions out of YNNPACK), lib.cpu.conv_kernel the
weight gradients (XLA's ran at ~115 GFLOP/s, the kernel at ~190) and, with
`relu_pool='avg'` or `'max'`, a whole first block (conv from 1-3 channels + bias
+ ReLU + 2x2 pool, forward and backward) in one pass. The MNIST CNN's step,
paired in one process: 1.46x XLA's convolutions (docs/performance.md).
`impl='im2col'` writes the convolution as the kh*kw shifted, strided slices of
the padded input side by side times the kernel as one matrix; 'auto' takes it on
a CPU whose XLA still sends lone convolutions to YNNPACK (the user's own
XLA_FLAGS, or JAXNOTES_CPU_DEFAULTS=0), where it and XLA's are level.
"""
from collections.abc import Iterator, Sequence
import contextlib
import contextvars
import functools

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from lib import cpu
from lib.cpu import conv_kernel
from lib.cpu.activations import relu
from lib.errors import UserError

IMPLEMENTATIONS = ('auto', 'xla', 'im2col', 'kernel')
# The implementation of the Conv layers traced in this context; models never name one.
_CHOICE = contextvars.ContextVar('jaxnotes_conv_implementation', default='auto')


@contextlib.contextmanager
def implementation(name: str) -> Iterator[None]:
  """Conv layers traced inside this block compute with `name` (a key of IMPLEMENTATIONS).

  For tests and benchmarks that compare implementations; runs use 'auto' (`resolve`).
  A function jitted inside keeps the choice it was traced with.
  """
  if name not in IMPLEMENTATIONS:
    raise UserError(f'convolution {name!r} is unknown; choose one of {list(IMPLEMENTATIONS)}')
  token = _CHOICE.set(name)
  try:
    yield
  finally:
    _CHOICE.reset(token)


Padding = str | Sequence[tuple[int, int]]


def resolve(impl: str) -> str:
  """The implementation `impl` means here.

  'auto' is 'xla' on GPU and TPU. On CPU it is 'im2col' where XLA still sends
  convolutions to YNNPACK; else 'kernel' on one device where lib.cpu.conv_kernel is
  available (its custom call does not split over devices), else 'xla'.
  """
  if impl != 'auto':
    return impl
  if jax.default_backend() != 'cpu':
    return 'xla'
  if not cpu.xla_convolutions_are_fast():
    return 'im2col'
  return 'kernel' if jax.device_count() == 1 and conv_kernel.available() else 'xla'


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
  return xla_conv(x, kernel, strides, padding)


def _kernel_conv_fwd(x, kernel, strides, padding):
  return xla_conv(x, kernel, strides, padding), (x, kernel)


def _kernel_conv_bwd(strides, padding, residuals, dy):
  x, kernel = residuals
  # XLA's input gradient is at matmul speed; where x needs none (the first layer) XLA drops it.
  dx = jax.vjp(lambda x: xla_conv(x, kernel, strides, padding), x)[1](dy)[0]
  return dx, conv_kernel.weight_grad(x, dy, kernel.shape[:2], strides, padding)


kernel_conv.defvjp(_kernel_conv_fwd, _kernel_conv_bwd)


def _pad_same(x: jax.Array, kernel_size: Sequence[int]) -> jax.Array:
  pads = _explicit('SAME', x.shape, kernel_size, (1, 1))
  return jnp.pad(x, ((0, 0), *pads, (0, 0)))


POOLS = {'avg': nn.avg_pool, 'max': nn.max_pool}


def relu_pool(y: jax.Array, pool: str) -> jax.Array:
  """The 2x2 pool ('avg' or 'max', stride 2, 'VALID') of lib.cpu.activations.relu(y)."""
  return POOLS[pool](relu(y), (2, 2), strides=(2, 2))


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


class Conv(nn.Module):
  """`flax.linen.Conv` for 2-D NHWC inputs: the same params ('kernel' HWIO, 'bias'), init and outputs.

  Attributes:
    features: output channels.
    kernel_size: (kh, kw).
    strides: (sh, sw) or one int for both.
    padding: 'SAME', 'VALID' or ((top, bottom), (left, right)).
    use_bias: add a bias.
    impl: None (the enclosing `implementation`, 'auto' by default), 'auto' (see
      `resolve`), 'xla' (lax.conv_general_dilated, as nn.Conv),
      'im2col', or 'kernel' (XLA's, with lib.cpu.conv_kernel's kernel gradient on CPU where the
      channels allow it, else XLA's; a custom VJP, so reverse mode only: forward-mode
      derivatives such as jax.jvp or Hessians need 'xla').
    relu_pool: None, or 'avg' / 'max': return `relu_pool(output, relu_pool)`, the 2x2
      pool of its ReLU; with impl 'kernel' (and 'auto' where it means 'kernel') and a
      block lib.cpu.conv_kernel.block_supports (few input channels, 'SAME', stride 1), in
      one pass.
  """
  features: int
  kernel_size: Sequence[int]
  strides: int | Sequence[int] = 1
  padding: Padding = 'SAME'
  use_bias: bool = True
  impl: str | None = None
  relu_pool: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = self.kernel_size
    strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
    kernel = self.param('kernel', nn.linear.default_kernel_init,
                        (kh, kw, x.shape[-1], self.features))
    impl = resolve(self.impl or _CHOICE.get())
    kernel_path = (impl == 'kernel' and x.dtype == kernel.dtype == jnp.float32 and
                   conv_kernel.available())
    bias = (self.param('bias', nn.initializers.zeros_init(),
                       (self.features,)) if self.use_bias else None)
    if (self.relu_pool and kernel_path and bias is not None and strides == (1, 1) and
        self.padding == 'SAME' and conv_kernel.block_supports(x.shape, (kh, kw), self.features)):
      return conv_relu_pool(x, kernel, bias, self.relu_pool)
    if impl == 'im2col':
      y = im2col_conv(x, kernel, strides, self.padding)
    elif kernel_path and conv_kernel.supports(x.shape, self.features):
      y = kernel_conv(x, kernel, strides, _explicit(self.padding, x.shape, (kh, kw), strides))
    else:
      y = xla_conv(x, kernel, strides, self.padding)
    if bias is not None:
      y = y + bias
    return relu_pool(y, self.relu_pool) if self.relu_pool else y
