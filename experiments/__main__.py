"""Runs an experiment: python -m experiments --config=configs/NAME.py --workdir=DIR [--config.F=V ...].

The config names its experiment module (config.experiment); the config is
locked, so a mistyped or unknown field is an error before anything runs.
"""
import importlib
import os
import pkgutil
import sys

from lib import cpu

cpu.configure()  # First: malloc and XLA:CPU settings must precede JAX's and TF's threads.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TF only feeds data, if at all; keep it quiet.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

import experiments
from lib.errors import is_disk_full, UserError

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config: configs/NAME.py or configs/NAME.py:VARIANT.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, TensorBoard events, plots and results.json; '
    'a run resumes from it.')
flags.mark_flags_as_required(['config', 'workdir'])
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Initialize jax.distributed before anything else: from the flags '
    'below, or, where they are unset, from the environment (TPU pods, SLURM).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0, for --distributed.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes, for --distributed.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, for --distributed.')


def run(config, workdir: str) -> dict:
  """Imports the config's experiment module and runs it."""
  names = sorted(m.name for m in pkgutil.iter_modules(experiments.__path__)
                 if not m.name.startswith('_'))
  if config.experiment not in names:
    raise UserError(f'config.experiment={config.experiment!r} is unknown; choose one of {names}')
  module = importlib.import_module(f'experiments.{config.experiment}')
  return module.train_and_evaluate(config, workdir)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _DISTRIBUTED.value:  # Before any JAX computation: every process joins the same runtime.
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  try:
    run(_CONFIG.value, _WORKDIR.value)
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
  logging.info('done: results.json, plots/, checkpoints/ and TensorBoard events are in %s',
               os.path.abspath(_WORKDIR.value))


if __name__ == '__main__':
  app.run(main)
