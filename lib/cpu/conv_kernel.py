"""The CPU convolution kernels (lib/cpu/conv_kernel.cc): built, loaded and called.

Three families: a 2-D convolution's weight gradient, an image model's first
block (conv + bias → ReLU → 2x2 pool, forward and backward), and 1-D
convolutions (forward, input and weight gradients, alone, with a fused bias
and ReLU, or two such layers as one block) that take a population's members as
leading dimensions and compute them all in one call.

The C++ source (conv_kernel.cc, with the kernels themselves in
conv_kernel_simd.h) is compiled on first use with the C++ compiler (`$CXX`, else
`g++`) against the XLA FFI headers that jaxlib ships, into a cache folder
(`$JAXNOTES_CACHE`, else `~/.cache/jaxnotes`) under a name that hashes the
sources, the command and the jaxlib version; later processes load the cached
library (~10 s once here, then nothing). The library holds the kernels for
AVX-512 and for AVX2 with FMA and runs the widest this CPU has. Where it cannot
be had (not x86-64, neither instruction set, no compiler, JAXNOTES_CONV_KERNEL=0)
`available()` is False, with one logged line saying why, and lib.cpu.conv uses
XLA's convolution alone.
"""
from collections.abc import Sequence
from typing import Any
import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import subprocess
import tempfile

from absl import logging
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

import lib

WEIGHT_GRAD = 'jaxnotes_conv_weight_grad'
BLOCK_FORWARD, BLOCK_BACKWARD = 'jaxnotes_conv_block_forward', 'jaxnotes_conv_block_backward'
CONV1D_FORWARD, CONV1D_INPUT_GRAD, CONV1D_WEIGHT_GRAD = ('jaxnotes_conv1d_forward',
                                                         'jaxnotes_conv1d_input_grad',
                                                         'jaxnotes_conv1d_weight_grad')
# The same with a fused bias + ReLU: ReLU(conv + b) forward, dy masked by the ReLU's output.
CONV1D_RELU = {
    n: n.replace('conv1d', 'conv1d_relu')
    for n in (CONV1D_FORWARD, CONV1D_INPUT_GRAD, CONV1D_WEIGHT_GRAD)
}
# Two conv -> bias -> ReLU layers as one block: forward, and backward without or with the input's
# gradient.
CONV1D_PAIR_FORWARD, CONV1D_PAIR_BACKWARD, CONV1D_PAIR_BACKWARD_DX = (
    'jaxnotes_conv1d_pair_forward', 'jaxnotes_conv1d_pair_backward',
    'jaxnotes_conv1d_pair_backward_dx')
SOURCE = pathlib.Path(__file__).with_name('conv_kernel.cc')
HEADER = SOURCE.with_name('conv_kernel_simd.h')  # The kernels; SOURCE includes it.


def _build() -> pathlib.Path:
  command = [
      os.environ.get('CXX', 'g++'), '-O3', '-std=c++17', '-shared', '-fPIC',
      f'-I{jax.ffi.include_dir()}'
  ]
  key = hashlib.sha256(SOURCE.read_bytes() + HEADER.read_bytes() + ' '.join(command).encode() +
                       jaxlib.__version__.encode()).hexdigest()[:16]
  cache = pathlib.Path(lib.cache_dir())
  library = cache / f'conv_kernel-{key}.so'
  if not library.exists():
    cache.mkdir(parents=True, exist_ok=True)
    # Built beside and renamed into place: processes that build at once never load half a file.
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
      built = pathlib.Path(tmp) / library.name
      subprocess.run([*command, str(SOURCE), '-o', str(built)], check=True, capture_output=True,
                     text=True)
      os.replace(built, library)
  return library


@functools.cache
def available() -> bool:
  """Whether the kernel is built, runs on this CPU and is registered with XLA:CPU (once per process)."""
  if os.environ.get('JAXNOTES_CONV_KERNEL') == '0':
    return False
  if platform.machine().lower() not in ('x86_64', 'amd64'):
    logging.info('lib.cpu.conv_kernel: not an x86-64 CPU; XLA computes the convolutions')
    return False
  try:
    library = ctypes.CDLL(str(_build()))
  except (OSError, subprocess.CalledProcessError) as e:
    lines = (getattr(e, 'stderr', '') or str(e)).splitlines()
    detail = next((line for line in lines if 'error' in line), lines[-1] if lines else '')
    logging.warning(
        'lib.cpu.conv_kernel: could not build or load %s (%s); XLA computes the '
        'convolutions', SOURCE.name, detail.strip())
    return False
  if not library.JaxnotesConvKernelLanes():
    logging.info('lib.cpu.conv_kernel: this CPU has neither AVX-512 nor AVX2 with FMA; XLA '
                 'computes the convolutions')
    return False
  for target, handler in [(WEIGHT_GRAD, library.JaxnotesConvWgrad),
                          (BLOCK_FORWARD, library.JaxnotesConvBlockForward),
                          (BLOCK_BACKWARD, library.JaxnotesConvBlockBackward),
                          (CONV1D_FORWARD, library.JaxnotesConv1dForward),
                          (CONV1D_INPUT_GRAD, library.JaxnotesConv1dInputGrad),
                          (CONV1D_WEIGHT_GRAD, library.JaxnotesConv1dWeightGrad),
                          (CONV1D_RELU[CONV1D_FORWARD], library.JaxnotesConv1dReluForward),
                          (CONV1D_RELU[CONV1D_INPUT_GRAD], library.JaxnotesConv1dReluInputGrad),
                          (CONV1D_RELU[CONV1D_WEIGHT_GRAD], library.JaxnotesConv1dReluWeightGrad),
                          (CONV1D_PAIR_FORWARD, library.JaxnotesConv1dPairForward),
                          (CONV1D_PAIR_BACKWARD, library.JaxnotesConv1dPairBackward),
                          (CONV1D_PAIR_BACKWARD_DX, library.JaxnotesConv1dPairBackwardDx)]:
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform='cpu')
  return True


