"""`Conv`: flax.linen.Conv's function and params, by XLA's convolution or by im2col.

On CPU, XLA's convolution is fast once `lib.cpu.configure()` (which the launcher
calls before JAX starts) keeps lone convolutions out of YNNPACK; GPU and TPU run
it natively. `Conv(impl='im2col')` writes the convolution as the kh*kw shifted,
strided slices of the padded input side by side times the kernel as one matrix;
its gradients are matmuls plus slices and pads. `Conv(impl='auto')` takes
im2col only on a CPU whose XLA still sends lone convolutions to YNNPACK (the
user's own XLA_FLAGS, or JAXNOTES_CPU_DEFAULTS=0). The MNIST CNN's step,
benchmarks/frameworks.py, fresh processes, two runs of 3 rounds: as installed,
im2col 2,120 and 1,991 examples/s vs XLA's 2,002 and 1,951 (level within the
VM's noise; 1,614 vs 1,966 in a later run of 2 rounds); with lib.cpu's settings,
XLA's 4,389 and 4,542 vs im2col 3,114 and 2,880 (its earlier XLA flag), 3,806
vs 2,061 (its current one).
"""
from collections.abc import Sequence

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from lib import cpu

IMPLEMENTATIONS = ('auto', 'xla', 'im2col')

Padding = str | Sequence[tuple[int, int]]


def resolve(impl: str) -> str:
  """The implementation `impl` means here: 'auto' is 'im2col' on a CPU whose XLA still
  sends convolutions to YNNPACK, else 'xla' (GPU, TPU, or CPU after lib.cpu.configure)."""
  if impl == 'auto':
    slow_xla = jax.default_backend() == 'cpu' and not cpu.xla_convolutions_are_fast()
    return 'im2col' if slow_xla else 'xla'
  return impl


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
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], (kh, kw), (sh, sw), padding)
  x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  n, height, width, _ = x.shape
  out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
  if kh == kw == 1 and sh == sw == 1:
    patches = x
  else:  # Column (i, j, c) of the patches meets row (i, j, c) of the reshaped kernel.
    patches = jnp.concatenate(
        [lax.slice(x, (0, i, j, 0), (n, i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, cin),
                   (1, sh, sw, 1)) for i in range(kh) for j in range(kw)], axis=-1)
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
    impl: 'auto', 'xla' (lax.conv_general_dilated, as nn.Conv) or 'im2col'.
  """
  features: int
  kernel_size: Sequence[int]
  strides: int | Sequence[int] = 1
  padding: Padding = 'SAME'
  use_bias: bool = True
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = self.kernel_size
    strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
    kernel = self.param('kernel', nn.linear.default_kernel_init,
                        (kh, kw, x.shape[-1], self.features))
    if resolve(self.impl) == 'im2col':
      y = im2col_conv(x, kernel, strides, self.padding)
    else:
      y = lax.conv_general_dilated(x, kernel, strides, self.padding,
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros_init(), (self.features,))
    return y
