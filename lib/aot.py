"""Ahead of time: a run's programs compiled for a TPU or GPU that is not here (`--compile_for`).

`python -m experiments --config=... --workdir=DIR --compile_for=v5e-8` builds
the run as a real one would (config checks, model, the dataset's shapes and
dtypes, splits on the devices within config.device_data_mb, shardings,
steps_per_execution, num_seeds, compute_dtype, the optimizer) over the
target's devices, described by JAX without the hardware
(`jax.experimental.topologies`: libtpu for TPUs, the CUDA plugin for NVIDIA
GPUs, both in requirements-compile.txt), lowers every program the run executes
with abstract inputs and compiles it for the target. Nothing is read from the
datasets beyond their sizes, and no step runs: the workdir gets
`compile_TARGET_DTYPE.json` and no checkpoint.

For each program it reports XLA's per-device memory (arguments, outputs, peak)
against the chip's HBM, its FLOPs and bytes accessed (XLA's cost analysis;
none on GPU, where this JAX's plugin gives none), and a roofline lower bound
on its time: max(FLOPs / peak FLOP/s, bytes it must move / HBM bandwidth),
from the published figures in TARGETS. A bound, not a prediction: it ignores
latency, launch overheads, collectives, the host and the memory traffic of
intermediates. What does not fit is one line
naming the program, its bytes and the HBM.
"""
from collections.abc import Callable, Iterator
import contextlib
import dataclasses
import json
import math
import os
import time
from typing import Any

import jax

from lib import parallel
from lib.errors import UserError

_GIB = 2**30
_CLOUD_TPU = 'cloud.google.com/tpu/docs/{} (per chip)'


@dataclasses.dataclass(frozen=True)
class Target:
  """An accelerator by the name users know, and its published per-device figures.

  Attributes:
    name: e.g. 'v5e-8'.
    description: chips and hosts, in words.
    platform: 'tpu' or 'cuda'.
    topology: keyword arguments of jax.experimental.topologies.get_topology_desc.
    hbm: bytes of HBM per JAX device.
    peak_flops: dense bfloat16 FLOP/s per device. JAX's default precision runs
      float32 matmuls as bfloat16 passes on a TPU and as TF32 on an A100 or
      H100, so this bounds float32 too except on GPUs (`f32_flops`).
    f32_flops: float32 matmul FLOP/s per device at JAX's default precision.
    hbm_bandwidth: bytes/s per device.
    source: where the figures come from.
  """
  name: str
  description: str
  platform: str
  topology: dict[str, Any]
  hbm: float
  peak_flops: float
  f32_flops: float
  hbm_bandwidth: float
  source: str


def _tpu(name: str, description: str, topology: str, hbm_gib: float, tflops: float, gbps: float,
         source: str, **kwargs: Any) -> Target:
  return Target(name, description, 'tpu', dict(topology_name=topology, **kwargs), hbm_gib * _GIB,
                tflops * 1e12, tflops * 1e12, gbps * 1e9, source)


