"""The CPU speed layer: process settings, convolutions and a ReLU that make training fast on CPU.

What it holds, and when each part applies:

* `configure()` (this module): malloc and XLA:CPU settings, applied once by the
  launcher, tests and benchmarks before JAX, TF or numpy start (below).
* `lib.cpu.conv.specialize(model.apply)`, which the engine applies to every
  model: the model's nn.Conv layers computed by XLA's convolution (GPU, TPU,
  several devices), by im2col, or with the kernels of `lib.cpu.conv_kernel`
  (one CPU device with AVX-512 or AVX2 + FMA and a C++ compiler), its
  first conv → ReLU → pool block in one pass, a population's 1-D
  convolutions with every member in one kernel call, and nn.relu as
  `lib.cpu.activations.relu`; the choice is `lib.cpu.conv.resolve`'s, per
  backend, never a model's or a config's.
* `lib.cpu.activations.relu`: nn.relu's values and gradient, cheaper on XLA:CPU.

Nothing here changes a result beyond float32 summation order, and checkpoints
load whichever convolution ran.

Settings that make training fast on CPU, applied once, before JAX, TF or numpy start.

Two causes of slow CPU steps, both measured on the MNIST CNN step
(benchmarks/frameworks.py, docs/performance.md):

* Page faults. XLA:CPU allocates each step's temporary buffers anew (~40 MB for
  the MNIST CNN). glibc's malloc serves allocations that large by mmap, or from
  per-thread arenas that it trims, so every step maps fresh pages and the kernel
  zero-fills them on first touch: ~10,000 page faults per step, about a third of
  the step time on this project's VM. `configure` makes malloc keep freed memory
  and reuse it (no mmap, no trimming, at most 4 arenas shared by all threads):
  the next step finds its pages mapped. The price: the process keeps its peak
  heap until it exits.
* YNNPACK convolutions. XLA:CPU (jaxlib 0.10) sends convolutions to YNNPACK,
  whose backward convolutions are slow here; `configure` takes convolutions
  out of XLA:CPU's default YNNPACK fusions and leaves the rest as installed.
  Adding YNNPACK's elementwise and reduce fusions makes the MNIST CNN's step
  ~7% faster but dense models' steps 15-30% slower (YNNPACK splits an Adam
  update into three passes where XLA makes one loop); a convnet user can still
  ask for them in XLA_FLAGS.

`configure` leaves alone what the user chose: XLA_FLAGS that set the YNNPACK
fusions, and malloc settings from the environment (MALLOC_*, GLIBC_TUNABLES, or
an allocator in LD_PRELOAD). JAXNOTES_CPU_DEFAULTS=0 turns it off altogether.
The malloc settings apply only with glibc, and not on a GPU or TPU host (a plugin
for JAX installed and the device's node in /dev: the step's buffers live on the
device); a plugin installed only to compile for accelerators (`--compile_for`)
leaves them on. The XLA flag is read by XLA:CPU alone, so it leaves GPU and TPU
untouched. Where no accelerator's device node exists, JAX_PLATFORMS=cpu (unless
the user set it), so that such a plugin stays quiet.
"""
import ctypes
import ctypes.util
import glob
import os
import platform
import re
import sys

_YNN_FLAG = 'xla_cpu_experimental_ynn_fusion_type'
# XLA's default YNNPACK fusions less lone convolutions ('-' edits the default set).
_XLA_FLAGS = f'--{_YNN_FLAG}=-individual_convolution'

# mallopt(3) parameters.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_USER_MALLOC_ENV = ('MALLOC_ARENA_MAX', 'MALLOC_MMAP_MAX_', 'MALLOC_MMAP_THRESHOLD_',
                    'MALLOC_TRIM_THRESHOLD_', 'GLIBC_TUNABLES', 'LD_PRELOAD')
