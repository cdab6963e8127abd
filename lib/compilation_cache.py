"""JAX's persistent compilation cache, which the launcher turns on: a rerun loads what it compiled.

A run compiles its train and eval steps and the small programs around them
(initialization, metrics, plots) once per process, seconds of a small run on a
few CPU cores. JAX can keep the compiled programs on disk, keyed by the program,
the JAX version, the backend, the devices and XLA_FLAGS; the same command run
again (a resume, the next seed of a sweep, the same config in a new workdir)
loads them instead. The numbers are the same bits: a loaded program is the one
XLA compiled.
"""
import hashlib
import os
import platform

import jax

import lib

# The folder's cap; the least recently used programs go first.
MAX_BYTES = 2 * 2**30


def _machine() -> str:
  """A name for this CPU model and its instruction sets, for which XLA:CPU compiles."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      lines = [line for line in f if line.startswith(('model name', 'flags'))][:2]
  except OSError:
    lines = [platform.processor()]
  return hashlib.sha256(''.join([platform.machine(), *lines]).encode()).hexdigest()[:12]


def enable() -> str | None:
  """Turns the cache on, unless the user chose otherwise; call it before anything compiles.

  The folder is JAX_COMPILATION_CACHE_DIR where the user set it, else
  $JAXNOTES_CACHE/xla-MACHINE (JAXNOTES_CACHE defaults to ~/.cache/jaxnotes),
  MACHINE naming this CPU: a program compiled for one CPU's instructions must not
  load on another's, as it could from a home folder that several machines share.
  Every program is kept, however quick its compile (JAX's default keeps those over
  a second, which is none of a small model's), up to MAX_BYTES.
  JAX_ENABLE_COMPILATION_CACHE=false turns the cache off; JAX's other
  JAX_PERSISTENT_CACHE_* and JAX_COMPILATION_CACHE_MAX_SIZE variables win over these choices.

  Returns:
    The cache's folder, or None where it is off.
  """
  if not jax.config.jax_enable_compilation_cache:
    return None
  path = jax.config.jax_compilation_cache_dir
  if not path:
    path = os.path.join(lib.cache_dir(), f'xla-{_machine()}')
    jax.config.update('jax_compilation_cache_dir', path)
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  if 'JAX_COMPILATION_CACHE_MAX_SIZE' not in os.environ:
    jax.config.update('jax_compilation_cache_max_size', MAX_BYTES)
  return path
