"""A population: several models trained as one program, each as its own single run would be.

Its members are config.population's hyperparameter settings (zipped; an empty
list takes the config's value), each with config.num_seeds seeds from its
seed: `table`. The hyperparameters a population may vary are those the
optimizer carries as state (`CARRIED`, through optax.inject_hyperparams), so
that one compiled program serves every member. Every leaf of a population's
state has a leading member axis; the train and eval steps are vmapped over it
(steps.py), each member drawing the data order of its own seed
(Source.train_feed). The loop logs, ranks checkpoints and stops early on the
members' mean; results.json reports each member (and with seeds alone, their
spread).
"""
from collections.abc import Callable, Sequence
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lib.errors import PopulationTooLarge, UserError

MIB = 2**20
# Sets the memory a population may take (MiB) instead of what the device has free.
MEMORY_ENV = 'JAXNOTES_POPULATION_MEMORY_MB'

# The hyperparameters a population may vary: the optimizer holds them as state.
CARRIED = ('learning_rate', 'weight_decay', 'momentum')
# What sets one member apart from another: its seed and the carried hyperparameters.
FIELDS = ('seed', *CARRIED)


def table(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """Each member's seed and carried hyperparameters, in member order (one row: a single model).

  Raises:
    UserError: config.population's lists of different lengths.
  """
  lists = {k: list(v) for k, v in (config.get('population') or {}).items() if len(v)}
  lengths = {len(v) for v in lists.values()}
  if len(lengths) > 1:
    raise UserError('config.population lists one value per setting: its lists must have equal '
                    f'lengths, not {({k: len(v) for k, v in lists.items()})}')
  rows = []
  for i in range(lengths.pop() if lengths else 1):
    setting = {k: lists[k][i] if k in lists else config[k] for k in FIELDS}
    rows += [{**setting, 'seed': setting['seed'] + j} for j in range(config.get('num_seeds', 1))]
  return rows


def varied(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The carried hyperparameters that differ between members."""
  rows = table(config)
  return tuple(k for k in CARRIED if len({r[k] for r in rows}) > 1)


def seeds(config: ml_collections.ConfigDict) -> list[int] | None:
  """Each member's seed, which draws its data order; None for a single model."""
  rows = table(config)
  return [r['seed'] for r in rows] if len(rows) > 1 else None


def size(config: ml_collections.ConfigDict) -> int:
  """Models the config trains: 1, or a population's members."""
  return len(table(config))


def check(config: ml_collections.ConfigDict) -> None:
  """config.population's values, as the optimizer can carry them.

  Raises:
    UserError: naming the field and what is allowed.
  """
  rows = table(config)
  changed = varied(config)
  for row in rows:
    for field in CARRIED:
      if not isinstance(row[field], (int, float)) or row[field] < 0:
        raise UserError(f'config.population.{field} holds {row[field]!r}; it takes numbers >= 0')
  if 'momentum' in changed and config.optimizer != 'sgd':
    raise UserError(f'config.population.momentum: config.optimizer={config.optimizer!r} has no '
                    "momentum to vary; use 'sgd'")
  if 'learning_rate' in changed and not config.learning_rate:
    raise UserError('config.population.learning_rate scales the schedule of '
                    'config.learning_rate, which must then be above 0')


def init(init_one: Callable[..., Any], args: Sequence[tuple[Any, ...]],
         sharding: jax.sharding.Sharding) -> Any:
  """The states `init_one(*a)` for each member's `a`, stacked on a leading member axis.

  Member by member, then stacked; not vmapped: a vmapped init batches the orthogonal
  initializers' QR (LSTM, GRU cells), and jaxlib's batched LAPACK calls wait on XLA:CPU's
  thread pool from inside it, so two at once deadlock a machine with 2 cores.
  """
  init_member = jax.jit(init_one, out_shardings=sharding)
  states = [init_member(*a) for a in args]
  return jax.jit(lambda *m: jax.tree.map(lambda *leaves: jnp.stack(leaves), *m),
                 out_shardings=sharding)(*states)


def members(state: Any) -> int:
  """Models in `state`: 0 for a single model, N for a population of N."""
  return 0 if jnp.ndim(state.step) == 0 else state.step.shape[0]


def member(state: Any, k: int) -> Any:
  """Model `k` of a population, as a single model's state."""
  return jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype, sharding=a.sharding)
      if isinstance(a, jax.ShapeDtypeStruct) else a[k], state)


