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
from lib.aot.targets import detect
from lib.aot.targets import devices
from lib.aot.targets import GIB
from lib.aot.targets import target
from lib.aot.targets import Target
from lib.aot.targets import TARGETS

__all__ = [
    'Compiled', 'GIB', 'Program', 'TARGETS', 'Target', 'abstract', 'active', 'after_training',
    'bounds_of_run', 'compile', 'compiling_for', 'detect', 'devices', 'nbytes', 'part', 'report',
    'summary', 'target', 'trained', 'write'
]


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
            data_bytes: int = 0, members: int = 1) -> Program:  # pylint: disable=redefined-builtin
  """Lowers the jitted `fn` on abstract `args` and compiles it for the session's target.

  Args:
    name: what the run uses it for.
    fn: a jax.jit function.
    *args: its arguments: ShapeDtypeStructs with shardings (and static values).
    resident_bytes: per device, what the run keeps on the devices beside this program's arguments.
    calls: calls in a whole run.
    steps: training steps per call.
    data_bytes: per device, the splits among `args` that it gathers batches from.
    members: the models of a population that it trains or evaluates at once.

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
    fix = ('lower config.batch_size or config.eval_batch_size, or config.device_data_mb to '
           'stream the splits')
    if members > 1:  # All but the splits grows with the members.
      shared = resident_bytes + data_bytes
      fits = max(0, int(members * (t.hbm - shared) // max(peak - data_bytes, 1)))
      fix = (f'at most {fits} of the population\'s {members} members fit (python -m '
             f'experiments.sweep --max_members={max(fits, 1)} trains them in groups), or ' + fix)
    raise UserError(
        f'--compile_for={t.name}: {name} needs {_mib(peak + resident_bytes)} per device '
        f'({_mib(peak)} peak + {_mib(resident_bytes)} of splits kept on the device), over the '
        f'{_mib(t.hbm)} of HBM of a {t.description} device; {fix}')
  _SESSION.programs.append(program)
  return program


def _mib(n: float) -> str:
  if n < 2**20:
    return f'{n / 1024:,.1f} KiB'
  return f'{n / 2**20:,.1f} MiB' if n < GIB else f'{n / GIB:,.2f} GiB'


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
