"""A population: config.num_seeds models trained as one program, member k as a run with seed + k.

Every leaf of a population's state has a leading member axis; the train and eval
steps are vmapped over it (steps.py), each member drawing its own data order
(Source.train_feed). The loop logs, ranks checkpoints and stops early
on the members' mean; results.json reports each member and the spread.
"""
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np


def init(init_one: Callable[[jax.Array], Any], seed: int, n: int,
         sharding: jax.sharding.Sharding) -> Any:
  """The states of seeds seed .. seed + n - 1, stacked on a leading member axis.

  Member by member, then stacked; not vmapped: a vmapped init batches the orthogonal
  initializers' QR (LSTM, GRU cells), and jaxlib's batched LAPACK calls wait on XLA:CPU's
  thread pool from inside it, so two at once deadlock a machine with 2 cores.
  """
  init_member = jax.jit(init_one, out_shardings=sharding)
  states = [init_member(jnp.int32(seed + k)) for k in range(n)]
  return jax.jit(lambda *m: jax.tree.map(lambda *leaves: jnp.stack(leaves), *m),
                 out_shardings=sharding)(*states)


def members(state: Any) -> int:
  """Models in `state`: 0 for a single model, N for a population of N (config.num_seeds)."""
  return 0 if jnp.ndim(state.step) == 0 else state.step.shape[0]


def member(state: Any, k: int) -> Any:
  """Model `k` of a population (seed config.seed + k), as a single model's state."""
  return jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype, sharding=a.sharding)
      if isinstance(a, jax.ShapeDtypeStruct) else a[k], state)


def mean(metrics: dict[str, Any]) -> dict[str, float]:
  """A population's metrics as the mean over its members; a single model's as they are."""
  return {k: float(np.mean(v)) for k, v in metrics.items()}


def results(config: ml_collections.ConfigDict, per_member: dict[str, Any]) -> dict[str, Any]:
  """results.json's view of a population: each member's metrics by seed, and their spread."""
  n = len(next(iter(per_member.values())))
  return {
      'seeds': {
          'seed': list(range(config.seed, config.seed + n)),
          **{k: np.asarray(v).tolist() for k, v in per_member.items()}
      },
      'std': {k: float(np.std(v, ddof=1)) for k, v in per_member.items()},
  }
