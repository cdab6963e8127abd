"""Runs a config over a grid of field values, then summarizes: mean ± std (n) over seeds.

  python -m experiments.sweep --config=configs/mnist1d.py --workdir=runs/mnist1d_sweep \
      --grid=seed=0,1,2 --grid=learning_rate=0.01,0.001 [--config.FIELD=VALUE ...] \
      [--plot=learning_rate:test_accuracy] [--max_members=64] [--nopopulations]

Points that differ only in fields a population can vary (the seed, and the
optimizer's hyperparameters of lib.train.population.CARRIED) train together as
one population (config.population): one vmapped program for up to
--max_members of them, run through the launcher in `WORKDIR/populations/`.
A population whose compiled steps need more memory than its device has free
stops before its first step and runs again as smaller groups that fit.
Each member ends as its single run would (to float rounding), and its results
are written to its point's sub-workdir as if it had run alone. The others, and
every point of an experiment that trains one model per run, early stopping or
restore_best (a population decides those on its mean), run one by one.

Each point runs through the launcher (`experiments.__main__.run`)
into its own sub-workdir, `WORKDIR/learning_rate=0.01,seed=0`: a finished point
(results.json there) is skipped, an interrupted one resumes. Then
`WORKDIR/summary.json` gets every point's final scalar metrics and, for each
point of the grid without its seed, their mean, std (ddof 1) and n over seeds;
the terminal gets that table, and --plot=FIELD:METRIC draws the metric's mean
over the field with ± std error bars (`WORKDIR/plots/`).
"""
import ast
import copy
import hashlib
import itertools
import os
import sys
from typing import Any

from absl import app
from absl import flags
from absl import logging
import ml_collections
import numpy as np

import experiments.__main__ as launcher  # Flags --config, --workdir and the CPU settings.
from lib import jobs
from lib import records
from lib.errors import NonFiniteLossError, PopulationTooLarge, UserError

_GRID = flags.DEFINE_multi_string(
    'grid', [], 'FIELD=V1,V2,...: values of one config field (repeat the flag for more fields; '
    'the grid is their product).')
_POPULATIONS = flags.DEFINE_bool(
    'populations', True, 'Train points that differ only in the seed and the optimizer\'s '
    'hyperparameters as populations, one program each; --nopopulations runs every point alone.')
_MAX_MEMBERS = flags.DEFINE_integer(
    'max_members', 64, 'Most points in one population program (its memory grows with them).')
_LAUNCHER = flags.DEFINE_enum(
    'launcher', 'inline', list(jobs.LAUNCHERS), 'inline: every group in this process, one after '
    'another; local: worker processes on this machine (--workers), each on its share of the '
    'cores and GPUs; slurm: a SLURM job array (--slurm_*). A failed job is reported with its log '
    'and the others go on; rerunning the command runs what is left.')
_WORKERS = flags.DEFINE_integer('workers', 2, '--launcher=local: processes at once.')
_GPUS = flags.DEFINE_integer('gpus', 0, '--launcher=local: GPUs to split evenly over the workers.')
_PARTITION = flags.DEFINE_string('slurm_partition', '', "SLURM's partition ('': its default).")
_TIME_MIN = flags.DEFINE_integer('slurm_time_min', 60, 'Time limit of each SLURM job, minutes.')
_CPUS_PER_TASK = flags.DEFINE_integer('slurm_cpus_per_task', 2, 'CPU cores of each SLURM job.')
_GPUS_PER_TASK = flags.DEFINE_integer('slurm_gpus_per_task', 0, 'GPUs of each SLURM job.')
_PARALLELISM = flags.DEFINE_integer('slurm_parallelism', 0,
                                    'SLURM jobs running at once (0: no limit).')
_PLOT = flags.DEFINE_string(
    'plot', None, 'FIELD:METRIC: plot the metric (mean ± std over '
    'seeds) over the field into WORKDIR/plots/.')


