"""Runs an experiment: python -m experiments --config=configs/NAME.py --workdir=DIR [--config.F=V ...].

The config names its experiment module (config.experiment). The launcher owns
what every run shares: it checks the command line and the config before any
work, holds the workdir's lock, checks a rerun's config against the one the
run started with, times the run, writes results.json and prints the headline.
An experiment module's `train_and_evaluate(config, workdir)` is its science;
its `headline(results)` says in one line what it found; `REPORTS_EACH_MEMBER = True`
says that its results are lib.train.fit's metrics, so a population (config.num_seeds
> 1, config.population) reports each member's (other experiments refuse one).
"""
import atexit
import difflib
import glob
import importlib
import importlib.util
import logging as py_logging
import os
import re
import sys
import time
from typing import Any

from lib import cpu

cpu.configure()  # First: malloc and XLA:CPU settings must precede JAX's and TF's threads.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TF only feeds data, if at all; keep it quiet.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

import experiments
from lib.errors import is_disk_full, UserError

# JAX and the library are imported once the command line has been checked, so that
# a mistake there is reported in a second.
# JAX logs each platform it looked for and did not find ("Unable to initialize backend 'tpu'").
py_logging.getLogger('jax._src.xla_bridge').setLevel(py_logging.WARNING)

# --config=configs/NAME.py[:VARIANT]: the file is executed once, by `_parse_flags`, which
# then defines this flag over the config it built, for absl to apply --config.FIELD=VALUE.
_CONFIG: flags.FlagHolder[ml_collections.ConfigDict] | None = None
_CONFIG_HELP = 'Experiment config: configs/NAME.py or configs/NAME.py:VARIANT.'
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, TensorBoard events, plots and results.json; '
    'a run resumes from it.')
flags.mark_flags_as_required(['workdir'])
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Initialize jax.distributed before anything else: from the flags '
    'below, or, where they are unset, from the environment (TPU pods, SLURM).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0, for --distributed.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes, for --distributed.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, for --distributed.')
_COMPILE_FOR = flags.DEFINE_string(
    'compile_for', None, 'Compile the run for an accelerator that need not be here (v5e-8, '
    'h100, ...: lib/aot/targets.py TARGETS) instead of running it: per-device memory against the HBM, '
    'FLOPs and a roofline bound per program; the workdir gets the report, no checkpoint. Needs '
    'requirements-compile.txt.')


def experiment_module(config: ml_collections.ConfigDict) -> Any:
  """The module of experiments/ that config.experiment names."""
  names = sorted(
      os.path.basename(p)[:-3]
      for p in glob.glob(os.path.join(os.path.dirname(experiments.__file__), '[!_]*.py')))
  names.remove('sweep')  # The sweep and the search launch experiments; they are none.
  names.remove('search')
  if config.experiment not in names:
    raise UserError(f'config.experiment={config.experiment!r} is unknown; choose one of {names}')
  return importlib.import_module(f'experiments.{config.experiment}')


def checked_experiment(config: ml_collections.ConfigDict) -> Any:
  """The config's experiment module, after the checks every run makes before any work.

  Raises:
    UserError: an unknown experiment, a bad engine field, or a population for an
      experiment that trains one model.
  """
  from lib import train  # pylint: disable=g-import-not-at-top
  module = experiment_module(config)
  if 'optimizer' in config:  # Configs built on configs.common.training() train through lib.train.
    train.check_config(config)
  if ('optimizer' in config and train.population.size(config) > 1 and
      not getattr(module, 'REPORTS_EACH_MEMBER', False)):
    raise UserError(f'config.num_seeds={config.num_seeds} or config.population: experiment '
                    f"{config.experiment!r} computes its results from one model's weights, so it "
                    'trains one model per run; for several, python -m experiments.sweep '
                    '--grid=seed=0,1,2')
  return module


def run(config: ml_collections.ConfigDict, workdir: str,
        compile_for: str | None = None) -> dict[str, Any]:
  """Runs the config's experiment in `workdir`, with the bookends every run shares.

  Args:
    config: the experiment's config.
    workdir: the run's directory; a rerun resumes from it.
    compile_for: a name of lib.aot.TARGETS: compile the run for that accelerator
      instead (`compile_only`).

  Returns:
    The results, as written to workdir/results.json (with compile_for, the report).

  Raises:
    UserError: bad config, workdir in use, or a rerun under a changed config.
  """
  if compile_for:
    return compile_only(config, workdir, compile_for)
  from lib import compilation_cache  # pylint: disable=g-import-not-at-top
  from lib import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  start = time.time()
  compilation_cache.enable()  # Before anything compiles: a rerun loads its programs.
  module = checked_experiment(config)
  with workdir_lib.lock(workdir) as path:
    workdir_lib.check_config(path, config)
    results = module.train_and_evaluate(config, path)
    results['headline'] = module.headline(results)
    if 'members' in results:
      results['headline'] += (f"; {len(results['members']['seed'])} models, their mean (each "
                              'one is in results.json)')
    workdir_lib.write_results(path, results, config, start)
  return results


def compile_only(config: ml_collections.ConfigDict, workdir: str, target: str) -> dict[str, Any]:
  """Builds the run as `run` would, for `target`'s devices, and compiles its programs; runs none.

  The workdir gets compile_TARGET_DTYPE.json and nothing else: no config record,
  no checkpoint, so the same workdir can still start the real run.

  Returns:
    The report (lib.aot.report).

  Raises:
    UserError: an unknown target, a bad config, or a program that does not fit.
  """
  from lib import aot  # pylint: disable=g-import-not-at-top
  from lib import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  chip = aot.target(target)
  module = checked_experiment(config)
  dtype = config.get('compute_dtype', 'float32')
  with workdir_lib.lock(workdir) as path, aot.compiling_for(chip, dtype) as programs:
    try:
      module.train_and_evaluate(config, path)
    except aot.Compiled:
      pass
    if not programs:
      raise UserError(f'--compile_for: experiment {config.experiment!r} ran without compiling '
                      'a program for the target')
    report = aot.report(chip, dtype, programs)
    report['config'] = config.to_dict()
    report['report'] = aot.write(path, report)
  return report


