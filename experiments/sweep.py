"""Runs a config over a grid of field values, then summarizes: mean ± std (n) over seeds.

  python -m experiments.sweep --config=configs/mnist1d.py --workdir=runs/mnist1d_sweep \
      --grid=seed=0,1,2 --grid=learning_rate=0.01,0.001 [--config.FIELD=VALUE ...] \
      [--plot=learning_rate:test_accuracy]

Each point of the grid runs through the launcher (`experiments.__main__.run`)
into its own sub-workdir, `WORKDIR/learning_rate=0.01,seed=0`: a finished point
(results.json there) is skipped, an interrupted one resumes. Then
`WORKDIR/summary.json` gets every point's final scalar metrics and, for each
point of the grid without its seed, their mean, std (ddof 1) and n over seeds;
the terminal gets that table, and --plot=FIELD:METRIC draws the metric's mean
over the field with ± std error bars (`WORKDIR/plots/`).
"""
import ast
import copy
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
from lib import records
from lib.errors import NonFiniteLossError, UserError

_GRID = flags.DEFINE_multi_string(
    'grid', [], 'FIELD=V1,V2,...: values of one config field (repeat the flag for more fields; '
    'the grid is their product).')
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


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}')
  from lib import plots  # pylint: disable=g-import-not-at-top
  config, workdir = launcher._CONFIG.value, os.path.abspath(launcher._WORKDIR.value)  # pylint: disable=protected-access
  try:
    grid = parse_grid(_GRID.value, config)
    if _PLOT.value and (':' not in _PLOT.value or _PLOT.value.split(':')[0] not in grid):
      raise UserError(f'--plot={_PLOT.value}: write FIELD:METRIC with FIELD one of {list(grid)}')
    rows, failed = [], []
    for point in points(grid):
      sub = os.path.join(workdir, point_name(point))
      results = _finished(sub)
      if results is not None:
        logging.info('%s: done before, skipped', point_name(point))
      else:
        logging.info('%s: running', point_name(point))
        point_config = copy.deepcopy(config)
        point_config.update_from_flattened_dict(point)
        try:
          launcher.run(point_config, sub)
        except NonFiniteLossError as e:  # Diverged: a finding of the sweep, not its end.
          logging.warning('%s: %s', point_name(point), e)
          failed.append({'point': point, 'name': point_name(point), 'error': str(e)})
          continue
        results = records.read_json(os.path.join(sub, 'results.json'))
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