def parse_grid(specs: list[str], config: ml_collections.ConfigDict) -> dict[str, list[Any]]:
  """{field: values} from FIELD=V1,V2 specs, each value of the field's type.

  Raises:
    UserError: a malformed spec, an unknown field, or a value of another type.
  """
  grid = {}
  for spec in specs:
    field, eq, values = spec.partition('=')
    if not eq or not values:
      raise UserError(f'--grid={spec}: write FIELD=V1,V2,...')
    try:
      kind = launcher.field_type(config, field)
    except (KeyError, AttributeError):
      raise UserError(f'--grid={spec}: the config has no field {field!r}') from None
    parsed = []
    for text in values.split(','):
      try:
        value = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        value = text  # A bare word: a string.
      if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
      if not isinstance(value, kind):
        raise UserError(f'--grid={spec}: {text!r} is not of type {kind.__name__}, the type of '
                        f'config.{field}')
      parsed.append(value)
    grid[field] = parsed
  if not grid:
    raise UserError('no --grid=FIELD=V1,V2 given: nothing to sweep')
  return grid


def points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
  """Every combination of the grid's values, in the order of the fields' flags."""
  return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def point_name(point: dict[str, Any]) -> str:
  return ','.join(f'{k}={v}' for k, v in sorted(point.items()))


def _finished(sub: str) -> dict[str, Any] | None:
  """The results of the point run in `sub`, or None if it has yet to finish.

  A damaged results.json is set aside as results.json.damaged, so that the
  point runs again: it resumes from its last checkpoint and writes them anew.
  """
  path = os.path.join(sub, 'results.json')
  try:
    return records.read_json(path)
  except FileNotFoundError:
    return None
  except records.DamagedRecord as e:
    logging.warning('%s; running %s again', e, os.path.basename(sub))
    os.replace(path, path + '.damaged')
    return None


def population_groups(config: ml_collections.ConfigDict, grid_points: list[dict[str, Any]],
                      max_members: int) -> list[list[dict[str, Any]]]:
  """The points, in groups that train as one population each (a group of one runs alone).

  Points group when they differ only in the seed and the carried hyperparameters,
  and the run allows a population: an experiment that reports each member, no
  population already, no early stopping, restore_best or LR range test.
  """
  from lib.train import population  # pylint: disable=g-import-not-at-top
  module = launcher.experiment_module(config)
  carried = set(population.FIELDS)
  if config.get('optimizer') != 'sgd':
    carried.discard('momentum')  # Adam has no momentum to carry.
  allowed = ('optimizer' in config and getattr(module, 'REPORTS_EACH_MEMBER', False) and
             population.size(config) == 1 and not config.early_stopping_patience and
             not config.restore_best and not config.lr_finder)
  if not allowed:
    return [[p] for p in grid_points]
  groups: dict[str, list[dict[str, Any]]] = {}
  for point in grid_points:
    rest = point_name({k: v for k, v in point.items() if k not in carried})
    groups.setdefault(rest, []).append(point)
  return [
      members[i:i + max_members]
      for members in groups.values()
      for i in range(0, len(members), max_members)
  ]


def population_config(config: ml_collections.ConfigDict,
                      members: list[dict[str, Any]]) -> ml_collections.ConfigDict:
  """The config of one population: the points' shared fields set, their carried ones listed."""
  shared = {k: v for k, v in members[0].items() if all(m[k] == v for m in members)}
  pop = copy.deepcopy(config)
  pop.update_from_flattened_dict(shared)
  for field in members[0].keys() - shared.keys():
    pop.population[field] = tuple(m[field] for m in members)
  return pop


def _run_population(config: ml_collections.ConfigDict, members: list[dict[str, Any]],
                    workdir: str) -> None:
  """Trains `members` as one population, then writes each point's results.json from its member."""
  from lib.train import population  # pylint: disable=g-import-not-at-top
  names = [point_name(m) for m in members]
  digest = hashlib.sha256('\n'.join(names).encode()).hexdigest()[:10]
  sub = os.path.join(workdir, 'populations', f'{len(members)}_points-{digest}')
  logging.info('%d points as one population in %s: %s', len(members), sub, '; '.join(names))
  results = launcher.run(population_config(config, members), sub)
  per_member, diverged = results['members'], results.get('diverged', {})
  shared = {k: results[k] for k in _SHARED if k in results}
  for k, name in enumerate(names):
    own = ({'error': diverged[str(k)]} if str(k) in diverged else
           {m: v[k] for m, v in per_member.items() if m not in population.FIELDS})
    os.makedirs(os.path.join(workdir, name), exist_ok=True)
    records.write_json(
        os.path.join(workdir, name, 'results.json'), {
            **shared, **own, 'population': os.path.relpath(sub, workdir), 'member': k,
            'headline': f'{name}: member {k} of the population in {sub}'
        })


