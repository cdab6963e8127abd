"""lib.cpu: the launcher's CPU settings, checked in fresh processes (they act only at start)."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

_YNN = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'

# Allocates, touches and frees a 64 MiB buffer 5 times; prints what configure() applied and
# the page faults of the last 4 rounds.
_ALLOCATE = """
import ctypes, json, resource
from lib import cpu
applied = cpu.configure()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
faults = []
for _ in range(5):
  start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  p = libc.malloc(64 << 20)
  ctypes.memset(p, 1, 64 << 20)
  libc.free(ctypes.c_void_p(p))
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
print(json.dumps({'applied': applied, 'faults': faults[1:]}))
"""


def _run(code: str, **env: str) -> dict:
  environ = {
      k: v
      for k, v in os.environ.items()
      if k not in ('XLA_FLAGS', 'JAXNOTES_CPU_DEFAULTS', 'GLIBC_TUNABLES', 'LD_PRELOAD',
                   'JAX_PLATFORMS') and not k.startswith('MALLOC_')
  }
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO, env={**environ, **env},
                       capture_output=True, text=True, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings')
def test_configured_malloc_reuses_freed_memory_without_page_faults():
  pages = (64 << 20) // os.sysconf('SC_PAGE_SIZE')
  configured = _run(_ALLOCATE)
  assert configured['applied'] == {'xla_flags': True, 'malloc': True, 'cpu_only': True}
  assert max(configured['faults']) < pages // 100  # The freed pages are reused.
  as_installed = _run(_ALLOCATE, JAXNOTES_CPU_DEFAULTS='0')
  assert as_installed['applied'] == {'xla_flags': False, 'malloc': False, 'cpu_only': False}
  assert min(as_installed['faults']) > pages // 2  # Fresh pages every time.
  users = _run(_ALLOCATE, MALLOC_ARENA_MAX='4')  # The user's own malloc settings win.
  assert users['applied'] == {'xla_flags': True, 'malloc': False, 'cpu_only': True}


def test_xla_flags_keep_convolutions_out_of_ynnpack_unless_the_user_chose():
  code = ('import json, os; from lib import cpu; cpu.configure(); '
          'print(json.dumps([os.environ["XLA_FLAGS"], cpu.xla_convolutions_are_fast()]))')
  assert _run(code, XLA_FLAGS='--xla_force_host_platform_device_count=2') == [
      f'--xla_force_host_platform_device_count=2 {_YNN}', True
  ]
  for kinds, fast in [('individual_dot,individual_convolution', False),
                      ('individual_dot,eltwise,reduce', True), ('+eltwise', False),
                      ('-individual_convolution,+eltwise', True), ('', True)]:
    mine = f'--xla_cpu_experimental_ynn_fusion_type={kinds}'
    assert _run(code, XLA_FLAGS=mine) == [mine, fast]


def test_nothing_changes_once_jax_has_started():
  code = ('import json, os, jax; jax.numpy.zeros(1).block_until_ready(); from lib import cpu; '
          'print(json.dumps([cpu.configure()["xla_flags"], os.environ.get("XLA_FLAGS", "")]))')
  assert _run(code) == [False, '']
