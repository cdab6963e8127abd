"""Every config compiled for accelerators, on this CPU: docs/scaling.md's table and CI's check.

  python -m benchmarks.compiled --targets=v5e-8,h100 --data=../shared/data \
      [--dtypes=float32,bfloat16] [--paired] [--configs=mnist_cnn,vae:latent20] [--jobs=2]

Every target compiles in every dtype, or with --paired the i-th target in the i-th dtype only
(CI's check: `--targets=v5e-1,v5e-8 --dtypes=float32,bfloat16 --paired`, each config on one chip
and on a slice, in each dtype, at half the cost). Each (config, target, dtype) is what
`python -m experiments --config=... --workdir=... --compile_for=TARGET
--config.compute_dtype=DTYPE` does (experiments.__main__.compile_only),
run in worker processes that each take the next one when done, in a workdir of their own. The
datasets are built from `--data` (a folder per TFDS dataset: ../shared/data/mnist, ...) into
`--data_dir` as a first run would; no example is read. A config whose dataset is not in
`--data` is reported as skipped. Prints a JSON line per compile, then a Markdown table per
target: a row per config with its largest per-device need against the HBM, the FLOPs of a
training step and the roofline bounds on a step and on the whole run's programs. Where the
target's compiler gives no cost analysis (NVIDIA GPUs, this JAX), the FLOPs are those of the
same program compiled for one TPU v5e chip (`--cost_from`), at the GPU's peak: the model's
arithmetic does not depend on the chip.
Exits non-zero if any compile failed. Needs requirements-compile.txt.
"""
from collections.abc import Sequence
import glob
import importlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags

_TARGETS = flags.DEFINE_list('targets', ['v5e-1', 'v5e-8'], 'lib.aot.TARGETS names.')
_DTYPES = flags.DEFINE_list('dtypes', ['float32'], 'config.compute_dtype values.')
_PAIRED = flags.DEFINE_bool(
    'paired', False, 'Compile the i-th of --targets in the i-th of --dtypes only, not every '
    'target in every dtype.')
_CONFIGS = flags.DEFINE_list(
    'configs', None, 'NAME or NAME:VARIANT of configs/ (default: every config and variant).')
_DATA = flags.DEFINE_string('data', '../shared/data',
                            'A folder with a folder of original files per dataset.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data_dir to build the datasets in '
                                "(default: TFDS's).")
_JOBS = flags.DEFINE_integer('jobs', 2, 'Worker processes.')
_COST_FROM = flags.DEFINE_string(
    'cost_from', 'v5e-1', 'Target whose cost analysis stands in '
    "for a target that gives none ('' for none).")
_WORKER = flags.DEFINE_bool('worker', False, 'Compile the items given on stdin (internal).')


def every_config() -> list[str]:
  """NAME:VARIANT for every config of configs/ and every variant in its VARIANTS."""
  names = sorted(
      os.path.basename(p)[:-3]
      for p in glob.glob('configs/*.py')
      if os.path.basename(p) not in ('__init__.py', 'common.py'))
  specs = []
  for name in names:
    for variant in importlib.import_module(f'configs.{name}').VARIANTS:
      specs.append(f'{name}:{variant}' if variant else name)
  return specs


def _config(spec: str):
  name, _, variant = spec.partition(':')
  return importlib.import_module(f'configs.{name}').get_config(variant)


def _prepare_datasets(specs: Sequence[str]) -> None:
  """Builds each TFDS dataset the configs read, once, before the workers race to."""
  from lib.input_pipeline import tfds_builders  # pylint: disable=g-import-not-at-top
  seen = set()
  for spec in specs:
    config = _config(spec)
    manual_dir = os.path.join(_DATA.value, config.get('dataset', ''))
    if 'dataset' not in config or config.dataset in seen or not os.path.isdir(manual_dir):
      continue
    seen.add(config.dataset)
    config.update(manual_dir=manual_dir, data_dir=_DATA_DIR.value, download=False)
    tfds_builders.build(tfds_builders.builder(config), config)


def _compile_one(spec: str, target: str, dtype: str, root: str) -> dict:
  """One compile in this process, as `--compile_for` does it; a JSON-able record."""
  from experiments.__main__ import compile_only  # pylint: disable=g-import-not-at-top
  from lib.errors import UserError  # pylint: disable=g-import-not-at-top
  config = _config(spec)
  record = {'config': spec, 'target': target, 'dtype': dtype}
  if 'dataset' in config:
    manual_dir = os.path.join(_DATA.value, config.dataset)
    if not os.path.isdir(manual_dir):
      return {**record, 'status': 'skipped', 'why': f'no {manual_dir}'}
    config.update(manual_dir=manual_dir, data_dir=_DATA_DIR.value, download=False)
  if 'compute_dtype' in config:
    config.compute_dtype = dtype
  elif dtype != 'float32':
    return {**record, 'status': 'skipped', 'why': 'no compute_dtype field'}
  workdir = os.path.join(root, f"{spec.replace(':', '_')}-{target}-{dtype}")
  start = time.perf_counter()
  try:
    report = compile_only(config, workdir, target)
  except UserError as e:
    return {**record, 'status': 'failed', 'why': str(e), 'seconds': time.perf_counter() - start}
  keep = ('max_bytes_per_device', 'hbm_bytes', 'step_flops', 'step_seconds_bound',
          'run_seconds_bound', 'devices', 'processes')
  return {
      **record, 'status': 'ok', 'seconds': round(time.perf_counter() - start, 2),
      **{k: report[k] for k in keep}, 'programs':
          [{k: v for k, v in p.items() if k != 'seconds_bound'} for p in report['programs']]
  }


