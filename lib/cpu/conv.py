"""`specialize`: a Flax apply function whose convolutions and ReLUs run as this backend does best.

Models are written with flax.linen's layers (nn.Conv, nn.relu, nn.avg_pool);
the engine computes them through `specialize(model.apply)`, which traces the
function to a jaxpr and evaluates it with these substitutions, chosen per
backend by `resolve` (never by a model or a config):

* GPU and TPU: none; the function runs as written ('xla').
* CPU, one device where lib.cpu.conv_kernel builds (AVX-512 or AVX2 + FMA),
  'kernel': XLA computes the forward and input-gradient convolutions (near the
  CPU's matmul speed once lib.cpu keeps lone convolutions out of YNNPACK),
  lib.cpu.conv_kernel the weight gradients (faster than XLA's, which runs as a
  convolution whose window is the whole output), and a network's first block
  (conv 'SAME' from 1-3 channels + bias → ReLU → 2x2 avg or max pool, forward
  and backward) in one pass: the MNIST CNN's step, paired in one process, is
  ~1.46x XLA's convolutions (docs/performance.md). Under a population's vmap
  (config.num_seeds) XLA's convolutions run member by member, not grouped.
  In a population's steps (`population_steps`), 1-D convolutions (nn.Conv over
  (batch, length, channels), no dilation) run in the kernel's 1-D forward and
  gradients, every member in one call, a conv → + bias → ReLU layer as one
  fused kernel each way, and two such layers in a row as one block whose first
  layer's output never leaves the cache (`population_conv1d_pair`); a single
  model's stay XLA's, as fast for one model.
* CPU whose XLA still sends lone convolutions to YNNPACK (the user's own
  XLA_FLAGS, or JAXNOTES_CPU_DEFAULTS=0), 'im2col': each 2-D convolution as the
  kh*kw shifted, strided slices of the padded input side by side times the
  kernel as one matrix, where it and XLA's are level.
* CPU, always: nn.relu as lib.cpu.activations.relu (the same values, cheaper).

The params are the model's own, so checkpoints load whichever ran. Only the
function's top-level equations are rewritten: a layer inside nn.scan or a
jitted function keeps XLA's convolution.
"""
from collections.abc import Callable, Iterator, Sequence
import collections
import contextlib
import contextvars
import dataclasses
from typing import Any

import jax
from jax import lax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np

from lib import cpu
from lib import parallel
from lib.cpu import conv_kernel
from lib.cpu.activations import relu
from lib.cpu.convolutions import (conv_relu_pool, im2col_conv, kernel_conv, population_conv1d,
                                  population_conv1d_pair, population_conv1d_relu)
from lib.errors import UserError

IMPLEMENTATIONS = ('auto', 'xla', 'im2col', 'kernel')
# The convolution `specialize` takes for functions traced in this context; models never name one.
_CHOICE = contextvars.ContextVar('jaxnotes_conv_implementation', default='auto')