# v2 and v3 chips are two devices each (one per TensorCore): their figures are halved.
TARGETS = {
    t.name: t for t in (
        _tpu('v5e-1', 'TPU v5e, 1 chip (Colab)', 'v5e:1x1', 16, 197, 819, _CLOUD_TPU.format('v5e'),
             chips_per_host_bounds=(1, 1, 1)),
        _tpu('v2-8', 'TPU v2, 4 chips = 8 devices (Colab)', 'v2:2x2', 8, 23, 350,
             'Jouppi et al., CACM 2020, Table 3 (46 TFLOP/s, 16 GiB, 700 GB/s a chip)'),
        _tpu('v3-8', 'TPU v3, 4 chips = 8 devices (Colab)', 'v3:2x2', 16, 61.5, 450,
             _CLOUD_TPU.format('v3') + ', halved: 2 devices a chip'),
        _tpu('v4-8', 'TPU v4, 4 chips (megacore: a device a chip)', 'v4:2x2x1', 32, 275, 1200,
             _CLOUD_TPU.format('v4'), chip_config_name='megacore'),
        _tpu('v5e-8', 'TPU v5e, 8 chips, 1 host', 'v5e:2x4', 16, 197, 819, _CLOUD_TPU.format('v5e'),
             chips_per_host_bounds=(2, 4, 1)),
        _tpu('v5e-16', 'TPU v5e, 16 chips on 4 hosts', 'v5e:4x4', 16, 197, 819,
             _CLOUD_TPU.format('v5e')),
        _tpu('v5e-256', 'TPU v5e pod, 256 chips on 64 hosts', 'v5e:16x16', 16, 197, 819,
             _CLOUD_TPU.format('v5e')),
        _tpu('v5p-8', 'TPU v5p, 4 chips', 'v5p:2x2x1', 95, 459, 2765, _CLOUD_TPU.format('v5p')),
        _tpu('v6e-1', 'TPU v6e (Trillium), 1 chip', 'v6e:1x1', 32, 918, 1640,
             _CLOUD_TPU.format('v6e'), chips_per_host_bounds=(1, 1, 1)),
        _tpu('v6e-8', 'TPU v6e (Trillium), 8 chips, 1 host', 'v6e:2x4', 32, 918, 1640,
             _CLOUD_TPU.format('v6e'), chips_per_host_bounds=(2, 4, 1)),
        Target('a100', 'NVIDIA A100 SXM4 40GB (Colab)', 'cuda', {'topology': '1x1x1'}, 40 *
               _GIB, 312e12, 156e12, 1555e9, 'NVIDIA A100 datasheet (dense; float32 as TF32)'),
        Target('h100', 'NVIDIA H100 SXM 80GB', 'cuda', {'topology': '1x1x1'}, 80 *
               _GIB, 989e12, 495e12, 3350e9, 'NVIDIA H100 datasheet (SXM, dense; float32 as TF32)'),
        Target('h100x8', 'NVIDIA H100 SXM 80GB x 8, 1 host', 'cuda', {'topology': '1x1x8'}, 80 *
               _GIB, 989e12, 495e12, 3350e9, 'NVIDIA H100 datasheet (SXM, dense; float32 as TF32)'),
    )
}

# What XLA's GPU compiler needs to know of a GPU it cannot see (its GpuTargetConfigProto),
# from NVIDIA's published figures: SMs, memory, bandwidth, L2, boost clock, compute
# capability, and the per-SM limits of that capability.
_GPU_SPECS = {
    'a100': dict(name='NVIDIA A100-SXM4-40GB', sms=108, memory=40 * _GIB, bandwidth=1555e9,
                 l2=40 * 2**20, clock_ghz=1.41, cc=(8, 0), smem_per_sm=164 * 1024,
                 smem_optin=163 * 1024, fp32_per_sm=64),
    'h100': dict(name='NVIDIA H100 80GB HBM3', sms=132, memory=80 * _GIB, bandwidth=3350e9,
                 l2=50 * 2**20, clock_ghz=1.98, cc=(9, 0), smem_per_sm=228 * 1024,
                 smem_optin=227 * 1024, fp32_per_sm=128),
}


