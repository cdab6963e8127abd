"""Timing shared by the benchmarks."""
from collections.abc import Callable
import statistics
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
