"""Whole processes timed from start to exit, for the benchmarks that compare runs as users start them.

No JAX here: the timing process only starts and waits.
"""
from collections.abc import Sequence
import os
import subprocess
import sys
import tempfile
import time


def experiment(config: str, workdir: str, *fields: str) -> list[str]:
  """The command line of `python -m experiments` for `config`, with `--config.FIELD=VALUE` overrides.

  Args:
    config: the config argument, as `configs/NAME.py[:VARIANT]`.
    workdir: the run's workdir.
    *fields: overrides as `FIELD=VALUE`.

  Returns:
    The program and its arguments, run by this Python.
  """
  return [
      sys.executable, '-m', 'experiments', f'--config={config}', f'--workdir={workdir}',
      *(f'--config.{field}' for field in fields)
  ]


def run_process(command: Sequence[str],
                compilation_cache: str | None = None) -> tuple[float, subprocess.CompletedProcess]:
  """Runs `command` to its exit; raises with its stderr's tail if it fails.

  Args:
    command: the program and its arguments.
    compilation_cache: the folder of JAX's compilation cache for the launcher
      (lib/compilation_cache.py); None: a new empty one, so that the process
      compiles everything as a first run does, whatever earlier runs left.

  Returns:
    (seconds from start to exit, the finished process with its stdout and stderr).
  """
  with tempfile.TemporaryDirectory(prefix='jaxnotes_xla_') as empty:
    env = {
        **os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2',
        'JAX_COMPILATION_CACHE_DIR': compilation_cache or empty
    }
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    seconds = time.perf_counter() - start
  if done.returncode:
    raise RuntimeError(f'{" ".join(command)} failed:\n{done.stderr[-3000:]}')
  return seconds, done