def field_type(config: ml_collections.ConfigDict, name: str) -> type:
  """The type of config field `name` ('model_kwargs.dense' for a nested one).

  Raises:
    KeyError, AttributeError: the config has no such field.
  """
  *parents, leaf = name.split('.')
  for parent in parents:
    config = config[parent]
  return config.get_type(leaf)


def _config_fields(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  names = []
  for key, value in config.items():
    names.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      names += _config_fields(value, f'{prefix}{key}.')
  return names


def _load_config(spec: str) -> ml_collections.ConfigDict:
  """The config that --config=PATH[:VARIANT] names, or a UserError saying what is wrong."""
  path, colon, variant = spec.partition(':')
  if not os.path.isfile(path):
    known = sorted(p for p in glob.glob('configs/*.py')
                   if os.path.basename(p) not in ('__init__.py', 'common.py'))
    raise UserError(f'--config={spec}: no such file; choose one of {known}')
  module_spec = importlib.util.spec_from_file_location('_checked_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    return module.get_config(*([variant] if colon else []))
  except ValueError as e:  # The configs' way of refusing a variant.
    raise UserError(f'--config={spec}: {e}') from None


def _check_command_line(argv: list[str]) -> tuple[ml_collections.ConfigDict | None, list[str]]:
  """Loads the config, checks that every --config.FIELD names a field, before absl applies them.

  Returns:
    The config (None with --help and no --config) and `argv` without --config=PATH.

  Raises:
    UserError: no --config, a config that does not load, or an unknown field.
  """
  specs, rest, i = [], [], 0
  while i < len(argv):
    if argv[i] == '--config':  # The path in the next argument.
      specs.append(argv[i + 1] if i + 1 < len(argv) else '')
      i += 2
      continue
    if argv[i].startswith('--config='):
      specs.append(argv[i].split('=', 1)[1])
    else:
      rest.append(argv[i])
    i += 1
  if not specs:
    if {'--help', '--helpfull', '-h'} & set(argv):
      return None, rest
    raise UserError(f'--config is required: {_CONFIG_HELP}')
  config = _load_config(specs[-1])
  fields = _config_fields(config)
  for arg in argv:
    if arg.startswith('--config.'):
      name = arg[len('--config.'):].split('=', 1)[0]
      if name not in fields:
        close = difflib.get_close_matches(name, fields, n=3)
        raise UserError(f'--config.{name}: the config has no field {name!r}' + (
            f'; did you mean {" or ".join(close)}?' if close else f'; its fields are {fields}'))
  return config, rest


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every mistake reported as one `error:` line and exit status 2."""
  global _CONFIG
  try:
    config, rest = _check_command_line(argv[1:])
    if config is not None and _CONFIG is None:
      _CONFIG = config_flags.DEFINE_config_dict('config', config, _CONFIG_HELP, lock_config=True,
                                                sys_argv=argv[:1] + rest)
    try:
      return flags.FLAGS(argv[:1] + rest)
    except flags.Error as e:
      message = str(e).splitlines()[0].removeprefix('flag ')
      field = re.match(r'--config\.([\w.]+)=', message)
      if field and config is not None:  # Say which type the field takes.
        message += (f' (config.{field.group(1)} expects a value of type '
                    f'{field_type(config, field.group(1)).__name__})')
      raise UserError(message) from None
  except UserError as e:
    sys.stderr.write(f'error: {e}\n')
    sys.exit(2)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}; fields are set as --config.FIELD=VALUE')
  if _COMPILE_FOR.value:  # The host only compiles: JAX need not look for its accelerators.
    os.environ['JAX_PLATFORMS'] = 'cpu'
  if _DISTRIBUTED.value:  # Before any JAX computation: every process joins the same runtime.
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  try:
    results = run(_CONFIG.value, _WORKDIR.value, _COMPILE_FOR.value)
  except UserError as e:
    sys.exit(f'error: {e}')
  except Exception as e:  # pylint: disable=broad-except
    if not is_disk_full(e):
      raise
    logging.flush()
    sys.stderr.write(
        f'error: no space left on the device of --workdir={_WORKDIR.value} '
        f'({type(e).__name__}: {str(e).splitlines()[0][:200]}); free space and run the same '
        'command again: it resumes from the last complete checkpoint\n')
    sys.stderr.flush()
    os._exit(1)  # Background writers may be stuck on the full disk: do not wait for them.
  if _COMPILE_FOR.value:
    from lib import aot  # pylint: disable=g-import-not-at-top
    print(aot.summary(results))
    print(f"report: {results['report']}")
    return
  logging.info('%s', results['headline'])
  logging.info('done: results.json, plots/, checkpoints/ and TensorBoard events are in %s',
               os.path.abspath(_WORKDIR.value))


def _exit(status: Any) -> None:
  """Exits with `status` (SystemExit's code) without the interpreter's teardown.

  Freeing JAX's and XLA's objects one by one takes about a second after every
  run; by now every file is written and closed, so exit-time handlers run and
  the process ends.
  """
  if isinstance(status, str):
    sys.stderr.write(status + '\n')
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  atexit._run_exitfuncs()  # pylint: disable=protected-access
  os._exit(status if isinstance(status, int) else 0 if status is None else 1)


if __name__ == '__main__':
  try:
    app.run(main, flags_parser=_parse_flags)
  except SystemExit as e:
    _exit(e.code)