# What a point's results.json keeps of its population's: the run's shape, not its means.
_SHARED = ('steps', 'steps_per_epoch', 'epochs', 'params', 'train_step_compiles', 'wall_time_s')


def _scalars(results: dict[str, Any]) -> dict[str, float]:
  return {
      k: float(v)
      for k, v in results.items()
      if isinstance(v, (int, float)) and not isinstance(v, bool)
  }


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per grid point without its seed: {'point', 'n', metric: {'mean', 'std', 'n'}}."""
  groups: dict[str, list[dict[str, Any]]] = {}
  for row in rows:
    rest = {k: v for k, v in row['point'].items() if k != 'seed'}
    groups.setdefault(point_name(rest), []).append(row)
  table = []
  for name, members in groups.items():
    entry = {
        'point': {k: v for k, v in members[0]['point'].items() if k != 'seed'}, 'name': name,
        'n': len(members)
    }
    for metric in sorted(set.intersection(*(set(m['metrics']) for m in members))):
      values = np.array([m['metrics'][metric] for m in members])
      entry[metric] = {
          'mean': float(values.mean()), 'n': len(values),
          'std': float(values.std(ddof=1)) if len(values) > 1 else 0.0
      }
    table.append(entry)
  return table


def run_group(config: ml_collections.ConfigDict, group: list[dict[str, Any]], workdir: str) -> None:
  """Runs one group of points: a population, or one point alone (its own process as a job)."""
  logging.set_verbosity(logging.INFO)
  if len(group) > 1:  # The whole group: its members share one program.
    try:
      _run_population(config, group, workdir)
    except PopulationTooLarge as e:  # Smaller groups, as many members as fit.
      size = min(max(e.fits, 1), len(group) - 1)
      logging.warning('%s: the %d points run in groups of %d', e, len(group), size)
      for i in range(0, len(group), size):
        run_group(config, group[i:i + size], workdir)
    return
  logging.info('%s: running', point_name(group[0]))
  point_config = copy.deepcopy(config)
  point_config.update_from_flattened_dict(group[0])
  launcher.run(point_config, os.path.join(workdir, point_name(group[0])))


def launch(todo: list[jobs.Job], folder: str) -> list[jobs.Failure]:
  """Runs the jobs as --launcher=local or slurm says (logs in `folder`); returns the failures."""
  try:
    if _LAUNCHER.value == 'local':
      return jobs.run_local(todo, folder, _WORKERS.value, _GPUS.value)
    return jobs.run_slurm(
        todo, folder,
        jobs.Slurm(_PARTITION.value, _TIME_MIN.value, _CPUS_PER_TASK.value, _GPUS_PER_TASK.value,
                   _PARALLELISM.value))
  except ValueError as e:
    raise UserError(str(e)) from None


def _run_groups(config: ml_collections.ConfigDict, workdir: str,
                groups: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
  """Runs the groups as --launcher says; returns the failed ones, each with its points."""
  names = [' & '.join(point_name(p) for p in g) for g in groups]
  failed = []
  if _LAUNCHER.value == 'inline':
    for group, name in zip(groups, names):
      try:
        run_group(config, group, workdir)
      except NonFiniteLossError as e:  # Diverged: a finding of the sweep, not its end.
        logging.warning('%s: %s', name, e)
        failed += [
            {'point': p, 'name': point_name(p), 'error': str(e), 'points': [p]} for p in group
        ]
    return failed
  todo = [jobs.Job(name, run_group, (config, g, workdir)) for g, name in zip(groups, names)]
  failures = launch(todo, os.path.join(workdir, 'jobs'))
  by_name = dict(zip(names, groups))
  for f in failures:
    logging.warning('%s failed: %s (log: %s)', f.name, f.error, f.log)
    failed += [{'point': p, 'name': point_name(p), 'error': f.error, 'log': f.log, 'points': [p]}
               for p in by_name[f.name]]
  return failed


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}')
  from lib import plots  # pylint: disable=g-import-not-at-top
  config, workdir = launcher._CONFIG.value, os.path.abspath(launcher._WORKDIR.value)  # pylint: disable=protected-access
  try:
    grid = parse_grid(_GRID.value, config)
    if _PLOT.value and (':' not in _PLOT.value or _PLOT.value.split(':')[0] not in grid):
      raise UserError(f'--plot={_PLOT.value}: write FIELD:METRIC with FIELD one of {list(grid)}')
    groups = (population_groups(config, points(grid), _MAX_MEMBERS.value)
              if _POPULATIONS.value else [[p] for p in points(grid)])
    # Run: the groups with a point left to run, here or as jobs.
    todo = []
    for group in groups:
      done = {point_name(p): _finished(os.path.join(workdir, point_name(p))) for p in group}
      for name in (n for n, r in done.items() if r is not None):
        logging.info('%s: done before, skipped', name)
      if any(r is None for r in done.values()):
        todo.append(group)
    failed = _run_groups(config, workdir, todo)
    # Collect: every point's results, a failed group's points as failed.
    rows, not_run = [], {point_name(p) for f in failed for p in f['points']}
    failed = [{k: v for k, v in f.items() if k != 'points'} for f in failed]
    for point in (p for group in groups for p in group if point_name(p) not in not_run):
      results = records.read_json(os.path.join(workdir, point_name(point), 'results.json'))
      if 'error' in results:  # A member of a population that diverged.
        logging.warning('%s: %s', point_name(point), results['error'])
        failed.append({'point': point, 'name': point_name(point), 'error': results['error']})
      else:
        rows.append({'point': point, 'name': point_name(point), 'metrics': _scalars(results)})
  except UserError as e:
    sys.exit(f'error: {e}')

  table = summarize(rows)
  os.makedirs(workdir, exist_ok=True)
  records.write_json(os.path.join(workdir, 'summary.json'),
                     {'grid': grid, 'points': rows, 'failed': failed, 'summary': table})
  metrics = sorted({m for e in table for m in e if isinstance(e[m], dict) and m != 'point'})
  shown = [m for m in metrics if m.startswith(('test_', 'val_'))] or metrics
  for entry in table:
    logging.info(
        '%s (n=%d): %s', entry['name'] or 'all', entry['n'], ', '.join(
            f"{m} {entry[m]['mean']:.4g} ± {entry[m]['std']:.2g}" for m in shown if m in entry))
  if _PLOT.value:  # One line per combination of the other fields.
    field, metric = _PLOT.value.split(':', 1)
    lines: dict[str, tuple[list[Any], list[float], list[float]]] = {}
    for e in sorted((e for e in table if metric in e), key=lambda e: e['point'][field]):
      label = point_name({k: v for k, v in e['point'].items() if k != field})
      x, mean, std = lines.setdefault(label, ([], [], []))
      x.append(e['point'][field])
      mean.append(e[metric]['mean'])
      std.append(e[metric]['std'])
    positive = all(v > 0 for x, _, _ in lines.values() for v in x)
    path = os.path.join(workdir, 'plots', f'{metric}_by_{field}.png')
    plots.error_bars(lines, path, xlabel=field, ylabel=f'{metric} (mean ± std over seeds)',
                     logx=positive and field in ('learning_rate', 'weight_decay'))
    logging.info('plot: %s', path)
  logging.info('summary of %d points: %s', len(rows), os.path.join(workdir, 'summary.json'))


if __name__ == '__main__':
  app.run(main, flags_parser=launcher._parse_flags)  # pylint: disable=protected-access