def supports(x_shape: Sequence[int], features: int) -> bool:
  """Whether the kernel takes this convolution: input channels a multiple of 4, outputs of 16."""
  return x_shape[-1] % 4 == 0 and features % 16 == 0


def weight_grad(x: jax.Array, dy: jax.Array, kernel_size: Sequence[int], strides: Sequence[int],
                padding: Sequence[tuple[int, int]]) -> jax.Array:
  """The kernel gradient of `lax.conv_general_dilated(x, kernel, strides, padding)` (NHWC/HWIO).

  Args:
    x: (batch, height, width, channels) float32, the convolution's input.
    dy: (batch, out_height, out_width, features) float32, the gradient of its output.
    kernel_size: (kh, kw).
    strides: (sh, sw).
    padding: ((top, bottom), (left, right)), explicit.

  Returns:
    (kh, kw, channels, features): sum over the batch and positions of input patch x dy.
  """
  shape = (*kernel_size, x.shape[-1], dy.shape[-1])
  call = jax.ffi.ffi_call(WEIGHT_GRAD, jax.ShapeDtypeStruct(shape, jnp.float32),
                          vmap_method='sequential')
  return call(x, dy, sh=np.int64(strides[0]), sw=np.int64(strides[1]), pt=np.int64(padding[0][0]),
              pl=np.int64(padding[1][0]))


def block_supports(x_shape: Sequence[int], kernel_size: Sequence[int], features: int) -> bool:
  """Whether the fused block kernels take conv 'SAME' stride 1 on x_shape + ReLU + 2x2 pool.

  The first layers of image models: 3x3 taps times 1 to 3 input channels; even
  height and width (the pool's windows tile the image), features a multiple of 16.
  """
  return (kernel_size[0] * kernel_size[1] * x_shape[-1] in (9, 18, 27) and features % 16 == 0 and
          x_shape[1] % 2 == 0 and x_shape[2] % 2 == 0)


