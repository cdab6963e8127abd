"""Tensors and the small facts of the notes that need no training.

- Stacking vs concatenating: concatenation joins tensors along an existing
  axis, stacking along a new one.
- Rank: a rank-3 tensor is "an array in an array in an array"; an RNN batch
  is one, (batch, time, features).
- Logits and softmax: softmax turns logits into a probability distribution;
  the loss takes the logits themselves because log(softmax(z)) computed in two
  steps underflows to log(0) = -inf once logits are far apart, while
  log_softmax(z) = z - logsumexp(z) stays exact.
- Kernel = weights: a Dense layer's 'kernel' is its weight matrix, a Conv
  layer's is its filters.
"""
import os
from typing import Any

from clu import metric_writers
import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import ml_collections
import numpy as np
import optax

from lib import aot
from lib import parallel
from lib import plots


def stacking_vs_concatenating() -> dict[str, list[int]]:
  """Shapes of the notes' example and of the same operations along other axes."""
  a, b = jnp.array([1, 2, 3]), jnp.array([4, 5, 6])
  m, n = jnp.zeros((2, 3)), jnp.ones((2, 3))
  return {
      'concatenate (3,) (3,)': list(jnp.concatenate([a, b]).shape),
      'stack (3,) (3,)': list(jnp.stack([a, b]).shape),
      'stack (3,) (3,) axis=1': list(jnp.stack([a, b], axis=1).shape),
      'concatenate (2,3) (2,3) axis=0': list(jnp.concatenate([m, n], axis=0).shape),
      'concatenate (2,3) (2,3) axis=1': list(jnp.concatenate([m, n], axis=1).shape),
      'stack (2,3) (2,3) axis=0': list(jnp.stack([m, n], axis=0).shape),
      'stack (2,3) (2,3) axis=2': list(jnp.stack([m, n], axis=2).shape),
  }


def ranks() -> dict[str, dict[str, Any]]:
  """Rank (number of axes) and shape of a scalar, a vector, a matrix and an RNN batch."""
  examples = {
      'scalar': jnp.array(3.0), 'vector': jnp.zeros(3), 'matrix': jnp.zeros((2, 3)),
      'RNN batch (batch, time, features)': jnp.zeros((4, 30, 1))
  }
  return {k: {'rank': v.ndim, 'shape': list(v.shape)} for k, v in examples.items()}


def _losses(z: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The last (smallest) class's cross-entropy from log(softmax(z)), and from the logits.

  Run op by op: compiled whole, XLA may simplify log(softmax) and hide its underflow.
  """
  naive = -jnp.log(jax.nn.softmax(z))[-1]
  stable = optax.softmax_cross_entropy_with_integer_labels(z[None], jnp.array([len(z) - 1]))[0]
  return naive, stable


def softmax_stability(logits: jax.Array, scales: tuple[float, ...]) -> list[dict[str, float]]:
  """Cross-entropy of the first class: from log(softmax) in two steps vs from the logits.

  Returns:
    Per scale: the two losses, in float32.
  """
  out = []
  for scale in scales:
    naive, stable = _losses(jnp.asarray(logits, jnp.float32) * scale)
    out.append({'scale': scale, 'log_of_softmax': float(naive), 'from_logits': float(stable)})
  return out


def kernels_are_weights(seed: int) -> dict[str, Any]:
  """A Dense and a Conv layer's params, and their outputs recomputed from the kernels by hand."""
  k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
  dense = nn.Dense(3)
  x = jax.random.normal(k1, (1, 4))
  params = dense.init(k2, x)['params']
  by_hand = x @ params['kernel'] + params['bias']
  conv = nn.Conv(2, (3, 3), padding='VALID')
  image = jax.random.normal(k3, (1, 5, 5, 1))
  conv_params = conv.init(k4, image)['params']
  patch = image[0, 1:4, 2:5, :]  # The 3x3 window under output position (1, 2).
  conv_by_hand = jnp.sum(patch[..., None] * conv_params['kernel'], (0, 1, 2)) + conv_params['bias']
  return {
      'dense_kernel_shape': list(params['kernel'].shape),
      'dense_bias_shape': list(params['bias'].shape),
      'dense_max_error': float(jnp.abs(dense.apply({'params': params}, x) - by_hand).max()),
      'conv_kernel_shape': list(conv_params['kernel'].shape),
      'conv_max_error': float(
          jnp.abs(conv.apply({'params': conv_params}, image)[0, 1, 2] - conv_by_hand).max()),
  }


def headline(results: dict[str, Any]) -> str:
  """Softmax's sum, and the loss at the largest logit scale taken both ways."""
  last = results['softmax_stability'][-1]
  return (f"softmax sums to {results['softmax']['sum']:.6f}; at logit scale {last['scale']:g} "
          f"log(softmax) gives {last['log_of_softmax']:.4g}, the loss from logits "
          f"{last['from_logits']:.4g}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Computes every demonstration, prints the shapes, writes results.json and plots/tensors.png.

  Args:
    config: configs/tensors.py.
    workdir: the run's directory.

  Returns:
    The results (the launcher writes them to results.json).
  """
  if aot.active():  # --compile_for: the one computation here that is not a shape.
    z = jax.ShapeDtypeStruct((len(config.logits),), jnp.float32,
                             sharding=parallel.replicated(parallel.make_mesh()))
    aot.compile('the two cross-entropies of the logits', jax.jit(_losses), z,
                calls=len(config.logit_scales))
    raise aot.Compiled()
  logits = jnp.asarray(config.logits, jnp.float32)
  probs = jax.nn.softmax(logits)
  results = {
      'stacking_vs_concatenating': stacking_vs_concatenating(),
      'ranks': ranks(),
      'softmax': {
          'logits': list(config.logits), 'probabilities': np.asarray(probs).tolist(),
          'sum': float(probs.sum())
      },
      'softmax_stability': softmax_stability(logits, tuple(config.logit_scales)),
      'kernels': kernels_are_weights(config.seed),
  }
  for name, shape in results['stacking_vs_concatenating'].items():
    print(f'{name:34s} -> {tuple(shape)}')
  for name, r in results['ranks'].items():
    print(f"{name:34s} rank {r['rank']}, shape {tuple(r['shape'])}")

  writer = (metric_writers.SummaryWriter(workdir)
            if jax.process_index() == 0 else metric_writers.MultiWriter([]))
  for i, row in enumerate(results['softmax_stability']):
    writer.write_scalars(i, {k: v for k, v in row.items() if k != 'scale'})
  writer.flush()
  if jax.process_index() == 0:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].bar([f'z={z:g}' for z in config.logits], np.asarray(probs), color='tab:blue')
    axes[0].set(ylabel='softmax probability',
                title=f'logits → probabilities (sum {float(probs.sum()):.3f})')
    rows = results['softmax_stability']
    scales = [r['scale'] for r in rows]
    naive = [min(r['log_of_softmax'], 1e6) for r in rows]
    axes[1].plot(scales, [r['from_logits'] for r in rows], 'o-', label='from the logits (stable)')
    axes[1].plot(scales, naive, 'x--', label='log(softmax) (inf clipped to 1e6)')
    axes[1].set(xscale='log', yscale='log', xlabel='logits multiplied by', ylabel='loss (float32)',
                title='why the loss takes logits')
    axes[1].legend()
    plots.save(fig, os.path.join(workdir, 'plots', 'tensors.png'))
  return results