def _worker() -> None:
  """Compiles the items (JSON lines on stdin) one by one, a JSON line each on stdout."""
  with tempfile.TemporaryDirectory(prefix='jaxnotes_compiled_') as root:
    for line in iter(sys.stdin.readline, ''):
      spec, target, dtype = json.loads(line)
      print(json.dumps(_compile_one(spec, target, dtype, root)), flush=True)


def _run_workers(items: list[tuple[str, str, str]]) -> tuple[list[dict], list[str]]:
  """`items` over --jobs worker processes, each taking the next item when it is done."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '2'}
  todo, records, failed = queue.Queue(), [], []
  for item in items:
    todo.put(item)

  def drive(log):
    worker = subprocess.Popen([
        sys.executable, '-m', 'benchmarks.compiled', *sys.argv[1:], '--worker'
    ], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    while True:
      try:
        item = todo.get_nowait()
      except queue.Empty:
        break
      worker.stdin.write(json.dumps(item) + '\n')
      worker.stdin.flush()
      line = ''
      while not line.startswith('{'):
        line = worker.stdout.readline()
        if not line:  # The worker died.
          log.seek(0)
          failed.append(f'{item}: {log.read()[-3000:]}')
          return
      records.append(json.loads(line))
      print(json.dumps({k: v for k, v in records[-1].items() if k != 'programs'}), flush=True)
    worker.stdin.close()
    worker.wait()

  logs = [tempfile.TemporaryFile('w+') for _ in range(_JOBS.value)]  # A pipe would fill up.
  threads = [threading.Thread(target=drive, args=(log,)) for log in logs]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  return records, failed


def _with_cost_from(records: list[dict]) -> None:
  """Roofline bounds from a stand-in's FLOPs, for records whose target gave no cost analysis."""
  from lib import aot  # pylint: disable=g-import-not-at-top
  stand_in = {(r['config'], r['dtype']): r
              for r in records
              if r['target'] == _COST_FROM.value and r['status'] == 'ok'}
  for r in records:
    source = stand_in.get((r['config'], r['dtype']))
    if (r['status'] != 'ok' or source is None or
        any(p['flops'] is not None for p in r['programs'])):
      continue
    scale = source['devices'] / r['devices']
    programs = [
        aot.Program(**{**p, 'flops': q['flops'] * scale})
        for p, q in zip(r['programs'], source['programs'])
    ]
    r.update(aot.bounds_of_run(aot.TARGETS[r['target']], r['dtype'], programs),
             cost_from=_COST_FROM.value)


def _seconds(s: float | None) -> str:
  if s is None:
    return 'n/a'
  return f'{s:.3g} s' if s >= 1 else f'{s * 1e3:.3g} ms' if s >= 1e-3 else f'{s * 1e6:.3g} µs'


def table(records: Sequence[dict], target: str) -> str:
  """docs/scaling.md's table for `target`: a row per (config, dtype)."""
  lines = [
      '| config | dtype | compiles | largest need per device (of HBM) | GFLOP a step | step bound | run bound |',
      '|---|---|---|---|---|---|---|'
  ]
  for r in records:
    if r['target'] != target:
      continue
    if r['status'] != 'ok':
      lines.append(f"| `{r['config']}` | {r['dtype']} | {r['status']}: {r['why'][:120]} | | | | |")
      continue
    flops = 'n/a' if r['step_flops'] is None else f"{r['step_flops'] / 1e9:.3g}"
    flops += ' *' if r.get('cost_from') else ''
    lines.append(
        f"| `{r['config']}` | {r['dtype']} | yes ({r['seconds']:.1f} s) | "
        f"{r['max_bytes_per_device'] / 2**20:,.1f} MiB ({r['max_bytes_per_device'] / r['hbm_bytes']:.2%}) | "
        f"{flops} | {_seconds(r['step_seconds_bound'])} | {_seconds(r['run_seconds_bound'])} |")
  return '\n'.join(lines)


def main(argv: Sequence[str]) -> None:
  del argv
  if _WORKER.value:
    _worker()
    return
  specs = _CONFIGS.value or every_config()
  if _PAIRED.value and len(_TARGETS.value) != len(_DTYPES.value):
    raise app.UsageError(f'--paired needs as many --dtypes as --targets, not '
                         f'{len(_DTYPES.value)} for {len(_TARGETS.value)}')
  pairs = (list(zip(_TARGETS.value, _DTYPES.value))
           if _PAIRED.value else [(t, d) for d in _DTYPES.value for t in _TARGETS.value])
  # A GPU's roofline takes its FLOPs from the stand-in's compile in the same dtype.
  for t, d in list(pairs):
    if t in ('a100', 'h100', 'h100x8') and _COST_FROM.value and (_COST_FROM.value, d) not in pairs:
      pairs.append((_COST_FROM.value, d))
  items = [(s, t, d) for s in specs for t, d in pairs]
  _prepare_datasets(specs)
  start = time.perf_counter()
  records, failed_workers = _run_workers(items)
  _with_cost_from(records)
  order = {item: i for i, item in enumerate(items)}
  records.sort(key=lambda r: order[(r['config'], r['target'], r['dtype'])])
  for target in _TARGETS.value:
    print(f'\n{target}:\n{table(records, target)}')
  bad = [r for r in records if r['status'] == 'failed']
  print(f'\n{len(records)} compiles in {time.perf_counter() - start:.0f} s with {_JOBS.value} '
        f"workers: {sum(r['status'] == 'ok' for r in records)} ok, {len(bad)} failed, "
        f"{sum(r['status'] == 'skipped' for r in records)} skipped")
  if bad or failed_workers or len(records) != len(items):
    sys.exit('\n'.join([
        'failed:', *(f"{r['config']} {r['target']} {r['dtype']}: {r['why']}" for r in bad),
        *failed_workers
    ]))


if __name__ == '__main__':
  app.run(main)