def describe(config: ml_collections.ConfigDict, k: int) -> str:
  """Member `k` in words: its seed and the hyperparameters the population varies."""
  row = table(config)[k]
  return ', '.join(
      f'{f} {row[f]:g}' if f != 'seed' else f'seed {row[f]}' for f in ('seed', *varied(config)))


def mean(metrics: dict[str, Any]) -> dict[str, float]:
  """A population's metrics as the mean over its members (those that have not diverged); a
  single model's as they are."""
  with np.errstate(invalid='ignore'):
    return {
        k: float(np.nanmean(v)) if np.isfinite(v).any() else float(np.mean(v))
        for k, v in metrics.items()
    }


def results(config: ml_collections.ConfigDict, per_member: dict[str, Any]) -> dict[str, Any]:
  """results.json's view of a population: each member's seed, hyperparameters and metrics; with
  seeds alone, their spread."""
  rows, changed = table(config), varied(config)
  found = {
      'members': {
          'seed': [r['seed'] for r in rows], **{f: [r[f] for r in rows] for f in changed},
          **{k: np.asarray(v).tolist() for k, v in per_member.items()}
      }
  }
  if not changed:
    found['std'] = {k: float(np.std(v, ddof=1)) for k, v in per_member.items()}
  return found


def memory_needed(programs: Sequence[tuple[Any, tuple[Any, ...]]]) -> int:
  """Bytes the largest of `programs` needs beyond its arguments, from XLA's memory analysis.

  Args:
    programs: (a jax.jit function, its arguments, static ones included), compiled here as the
      run will call them: the run's calls then reuse the compilation.
  """
  needs = []
  for fn, args in programs:
    stats = fn.lower(*args).compile().memory_analysis()
    needs.append(
        int(stats.temp_size_in_bytes) + int(stats.output_size_in_bytes) -
        int(stats.alias_size_in_bytes))
  return max(needs)


def free_memory(device: jax.Device) -> int | None:
  """Bytes a population may take on `device`: $JAXNOTES_POPULATION_MEMORY_MB, else what the device
  (an accelerator's memory, or the host's available RAM for a CPU) has free; None if unknown."""
  if os.environ.get(MEMORY_ENV):
    return int(float(os.environ[MEMORY_ENV]) * MIB)
  if device.platform != 'cpu':
    stats = device.memory_stats() or {}
    limit = stats.get('bytes_limit')
    return None if limit is None else int(limit) - int(stats.get('bytes_in_use', 0))
  try:
    with open('/proc/meminfo') as f:
      fields = dict(line.split(':', 1) for line in f)
    return int(fields['MemAvailable'].split()[0]) * 1024
  except (OSError, KeyError, ValueError):
    return None


def require_fit(size: int, needed: int, free: int | None) -> None:
  """Raises PopulationTooLarge where a population of `size` members needs more than `free` bytes.

  Everything a population's step holds beyond its arguments grows with its members, so
  `fits` is `size` scaled by free / needed.
  """
  if free is None or needed <= free:
    return
  fits = size * free // needed
  raise PopulationTooLarge(
      f'a population of {size} members needs {needed / MIB:.0f} MiB for its steps and '
      f'{free / MIB:.0f} MiB is free ({MEMORY_ENV} sets it): at most {fits} members fit at once; '
      f'train them in groups (python -m experiments.sweep --max_members={max(fits, 1)})', fits)