def _gpu_target_config(name: str) -> str:
  spec = _GPU_SPECS[name.removesuffix('x8')]
  return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {spec['smem_per_sm']}
  shared_memory_per_block_optin: {spec['smem_optin']}
  threads_per_core_limit: 2048
  core_count: {spec['sms']}
  fpus_per_core: {spec['fp32_per_sm']}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(spec['bandwidth'])}
  l2_cache_size: {spec['l2']}
  clock_rate_ghz: {spec['clock_ghz']}
  device_memory_size: {spec['memory']}
  cuda_compute_capability {{ major: {spec['cc'][0]} minor: {spec['cc'][1]} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  thread_dim_limit_x: 1024
  thread_dim_limit_y: 1024
  thread_dim_limit_z: 64
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
device_description_str: "{spec['name']}"
"""


def target(name: str) -> Target:
  """The Target called `name`.

  Raises:
    UserError: an unknown name, listing the known ones.
  """
  if name not in TARGETS:
    raise UserError(f'--compile_for={name} is unknown; choose one of {list(TARGETS)}')
  return TARGETS[name]


def detect(found: list[jax.Device] | None = None) -> str | None:
  """The name in TARGETS of the accelerator JAX runs on here (jax.devices()), or None.

  None on a CPU, or on a chip or count that TARGETS does not name.
  """
  found = jax.devices() if found is None else found
  kind, count = found[0].device_kind, len(found)
  names = {
      'TPU v2': f'v2-{count}', 'TPU v3': f'v3-{count}', 'TPU v4': f'v4-{2 * count}',
      'TPU v5 lite': f'v5e-{count}', 'TPU v5': f'v5p-{2 * count}', 'TPU v6 lite': f'v6e-{count}'
  }
  if kind in names:
    name = names[kind]
  elif 'A100' in kind:
    name = 'a100'
  elif 'H100' in kind:
    name = 'h100' if count == 1 else f'h100x{count}'
  else:
    return None
  return name if name in TARGETS else None


def devices(t: Target) -> list[jax.Device]:
  """The target's devices, described by JAX without the hardware.

  Raises:
    UserError: the compiler for the target's platform is not installed.
  """
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  kwargs = dict(t.topology)
  if t.platform == 'cuda':
    kwargs['target_config'] = _gpu_target_config(t.name)
  else:
    # libtpu's lock keeps a second process off a TPU; compiling opens none, so several
    # processes may compile at once (benchmarks/compiled.py's workers).
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  try:
    return list(topologies.get_topology_desc(platform=t.platform, **kwargs).devices)
  except Exception as e:  # pylint: disable=broad-except  # The plugin missing or not loading.
    package = 'libtpu' if t.platform == 'tpu' else 'jax-cuda12-plugin'
    raise UserError(f'--compile_for={t.name}: JAX could not describe the target '
                    f'({type(e).__name__}: {(str(e).strip().splitlines() or [""])[0][:200]}); '
                    f'its compiler ({package}) comes with requirements-compile.txt') from None


@dataclasses.dataclass
class Program:
  """One compiled program and what XLA says of it, per device.

  Attributes:
    name: what the run uses it for.
    argument_bytes, output_bytes, peak_bytes: XLA's memory analysis.
    resident_bytes: what else the run keeps on each device meanwhile (the
      splits this program does not take), counted against the HBM beside peak.
    flops, bytes_accessed: XLA's cost analysis of one call (a scan's body
      counted once), or None where the compiler gives none. XLA counts a
      gather's whole operand, so a step that gathers its batch from a split
      on the device "accesses" the split: not a bound.
    calls: how many times a whole run calls it.
    steps: the training steps in one call (0: not a training program).
    data_bytes: of argument_bytes, the splits kept on the device that the
      program reads only a batch of.
  """
  name: str
  argument_bytes: int
  output_bytes: int
  peak_bytes: int
  resident_bytes: int
  flops: float | None
  bytes_accessed: float | None
  calls: int = 1
  steps: int = 0
  compile_seconds: float = 0.0
  data_bytes: int = 0

  def seconds(self, t: Target, dtype: str) -> float | None:
    """A lower bound on one call: max(its FLOPs, the bytes it must move) at the chip's peaks.

    The bytes: its arguments, less the splits it gathers a batch from, read once,
    and its outputs written once (params and optimizer state in and out, for a
    training step); every execution moves at least these.
    """
    if self.flops is None:
      return None
    flops = t.peak_flops if dtype == 'bfloat16' else t.f32_flops
    moved = self.argument_bytes - self.data_bytes + self.output_bytes
    return max(self.flops / flops, moved / t.hbm_bandwidth)


@dataclasses.dataclass
class _Session:
  target: Target
  dtype: str
  programs: list[Program] = dataclasses.field(default_factory=list)
  after_training: list[Callable[[Any], None]] = dataclasses.field(default_factory=list)
  prefix: str = ''


_SESSION: _Session | None = None


class Compiled(Exception):  # pylint: disable=g-bad-exception-name
  """Raised by lib.train.fit once a run's programs are compiled: there is nothing to run."""


def active() -> bool:
  """Whether this process compiles for a target (`--compile_for`) instead of running."""
  return _SESSION is not None


@contextlib.contextmanager
def compiling_for(t: Target, dtype: str) -> Iterator[list[Program]]:
  """Runs built inside this block are compiled for `t`, not run; yields the programs compiled."""
  global _SESSION
  previous = _SESSION
  _SESSION = _Session(t, dtype)
  try:
    with parallel.target(devices(t)):
      yield _SESSION.programs
  finally:
    _SESSION = previous


@contextlib.contextmanager
def part(name: str) -> Iterator[None]:
  """For experiments that train several models: one model's `fit`, its programs named `name: ...`.

  Under `compiling_for`, the Compiled that ends that `fit` ends only this block,
  so the next model compiles too; the experiment raises Compiled after the last.
  Outside it, a no-op.
  """
  if _SESSION is None:
    yield
    return
  previous, _SESSION.prefix = _SESSION.prefix, f'{_SESSION.prefix}{name}: '
  try:
    yield
  except Compiled:
    pass
  finally:
    _SESSION.prefix = previous


def after_training(compile_more: Callable[[Any], None]) -> None:
  """Registers what an experiment runs after `fit`: called with the abstract trained state.

  `compile_more(state)` calls `compile` on the experiment's own programs (e.g.
  the VAE's IWAE bound) before `fit` raises Compiled. A no-op outside `compiling_for`.
  """
  if _SESSION is not None:
    _SESSION.after_training.append(compile_more)


def trained(state: Any) -> None:
  """`fit`'s end under `compiling_for`: the experiment's programs, then Compiled."""
  hooks, _SESSION.after_training = _SESSION.after_training, []
  for compile_more in hooks:
    compile_more(state)
  raise Compiled()


def nbytes(tree: Any) -> int:
  """Bytes of a tree of arrays or ShapeDtypeStructs (per device, where they are replicated)."""
  return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(tree))


