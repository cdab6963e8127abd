"""Hyperparameter search on Optuna: trials of a config over a space of its fields, pruned by epoch.

  python -m experiments.search --config=configs/mnist1d.py --workdir=runs/search \\
      --space=learning_rate=log:1e-4:1e-1 --space=weight_decay=uniform:0:1e-3 \\
      --space=model_kwargs.features=choice:(16,16,16),(25,25,25) \\
      --trials=20 --metric=val_accuracy [--direction=maximize] [--launcher=local --workers=2]

With --launcher=local or slurm (experiments/sweep.py's flags), that many
workers (--workers; SLURM: --slurm_parallelism) run trials at once, sharing
the study's journal file.

Each trial is a run through the launcher (`experiments.__main__.run`) in
`WORKDIR/trials/POINT`, its point the fields Optuna drew. After each
evaluation the loop reports the metric to Optuna (lib.train.on_evaluation),
and Optuna's median pruner may stop the trial there. The study lives in
`WORKDIR/study.journal` (Optuna's journal file: no database server; workers
share it): after a crash or kill -9 the same command carries on, and a trial
that was running then is run again, resuming from its last checkpoint. The
search ends with `budget` trials complete or pruned, the best point, the
command that reruns it, and `WORKDIR/plots/METRIC_by_trial.png`.

Space: FIELD=log:LOW:HIGH (log-uniform), FIELD=uniform:LOW:HIGH,
FIELD=int:LOW:HIGH, FIELD=choice:V1,V2,... (Python literals). The metric is
one the run evaluates each epoch (val_*).
"""
import ast
import copy
import dataclasses
import os
import sys
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
import ml_collections

import experiments.__main__ as launcher  # Flags --config, --workdir and the CPU settings.
from experiments import sweep
from lib import jobs
from lib import records
from lib.errors import NonFiniteLossError, UserError

_SPACE = flags.DEFINE_multi_string(
    'space', [], 'FIELD=log:LOW:HIGH, FIELD=uniform:LOW:HIGH, FIELD=int:LOW:HIGH or '
    'FIELD=choice:V1,V2,...: one dimension of the search (repeat the flag).')
_TRIALS = flags.DEFINE_integer('trials', 20, 'Trials to complete (pruned ones count).')
_METRIC = flags.DEFINE_string('metric', 'val_accuracy', 'The validation metric to optimize.')
_DIRECTION = flags.DEFINE_enum('direction', 'maximize', ['maximize', 'minimize'],
                               'Whether the metric is better high or low.')
_SEED = flags.DEFINE_integer('search_seed', 0, "Seeds Optuna's sampler.")

KINDS = ('log', 'uniform', 'int', 'choice')


@dataclasses.dataclass(frozen=True)
class Dimension:
  """One field of the space: its kind and range (low, high) or choices."""
  field: str
  kind: str
  low: float = 0.0
  high: float = 0.0
  choices: tuple[Any, ...] = ()


def parse_space(specs: list[str], config: ml_collections.ConfigDict) -> list[Dimension]:
  """The dimensions of FIELD=KIND:... specs, checked against the config.

  Raises:
    UserError: no dimension, a malformed spec, an unknown field or kind, an empty range.
  """
  if not specs:
    raise UserError('no --space=FIELD=KIND:... given: nothing to search')
  space = []
  for spec in specs:
    field, _, rest = spec.partition('=')
    kind, _, values = rest.partition(':')
    try:
      launcher.field_type(config, field)
    except (KeyError, AttributeError):
      raise UserError(f'--space={spec}: the config has no field {field!r}') from None
    if kind not in KINDS or not values:
      raise UserError(f'--space={spec}: write FIELD=KIND:..., KIND one of {list(KINDS)}')
    if kind == 'choice':
      try:
        choices = ast.literal_eval(f'[{values}]')
      except (ValueError, SyntaxError):  # Bare words: strings, as in experiments.sweep's grids.
        choices = values.split(',')
      if len(choices) < 2:
        raise UserError(f'--space={spec}: give at least two choices')
      space.append(Dimension(field, kind, choices=tuple(choices)))
      continue
    try:
      low, high = (float(v) for v in values.split(':'))
    except ValueError:
      raise UserError(f'--space={spec}: write {kind}:LOW:HIGH with two numbers') from None
    if not low < high or (kind == 'log' and low <= 0):
      raise UserError(f'--space={spec}: the range [{low:g}, {high:g}] is empty' +
                      (' or not positive (log)' if kind == 'log' else ''))
    space.append(Dimension(field, kind, low, high))
  return space


def _suggest(trial: Any, dim: Dimension) -> Any:
  if dim.kind == 'choice':  # Optuna stores choices as plain values: index them.
    return dim.choices[trial.suggest_categorical(dim.field, list(range(len(dim.choices))))]
  if dim.kind == 'int':
    return trial.suggest_int(dim.field, int(dim.low), int(dim.high))
  return trial.suggest_float(dim.field, dim.low, dim.high, log=dim.kind == 'log')


def _value(config: ml_collections.ConfigDict, field: str, value: Any) -> Any:
  return float(value) if launcher.field_type(config, field) is float else value


