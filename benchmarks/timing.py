"""Timing shared by the benchmarks."""
from collections.abc import Callable, Sequence
import os
import statistics
import subprocess
import time
from typing import Any

import jax


def median_rate(step: Callable[[], Any], examples_per_call: int, block_seconds: float,
                blocks: int = 5) -> float:
  """Examples per second: the median over `blocks` timed blocks of at least `block_seconds`.

  Args:
    step: runs one call; returns what to wait on (a JAX step runs ahead of the host until
      the block's last output is waited for) or None.
    examples_per_call: examples one call trains on.
    block_seconds: least length of a block.
    blocks: timed blocks.

  Returns:
    The median rate.
  """
  rates = []
  for _ in range(blocks):
    n, start, out = 0, time.perf_counter(), None
    while n == 0 or time.perf_counter() - start < block_seconds:
      out = step()
      n += 1
    jax.block_until_ready(out)
    rates.append(n * examples_per_call / (time.perf_counter() - start))
  return statistics.median(rates)


def run_process(command: Sequence[str]) -> tuple[float, subprocess.CompletedProcess]:
  """Runs `command` to its exit; raises with its stderr's tail if it fails.

  Args:
    command: the program and its arguments.

  Returns:
    (seconds from start to exit, the finished process with its stdout and stderr).
  """
  start = time.perf_counter()
  done = subprocess.run(command, capture_output=True, text=True, check=False,
                        env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
  seconds = time.perf_counter() - start
  if done.returncode:
    raise RuntimeError(f'{" ".join(command)} failed:\n{done.stderr[-3000:]}')
  return seconds, done