def abstract(x: Any, sharding: jax.sharding.Sharding) -> jax.ShapeDtypeStruct:
  """An array's shape and dtype on `sharding`, with no data."""
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def compile(name: str, fn: Any, *args: Any, resident_bytes: int = 0, calls: int = 1, steps: int = 0,
            data_bytes: int = 0) -> Program:  # pylint: disable=redefined-builtin
  """Lowers the jitted `fn` on abstract `args` and compiles it for the session's target.

  Args:
    name: what the run uses it for.
    fn: a jax.jit function.
    *args: its arguments: ShapeDtypeStructs with shardings (and static values).
    resident_bytes: per device, what the run keeps on the devices beside this program's arguments.
    calls: calls in a whole run.
    steps: training steps per call.
    data_bytes: per device, the splits among `args` that it gathers batches from.

  Returns:
    The Program, also recorded in the session.

  Raises:
    UserError: it does not fit the target's HBM (one line), or a lib/cpu custom call
      entered a program for a TPU or GPU.
  """
  t, name = _SESSION.target, _SESSION.prefix + name
  lowered = fn.lower(*args)
  # lib/cpu's custom calls (lib.cpu.conv_kernel) are CPU code. Read in what the compiler is
  # given: the compiled HLO's text takes minutes for an unrolled RNN.
  if 'jaxnotes_' in lowered.as_text():
    raise UserError(f'--compile_for={t.name}: {name} holds a lib/cpu custom call, which only '
                    'runs on CPU')
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except  # XLA's errors come as several types.
    message = (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip('.')
    if 'RESOURCE_EXHAUSTED' in str(e) or 'exceeds' in str(e) and 'memory' in str(e):
      raise UserError(f'--compile_for={t.name}: {name} does not fit: {message[:300]}; lower '
                      'config.batch_size or config.eval_batch_size, or config.device_data_mb '
                      'to stream the splits') from None
    # What a run on the target would meet too: the target's compiler refuses the program.
    hint = ''
    if "Couldn't find output tile sizes" in message:  # XLA's Triton GEMM tiling (this jaxlib).
      hint = '; XLA_FLAGS=--xla_gpu_enable_triton_gemm=false compiles it'
    raise UserError(f'--compile_for={t.name}: {name} does not compile for {t.description} '
                    f'({type(e).__name__}: {message[:300]}){hint}') from None
  stats = compiled.memory_analysis()
  arguments = int(stats.argument_size_in_bytes)
  outputs = int(stats.output_size_in_bytes)
  peak = int(getattr(stats, 'peak_memory_in_bytes', 0) or 0)
  # Where XLA gives no peak: everything live at once, less the outputs that reuse inputs.
  peak = peak or arguments + outputs + int(stats.temp_size_in_bytes) - int(
      stats.alias_size_in_bytes)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  program = Program(name, arguments, outputs, peak, resident_bytes,
                    float(cost['flops']) if cost and 'flops' in cost else None,
                    float(cost.get('bytes accessed', 0)) if cost else None, calls, steps,
                    round(time.perf_counter() - start, 2), data_bytes)
  if peak + resident_bytes > t.hbm:
    raise UserError(
        f'--compile_for={t.name}: {name} needs {_mib(peak + resident_bytes)} per device '
        f'({_mib(peak)} peak + {_mib(resident_bytes)} of splits kept on the device), over the '
        f'{_mib(t.hbm)} of HBM of a {t.description} device; lower config.batch_size or '
        'config.eval_batch_size, or config.device_data_mb to stream the splits')
  _SESSION.programs.append(program)
  return program


def _mib(n: float) -> str:
  if n < 2**20:
    return f'{n / 1024:,.1f} KiB'
  return f'{n / 2**20:,.1f} MiB' if n < _GIB else f'{n / _GIB:,.2f} GiB'


def _fmt_seconds(s: float | None) -> str:
  if s is None:
    return 'n/a'
  for unit, scale in (('s', 1), ('ms', 1e-3), ('µs', 1e-6)):
    if s >= scale:
      return f'{s / scale:.3g} {unit}'
  return f'{s * 1e9:.3g} ns'


def report(t: Target, dtype: str, programs: list[Program]) -> dict[str, Any]:
  """What `--compile_for` found: per program and for the whole run, per device.

  Returns:
    A JSON-able dict: the target and its figures, each program, the largest
    memory need, the roofline bound of a training step and of the whole run.
  """
  bounds = [p.seconds(t, dtype) for p in programs]
  return {
      'target': t.name,
      'description': t.description,
      'compute_dtype': dtype,
      'hbm_bytes': t.hbm,
      'peak_flops': t.peak_flops if dtype == 'bfloat16' else t.f32_flops,
      'hbm_bandwidth': t.hbm_bandwidth,
      'figures_from': t.source,
      'devices': parallel.device_count(),
      'processes': parallel.process_count(),
      'programs': [{**dataclasses.asdict(p), 'seconds_bound': b} for p, b in zip(programs, bounds)],
      'max_bytes_per_device': max(p.peak_bytes + p.resident_bytes for p in programs),
      **bounds_of_run(t, dtype, programs),
  }


def bounds_of_run(t: Target, dtype: str, programs: list[Program]) -> dict[str, float | None]:
  """A training step's FLOPs and roofline bound, and the bound on all the run's calls.

  Returns:
    {'step_flops', 'step_seconds_bound', 'run_seconds_bound'}: None where unknown.
  """
  bounds = [p.seconds(t, dtype) for p in programs]
  step = next((p for p in programs if p.steps == 1), None)
  return {
      'step_flops': step.flops if step else None,
      'step_seconds_bound': step.seconds(t, dtype) if step else None,
      # Training calls of several steps are counted by their one-step program.
      'run_seconds_bound': sum(b * p.calls for p, b in zip(programs, bounds) if p.steps <= 1)
                           if all(b is not None for b in bounds) else None,
  }


def summary(result: dict[str, Any]) -> str:
  """The report as a table for the terminal."""
  hbm = result['hbm_bytes']
  lines = [
      f"compiled for {result['target']} ({result['description']}; {result['devices']} devices, "
      f"{result['processes']} process{'es' * (result['processes'] > 1)}), "
      f"{result['compute_dtype']}: nothing ran. Per device: "
      f"{_mib(hbm)} HBM, {result['peak_flops'] / 1e12:.4g} TFLOP/s, "
      f"{result['hbm_bandwidth'] / 1e9:.4g} GB/s ({result['figures_from']})",
      f"{'program':<44} {'arguments':>11} {'outputs':>11} {'peak':>11} {'+ resident':>11} "
      f"{'of HBM':>7} {'GFLOP':>9} {'MB accessed':>12} {'roofline':>9} {'calls':>7}"
  ]
  for p in result['programs']:
    lines.append(
        f"{p['name']:<44} {_mib(p['argument_bytes']):>11} {_mib(p['output_bytes']):>11} "
        f"{_mib(p['peak_bytes']):>11} {_mib(p['resident_bytes']):>11} "
        f"{(p['peak_bytes'] + p['resident_bytes']) / hbm:>7.1%} "
        f"{'n/a' if p['flops'] is None else format(p['flops'] / 1e9, '.4g'):>9} "
        f"{'n/a' if p['bytes_accessed'] is None else format(p['bytes_accessed'] / 1e6, '.4g'):>12} "
        f"{_fmt_seconds(p['seconds_bound']):>9} {p['calls']:>7,}")
  lines.append(f"largest need {_mib(result['max_bytes_per_device'])} per device "
               f"({result['max_bytes_per_device'] / hbm:.1%} of HBM); roofline bound: "
               f"{_fmt_seconds(result['step_seconds_bound'])} a training step, "
               f"{_fmt_seconds(result['run_seconds_bound'])} the whole run's programs")
  return '\n'.join(lines)


def write(workdir: str, result: dict[str, Any]) -> str:
  """Writes the report as workdir/compile_TARGET_DTYPE.json; returns its path."""
  path = os.path.join(workdir, f"compile_{result['target']}_{result['compute_dtype']}.json")
  with open(path + '.tmp', 'w') as f:
    json.dump(result, f, indent=1, default=lambda v: None
              if isinstance(v, float) and math.isnan(v) else str(v))
  os.replace(path + '.tmp', path)
  return path