_ACCELERATOR_PLUGINS = re.compile(r'libtpu|jax[-_](cuda|rocm)')
# Device nodes of TPUs (accel: v4 and later; vfio: v5e and later), NVIDIA and AMD GPUs.
_ACCELERATOR_NODES = ('/dev/accel*', '/dev/vfio/[0-9]*', '/dev/nvidia[0-9]*', '/dev/kfd')


def configure() -> dict[str, bool]:
  """Applies the CPU settings this process can still take; call before importing JAX.

  Returns:
    What was applied: {'xla_flags': ..., 'malloc': ..., 'cpu_only': ...}.
  """
  if os.environ.get('JAXNOTES_CPU_DEFAULTS', '1') == '0':
    return {'xla_flags': False, 'malloc': False, 'cpu_only': False}
  malloc = _reuse_freed_memory()  # First: it must precede the threads JAX starts.
  return {'xla_flags': _set_xla_flags(), 'malloc': malloc, 'cpu_only': _cpu_only()}


def _cpu_only() -> bool:
  """JAX_PLATFORMS=cpu on a host with no accelerator, unless the user chose the platforms.

  A TPU or GPU plugin installed only to compile for accelerators (`--compile_for`)
  would otherwise look for its device at JAX's start and print its failure, a
  traceback for the CUDA plugin, into every run's output.
  """
  if 'JAX_PLATFORMS' in os.environ or _backends_started() or _accelerator_nodes():
    return False
  os.environ['JAX_PLATFORMS'] = 'cpu'
  return True


def _backends_started() -> bool:
  if 'jax' not in sys.modules:
    return False
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  return xla_bridge.backends_are_initialized()


def _set_xla_flags() -> bool:
  flags = os.environ.get('XLA_FLAGS', '')
  if _YNN_FLAG in flags or _backends_started():  # The user's choice, or too late to read.
    return False
  os.environ['XLA_FLAGS'] = f'{flags} {_XLA_FLAGS}'.strip()
  return True


def _accelerator_nodes() -> bool:
  return any(glob.glob(pattern) for pattern in _ACCELERATOR_NODES)


def _accelerator_host() -> bool:
  """Whether JAX can drive an accelerator here: a device node and a plugin for it."""
  if not _accelerator_nodes():
    return False
  # Installed distributions by their folders' names: reading every package's metadata
  # costs a noticeable part of a second at each start.
  for entry in sys.path:
    try:
      names = os.listdir(entry or '.')
    except OSError:
      continue
    if any(
        _ACCELERATOR_PLUGINS.search(n.lower())
        for n in names
        if n.endswith(('.dist-info', '.egg-info', '.egg-link'))):
      return True
  return False


def _reuse_freed_memory() -> bool:
  if (platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc' or
      any(os.environ.get(name) for name in _USER_MALLOC_ENV) or _accelerator_host()):
    return False
  libc = ctypes.CDLL(ctypes.util.find_library('c'))
  # Few arenas, so that threads share them: an arena of its own per thread gives
  # memory back whatever the trim threshold (MNIST CNN step, 2 cores: 8 arenas,
  # 8,192 page faults; 4 or 2 arenas, 191; 1, none). One arena makes threads wait
  # for its lock: the dense VAE step ran 16% slower than as installed with 1, ~3%
  # with 4 (within this VM's noise). glibc fixes
  # the arena limit when a second thread first allocates, hence "before JAX, TF or
  # numpy start" (they start threads).
  return all(
      libc.mallopt(param, value) == 1
      for param, value in ((_M_ARENA_MAX, 4), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)))


def xla_convolutions_are_fast() -> bool:
  """Whether XLA_FLAGS keeps convolutions out of YNNPACK (read when JAX starts)."""
  match = re.search(_YNN_FLAG + r'=(\S*)', os.environ.get('XLA_FLAGS', ''))
  if match is None:  # XLA's default set, which has convolutions.
    return False
  kinds = [k for k in match.group(1).split(',') if k]
  if kinds and all(k[0] in '+-' for k in kinds):  # Edits of the default set.
    return '-individual_convolution' in kinds
  return 'individual_convolution' not in kinds and '+individual_convolution' not in kinds