def run_trials(config: ml_collections.ConfigDict, workdir: str, space: list[Dimension], budget: int,
               metric: str, direction: str, seed: int) -> None:
  """Runs trials of the study in `workdir` until `budget` are complete or pruned (one process)."""
  import optuna  # pylint: disable=g-import-not-at-top
  from lib import train  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)
  study = _study(workdir, direction, seed)

  def objective(trial):
    point = {d.field: _value(config, d.field, _suggest(trial, d)) for d in space}
    trial.set_user_attr('point', point)
    run_config = copy.deepcopy(config)
    run_config.update_from_flattened_dict(point)
    run_config.best_metric = metric  # Checked against what the run measures, before a step.
    run_config.best_mode = 'max' if direction == 'maximize' else 'min'

    def report(epoch, metrics):
      trial.report(metrics[metric], epoch)
      return trial.should_prune()

    with train.on_evaluation(report):
      results = launcher.run(run_config, os.path.join(workdir, 'trials', sweep.point_name(point)))
    if results['stopped_early'] and trial.should_prune():
      raise optuna.TrialPruned()
    return results[metric]

  done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
  while len(study.get_trials(deepcopy=False, states=done)) < budget:
    study.optimize(objective, n_trials=1, catch=(NonFiniteLossError,),
                   callbacks=[optuna.study.MaxTrialsCallback(budget, states=done)])


def _study(workdir: str, direction: str, seed: int) -> Any:
  import optuna  # pylint: disable=g-import-not-at-top
  from optuna.storages import journal  # pylint: disable=g-import-not-at-top
  optuna.logging.set_verbosity(
      optuna.logging.ERROR)  # Its failed-trial tracebacks: ours are one line.
  os.makedirs(workdir, exist_ok=True)
  storage = optuna.storages.JournalStorage(
      journal.JournalFileBackend(os.path.join(workdir, 'study.journal')))
  return optuna.create_study(
      storage=storage, study_name='search', direction=direction, sampler=optuna.samplers.TPESampler(
          seed=seed), pruner=optuna.pruners.MedianPruner(n_startup_trials=3), load_if_exists=True)


def _rerun_interrupted(study: Any) -> None:
  """Trials left running by a killed search fail, and their points are queued again: each then
  resumes from its last checkpoint in its trial workdir."""
  import optuna  # pylint: disable=g-import-not-at-top
  for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
    study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)  # pylint: disable=protected-access
    if trial.params:
      study.enqueue_trial(trial.params, skip_if_exists=False)
    logging.info('trial %d was running when the search stopped: it runs again', trial.number)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}')
  config, workdir = launcher._CONFIG.value, os.path.abspath(launcher._WORKDIR.value)  # pylint: disable=protected-access
  start = time.time()
  try:
    space = parse_space(_SPACE.value, config)
    if not _METRIC.value.startswith('val_'):
      raise UserError(f'--metric={_METRIC.value}: the search prunes on what each evaluation '
                      'reports; choose a val_* metric')
    if _TRIALS.value < 1:
      raise UserError(f'--trials={_TRIALS.value} must be at least 1')
    from lib import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
    with workdir_lib.lock(workdir):  # One search decides what runs in this workdir.
      study = _study(workdir, _DIRECTION.value, _SEED.value)
      _rerun_interrupted(study)
      args = (config, workdir, space, _TRIALS.value, _METRIC.value, _DIRECTION.value)
      kind = sweep._LAUNCHER.value  # pylint: disable=protected-access
      if kind == 'inline':
        run_trials(*args, _SEED.value)
      else:
        workers = sweep._WORKERS.value if kind == 'local' else sweep._PARALLELISM.value or 2  # pylint: disable=protected-access
        failures = sweep.launch(
            [jobs.Job(f'worker {w}', run_trials, (*args, _SEED.value + w)) for w in range(workers)],
            os.path.join(workdir, 'jobs'))
        for f in failures:
          raise UserError(f'{f.name} failed: {f.error} (log: {f.log})')
  except UserError as e:
    sys.exit(f'error: {e}')
  # The journal storage reads what the workers appended on each query: the study is current.
  _report(study, workdir, _METRIC.value, start)


def _report(study: Any, workdir: str, metric: str, start: float) -> None:
  """The best point, the command that reruns it, the plot and WORKDIR/search.json."""
  import optuna  # pylint: disable=g-import-not-at-top
  from lib import plots  # pylint: disable=g-import-not-at-top
  trials = study.get_trials(deepcopy=False)
  complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
  pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
  if not complete:
    sys.exit(f'error: no trial of {workdir} completed ({len(pruned)} pruned)')
  best = study.best_trial
  point = best.user_attrs['point']
  spec = sys.argv[sys.argv.index('--config') + 1] if '--config' in sys.argv else next(
      a.split('=', 1)[1] for a in sys.argv if a.startswith('--config='))
  overrides = [a for a in sys.argv if a.startswith('--config.')]
  command = ' '.join([
      'python -m experiments', f'--config={spec}', '--workdir=runs/best', *overrides,
      *(f"--config.{k}='{v}'" if isinstance(v, (tuple, list)) else f'--config.{k}={v}'
        for k, v in point.items())
  ])
  records.write_json(
      os.path.join(workdir, 'search.json'), {
          'metric': metric, 'best': {'point': point, 'value': best.value, 'trial': best.number
                                    }, 'complete': len(complete), 'pruned': len(pruned),
          'command': command, 'wall_time_s': round(time.time() - start, 1), 'trials': [{
              'number': t.number, 'state': t.state.name, 'value': t.value,
              'point': t.user_attrs.get('point')
          } for t in trials]
      })
  path = os.path.join(workdir, 'plots', f'{metric}_by_trial.png')
  plots.lines([t.number for t in complete], {metric: [t.value for t in complete]}, path,
              xlabel='trial', ylabel=metric,
              title=f'{len(complete)} complete, {len(pruned)} pruned')
  logging.info('%d trials complete, %d pruned; best %s %.5g at %s', len(complete), len(pruned),
               metric, best.value, point)
  logging.info('rerun it: %s', command)
  logging.info('search.json and %s are in %s', os.path.relpath(path, workdir), workdir)


if __name__ == '__main__':
  app.run(main, flags_parser=launcher._parse_flags)  # pylint: disable=protected-access