def block_forward(x_padded: jax.Array, kernel: jax.Array, bias: jax.Array, pool: str) -> jax.Array:
  """pool_2x2(relu(conv_valid(x_padded, kernel) + bias)), pool 'avg' or 'max', in one pass.

  See `block_supports` for the shapes it takes.
  """
  n, h, w, _ = x_padded.shape
  kh, kw, _, k = kernel.shape
  out = jax.ShapeDtypeStruct((n, (h - kh + 1) // 2, (w - kw + 1) // 2, k), jnp.float32)
  return jax.ffi.ffi_call(BLOCK_FORWARD, out, vmap_method='sequential')(x_padded, kernel, bias,
                                                                        max=pool == 'max')


def block_backward(x_padded: jax.Array, kernel: jax.Array, bias: jax.Array, pool: str,
                   dout: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The kernel and bias gradients of `block_forward` given its output's gradient `dout`."""
  shapes = (jax.ShapeDtypeStruct(kernel.shape, jnp.float32),
            jax.ShapeDtypeStruct(bias.shape, jnp.float32))
  return jax.ffi.ffi_call(BLOCK_BACKWARD, shapes, vmap_method='sequential')(x_padded, kernel, bias,
                                                                            dout, max=pool == 'max')


# The 1-D kernels take arrays with leading member dimensions (a population's), every member in
# one call; vmapped, XLA passes its batch as one more ('broadcast_all'). They pad in place: a
# window that reaches past either end of a sequence reads zeros there.


def _call(name: str, out: Any, *args: jax.Array, stride: int, left: int) -> Any:
  return jax.ffi.ffi_call(name, out, vmap_method='broadcast_all')(*args, s=np.int64(stride),
                                                                  pl=np.int64(left))


def conv1d_forward(x: jax.Array, kernel: jax.Array, stride: int, padding: tuple[int, int],
                   bias: jax.Array | None = None) -> jax.Array:
  """The 1-D convolution of x (..., batch, length, channels) by kernel (..., taps, channels,
  features), the leading (member) dimensions of the two alike; with `bias` (..., features),
  ReLU(convolution + bias).

  `padding` is (left, right) zeros; no dilation; `stride` >= 1. Returns (..., batch, out_length,
  features) with out_length = (length + left + right - taps) // stride + 1.
  """
  *lead, n, length, _ = x.shape
  taps, _, features = kernel.shape[-3:]
  out_length = (length + sum(padding) - taps) // stride + 1
  out = jax.ShapeDtypeStruct((*lead, n, out_length, features), jnp.float32)
  if bias is None:
    return _call(CONV1D_FORWARD, out, x, kernel, stride=stride, left=padding[0])
  return _call(CONV1D_RELU[CONV1D_FORWARD], out, x, kernel, bias, stride=stride, left=padding[0])


def conv1d_input_grad(dy: jax.Array, kernel: jax.Array, length: int, stride: int, left: int,
                      relu_out: jax.Array | None = None) -> jax.Array:
  """The gradient of `conv1d_forward`'s input (..., batch, length, channels), given dy; with
  `relu_out` (the fused forward's output), dy counts only where it is > 0."""
  out = jax.ShapeDtypeStruct((*dy.shape[:-2], length, kernel.shape[-2]), jnp.float32)
  if relu_out is None:
    return _call(CONV1D_INPUT_GRAD, out, dy, kernel, stride=stride, left=left)
  return _call(CONV1D_RELU[CONV1D_INPUT_GRAD], out, dy, kernel, relu_out, stride=stride, left=left)


def conv1d_weight_grad(x: jax.Array, dy: jax.Array, taps: int, stride: int, left: int,
                       relu_out: jax.Array | None = None) -> Any:
  """The gradient of `conv1d_forward`'s kernel (..., taps, channels, features), given dy; with
  `relu_out` (the fused forward's output), dy counts only where it is > 0 and the bias's
  gradient (..., features) comes too."""
  out = jax.ShapeDtypeStruct((*dy.shape[:-3], taps, x.shape[-1], dy.shape[-1]), jnp.float32)
  if relu_out is None:
    return _call(CONV1D_WEIGHT_GRAD, out, x, dy, stride=stride, left=left)
  bias = jax.ShapeDtypeStruct((*dy.shape[:-3], dy.shape[-1]), jnp.float32)
  return _call(CONV1D_RELU[CONV1D_WEIGHT_GRAD], (out, bias), x, dy, relu_out, stride=stride,
               left=left)


# Two layers as one block (`conv1d_pair_forward`): `layers` holds each layer's (stride, (left,
# right) padding).
Layers = tuple[tuple[int, tuple[int, int]], tuple[int, tuple[int, int]]]


def _pair_attrs(length: int, taps: int, layers: Layers) -> dict[str, np.int64]:
  (s1, (l1, r1)), (s2, (l2, _)) = layers
  ol1 = (length + l1 + r1 - taps) // s1 + 1
  return {k: np.int64(v) for k, v in dict(s1=s1, pl1=l1, ol1=ol1, s2=s2, pl2=l2).items()}


def conv1d_pair_forward(x: jax.Array, w1: jax.Array, b1: jax.Array, w2: jax.Array, b2: jax.Array,
                        layers: Layers) -> jax.Array:
  """ReLU(conv(ReLU(conv(x, w1) + b1), w2) + b2), the first layer's output kept in cache.

  Arrays as `conv1d_forward`'s, with leading (member) dimensions alike; `layers` gives each
  layer's stride and (left, right) padding. Returns (..., batch, out_length, w2's features).
  """
  *lead, n, length, _ = x.shape
  attrs = _pair_attrs(length, w1.shape[-3], layers)
  (s2, (l2, r2)) = layers[1]
  out_length = (int(attrs['ol1']) + l2 + r2 - w2.shape[-3]) // s2 + 1
  out = jax.ShapeDtypeStruct((*lead, n, out_length, w2.shape[-1]), jnp.float32)
  return jax.ffi.ffi_call(CONV1D_PAIR_FORWARD, out, vmap_method='broadcast_all')(x, w1, b1, w2, b2,
                                                                                 **attrs)


def conv1d_pair_backward(x: jax.Array, w1: jax.Array, b1: jax.Array, w2: jax.Array, b2: jax.Array,
                         y: jax.Array, dy: jax.Array, layers: Layers, input_grad: bool) -> Any:
  """The gradients of `conv1d_pair_forward` given its output y and dy: (dw1, db1, dw2, db2), with
  `input_grad` (dx, dw1, db1, dw2, db2)."""
  grads = [jax.ShapeDtypeStruct(a.shape, jnp.float32) for a in (w1, b1, w2, b2)]
  if input_grad:
    grads.insert(0, jax.ShapeDtypeStruct(x.shape, jnp.float32))
  name = CONV1D_PAIR_BACKWARD_DX if input_grad else CONV1D_PAIR_BACKWARD
  return jax.ffi.ffi_call(name, tuple(grads),
                          vmap_method='broadcast_all')(x, w1, b1, w2, b2, y, dy, **_pair_attrs(
                              x.shape[-2], w1.shape[-3], layers))