@contextlib.contextmanager
def implementation(name: str) -> Iterator[None]:
  """Specialized functions traced inside this block compute with `name` (a key of IMPLEMENTATIONS).

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


_POPULATION = contextvars.ContextVar('jaxnotes_population_steps', default=False)


@contextlib.contextmanager
def population_steps() -> Iterator[None]:
  """Specialized functions traced inside compute a population's steps, vmapped over its members.

  With the CPU kernel, their 1-D convolutions then run in the population kernels, every member
  in one call (`population_conv1d`), their conv → bias → ReLU layers in the fused ones
  (`population_conv1d_relu`), and two such layers in a row as one block
  (`population_conv1d_pair`); a single model's steps keep them as written.
  """
  token = _POPULATION.set(True)
  try:
    yield
  finally:
    _POPULATION.reset(token)


def resolve(impl: str) -> str:
  """The implementation `impl` means here.

  'auto' is 'xla' on GPU and TPU. On CPU it is 'im2col' where XLA still sends
  convolutions to YNNPACK; else 'kernel' on one device where lib.cpu.conv_kernel is
  available (its custom call does not split over devices), else 'xla'. The
  platform is the program's (lib.parallel.platform): a program built here for
  a TPU or GPU (`--compile_for`) gets no CPU kernel.
  """
  if impl != 'auto':
    return impl
  if parallel.platform() != 'cpu':
    return 'xla'
  if not cpu.xla_convolutions_are_fast():
    return 'im2col'
  return 'kernel' if parallel.device_count() == 1 and conv_kernel.available() else 'xla'


_NHWC = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
_NWC = lax.ConvDimensionNumbers((0, 2, 1), (2, 1, 0), (0, 2, 1))


@dataclasses.dataclass(frozen=True)
class Specialized:
  """`fn` with its convolutions and ReLUs computed as `resolve('auto')` says (see `specialize`).

  A dataclass, so that two wrappers of the same function compare equal (jit's
  cache keys on a TrainState's apply_fn).
  """
  fn: Callable[..., Any]

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    if parallel.platform() != 'cpu':
      return self.fn(*args, **kwargs)
    # Arrays are traced; everything else (train=..., mutable=..., method=...) stays static.
    leaves, tree = jax.tree.flatten((args, kwargs))
    traced = [i for i, leaf in enumerate(leaves) if isinstance(leaf, (jax.Array, np.ndarray))]

    def flat(*arrays):
      full = list(leaves)
      for i, a in zip(traced, arrays):
        full[i] = a
      args, kwargs = jax.tree.unflatten(tree, full)
      return self.fn(*args, **kwargs)

    closed, out_shape = jax.make_jaxpr(flat, return_shape=True)(*[leaves[i] for i in traced])
    # Only convolutions need the choice (which may build and load the kernel, and logs why not).
    convs = any(e.primitive.name == 'conv_general_dilated' for e in closed.jaxpr.eqns)
    impl = resolve(_CHOICE.get()) if convs else 'xla'
    outs = _evaluate(closed, impl, [leaves[i] for i in traced])
    return jax.tree.unflatten(jax.tree.structure(out_shape), outs)


def specialize(fn: Callable[..., Any]) -> Specialized:
  """`fn` (a model's apply) computing its convolutions and ReLUs as this backend does best.

  The same values up to float32 summation order, the same gradients (reverse
  mode: with the kernels, forward-mode derivatives such as jax.jvp need
  `implementation('xla')`), the same params. Where it runs is read when it is
  traced: see `resolve` and `implementation`.

  Args:
    fn: a function of arrays and static arguments, e.g. `model.apply`.

  Returns:
    A function called as `fn` is.
  """
  return Specialized(fn)


def _is_relu(eqn: jax_core.JaxprEqn) -> bool:
  """Whether `eqn` is jax.nn.relu (flax's nn.relu): a custom_jvp of jit 'relu' of max(x, 0)."""
  if eqn.primitive.name != 'custom_jvp_call':
    return False
  body = eqn.params['call_jaxpr'].jaxpr
  if len(body.eqns) != 1 or body.eqns[0].params.get('name') != 'relu':
    return False
  body = body.eqns[0].params['jaxpr'].jaxpr
  return (len(body.eqns) == 1 and body.eqns[0].primitive.name == 'max' and
          any(isinstance(v, jax_core.Literal) and v.val == 0 for v in body.eqns[0].invars))


def _plain_conv(eqn: jax_core.JaxprEqn, dims: int) -> bool:
  """Whether `eqn` is nn.Conv's float32 `dims`-D convolution (channels last, no dilation or groups)."""
  if eqn.primitive.name != 'conv_general_dilated':
    return False
  p = eqn.params
  plain = (p['lhs_dilation'] == p['rhs_dilation'] == (1,) * dims and
           p['feature_group_count'] == 1 and p['batch_group_count'] == 1 and p['precision'] is None)
  return (plain and p['dimension_numbers'] == {1: _NWC, 2: _NHWC}.get(dims) and
          p['preferred_element_type'] is None and
          all(v.aval.dtype == jnp.float32 for v in eqn.invars))


def _conv_2d(eqn: jax_core.JaxprEqn) -> bool:
  """Whether `eqn` is nn.Conv's float32 2-D convolution (NHWC, HWIO, no dilation or groups)."""
  return _plain_conv(eqn, 2)


def _uses(jaxpr: jax_core.Jaxpr) -> collections.Counter:
  """How many times each variable of `jaxpr` is read, by its equations and as an output."""
  uses = collections.Counter(
      v for e in jaxpr.eqns for v in e.invars if not isinstance(v, jax_core.Literal))
  uses.update(v for v in jaxpr.outvars if not isinstance(v, jax_core.Literal))
  return uses


def _blocks(jaxpr: jax_core.Jaxpr) -> dict[int, tuple[int, Any, str, list[int]]]:
  """Conv 'SAME' stride 1 → + bias → nn.relu → 2x2 pool chains that conv_relu_pool can take.

  Returns:
    {index of the chain's last equation: (index of its conv, the bias variable,
    'avg' or 'max', indices of the chain's other equations)}, for chains whose
    intermediate values have no other use.
  """
  uses = _uses(jaxpr)
  consumer = {}
  for i, e in enumerate(jaxpr.eqns):
    for v in e.invars:
      if not isinstance(v, jax_core.Literal):
        consumer[v] = i
  producer = {v: i for i, e in enumerate(jaxpr.eqns) for v in e.outvars}

  def only_use(v):  # The one equation that reads v, if exactly one does.
    return jaxpr.eqns[consumer[v]] if uses[v] == 1 and v in consumer else None

  found = {}
  for i, conv in enumerate(jaxpr.eqns):
    if not _conv_2d(conv) or conv.params['window_strides'] != (1, 1):
      continue
    x, kernel = conv.invars
    kh, kw, _, features = kernel.aval.shape
    same = lax.padtype_to_pads(x.aval.shape[1:3], (kh, kw), (1, 1), 'SAME')
    if (tuple(map(tuple, same)) != tuple(map(tuple, conv.params['padding'])) or
        not conv_kernel.block_supports(x.aval.shape, (kh, kw), features)):
      continue
    add = only_use(conv.outvars[0])
    if add is None or add.primitive.name != 'add':
      continue
    other = [v for v in add.invars if v is not conv.outvars[0]]
    if len(other) != 1 or isinstance(other[0], jax_core.Literal) or other[0] not in producer:
      continue
    shaped = jaxpr.eqns[producer[other[0]]]  # nn.Conv reshapes its bias to (1, 1, 1, features).
    if (shaped.primitive.name not in ('reshape', 'broadcast_in_dim') or
        shaped.invars[0].aval.shape != (features,)):
      continue
    act = only_use(add.outvars[0])
    if act is None or not _is_relu(act):
      continue
    pool = only_use(act.outvars[0])
    if pool is None or pool.primitive.name not in ('reduce_window_sum', 'reduce_window_max'):
      continue
    p = pool.params
    if (p['window_dimensions'] != (1, 2, 2, 1) or p['window_strides'] != (1, 2, 2, 1) or
        any(lo or hi for lo, hi in p['padding']) or p['base_dilation'] != (1,) * 4 or
        p['window_dilation'] != (1,) * 4):
      continue
    chain = [consumer[conv.outvars[0]], consumer[add.outvars[0]]]
    last, kind = consumer[act.outvars[0]], 'max'
    if pool.primitive.name == 'reduce_window_sum':  # nn.avg_pool: the window's sum / 4.
      div = only_use(pool.outvars[0])
      if (div is None or div.primitive.name != 'div' or div.invars[0] is not pool.outvars[0] or
          not isinstance(div.invars[1], jax_core.Literal) or div.invars[1].val != 4):
        continue
      chain.append(last)
      last, kind = consumer[pool.outvars[0]], 'avg'
    found[last] = (i, shaped.invars[0], kind, [i, *chain])
  return found


def _conv1d_relu_chains(jaxpr: jax_core.Jaxpr) -> dict[int, tuple[int, Any, list[int]]]:
  """1-D conv → + bias → nn.relu chains whose intermediate values have no other use.

  Returns:
    {index of the chain's ReLU: (index of its conv, the bias variable, indices of the conv and
    the add)}.
  """
  uses = _uses(jaxpr)
  consumer = {
      v: i
      for i, e in enumerate(jaxpr.eqns) for v in e.invars if not isinstance(v, jax_core.Literal)
  }
  producer = {v: i for i, e in enumerate(jaxpr.eqns) for v in e.outvars}
  only_use = lambda v: consumer[v] if uses[v] == 1 and v in consumer else None
  found = {}
  for i, conv in enumerate(jaxpr.eqns):
    if not _plain_conv(conv, 1) or min(conv.params['padding'][0]) < 0:
      continue
    add = only_use(conv.outvars[0])
    if add is None or jaxpr.eqns[add].primitive.name != 'add':
      continue
    other = [v for v in jaxpr.eqns[add].invars if v is not conv.outvars[0]]
    if len(other) != 1 or isinstance(other[0], jax_core.Literal) or other[0] not in producer:
      continue
    shaped = jaxpr.eqns[producer[other[0]]]  # nn.Conv reshapes its bias to (1, 1, features).
    features = conv.outvars[0].aval.shape[-1]
    if (shaped.primitive.name not in ('reshape', 'broadcast_in_dim') or
        shaped.invars[0].aval.shape != (features,)):
      continue
    act = only_use(jaxpr.eqns[add].outvars[0])
    if act is not None and _is_relu(jaxpr.eqns[act]):
      found[act] = (i, shaped.invars[0], [i, add])
  return found


def _conv1d_relu_pairs(jaxpr: jax_core.Jaxpr, chains: dict[int, Any]) -> dict[int, int]:
  """Chains (of `_conv1d_relu_chains`) whose input is only an earlier chain's output.

  Returns:
    {index of the second chain's ReLU: index of the first's}, taken in order, each chain in one
    pair at most (three layers: the first two, then the third alone).
  """
  uses = _uses(jaxpr)
  relu_of = {jaxpr.eqns[i].outvars[0]: i for i in chains}
  pairs, paired = {}, set()
  for second in sorted(chains):
    x = jaxpr.eqns[chains[second][0]].invars[0]
    first = relu_of.get(x)
    if first is not None and uses[x] == 1 and first not in paired:
      pairs[second] = first
      paired |= {first, second}
  return pairs


def _conv(impl: str, eqn: jax_core.JaxprEqn, x: jax.Array, kernel: jax.Array) -> jax.Array | None:
  """The convolution `eqn` by `impl`, or None where XLA's runs as traced."""
  if (impl == 'kernel' and _POPULATION.get() and _plain_conv(eqn, 1) and
      min(eqn.params['padding'][0]) >= 0):
    (stride,), (padding,) = eqn.params['window_strides'], eqn.params['padding']
    return population_conv1d(x, kernel, stride, tuple(padding))
  if not _conv_2d(eqn):
    return None
  strides, padding = eqn.params['window_strides'], eqn.params['padding']
  if impl == 'im2col':
    return im2col_conv(x, kernel, strides, padding)
  if impl == 'kernel' and conv_kernel.supports(x.shape, kernel.shape[-1]):
    return kernel_conv(x, kernel, tuple(strides), tuple(map(tuple, padding)))
  return None


def _evaluate(closed: jax_core.ClosedJaxpr, impl: str, args: Sequence[Any]) -> list[Any]:
  """Evaluates `closed` on `args` as jax.core.eval_jaxpr does, with `specialize`'s substitutions."""
  jaxpr = closed.jaxpr
  kernels = impl == 'kernel' and conv_kernel.available()
  blocks = _blocks(jaxpr) if kernels else {}
  chains = _conv1d_relu_chains(jaxpr) if kernels and _POPULATION.get() else {}
  folded = {j for _, _, _, chain in blocks.values() for j in chain}
  folded |= {j for _, _, chain in chains.values() for j in chain}
  pairs = _conv1d_relu_pairs(jaxpr, chains)
  folded |= set(pairs.values())  # The first layer of a pair is computed with its second.
  env = dict(zip(jaxpr.constvars, closed.consts)) | dict(zip(jaxpr.invars, args))
  read = lambda v: v.val if isinstance(v, jax_core.Literal) else env[v]
  for i, eqn in enumerate(jaxpr.eqns):
    if i in folded:
      continue
    out = None  # A substitute's one output, or None: the equation as traced.
    if i in blocks:
      conv, bias, pool, _ = blocks[i]
      x, kernel = (read(v) for v in jaxpr.eqns[conv].invars)
      out = conv_relu_pool(x, kernel, read(bias), pool)
    elif i in pairs:
      layers = []
      for relu_index in (pairs[i], i):
        conv, bias, _ = chains[relu_index]
        (stride,), (padding,) = (jaxpr.eqns[conv].params[k] for k in ('window_strides', 'padding'))
        layers.append((conv, bias, (stride, tuple(padding))))
      (conv1, bias1, layer1), (conv2, bias2, layer2) = layers
      x, kernel1 = (read(v) for v in jaxpr.eqns[conv1].invars)
      out = population_conv1d_pair(x, kernel1, read(bias1), read(jaxpr.eqns[conv2].invars[1]),
                                   read(bias2), (layer1, layer2))
    elif i in chains:
      conv, bias, _ = chains[i]
      x, kernel = (read(v) for v in jaxpr.eqns[conv].invars)
      (stride,), (padding,) = (jaxpr.eqns[conv].params[k] for k in ('window_strides', 'padding'))
      out = population_conv1d_relu(x, kernel, read(bias), stride, tuple(padding))
    elif _is_relu(eqn):
      out = relu(read(eqn.invars[0]))
    elif eqn.primitive.name == 'conv_general_dilated':
      out = _conv(impl if impl != 'kernel' or kernels else 'xla', eqn, *map(read, eqn.invars))
    if out is not None:
      outs = [out]
    else:
      with eqn.ctx.manager:
        outs = eqn.primitive.bind(*map(read, eqn.invars),
                                  **eqn.primitive.get_bind_params(eqn.params))
      outs = outs if eqn.primitive.multiple_results else [outs]
    env.update(zip(eqn.outvars, outs))
  return [read(v) for v in jaxpr.outvars]
