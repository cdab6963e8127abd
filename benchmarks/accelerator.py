"""mnist_cnn and vae:latent20 on this machine's accelerator: whole runs, steps/s, epoch over steps.

  python -m benchmarks.accelerator --manual_dir=../shared/data/mnist

For each experiment, on the backend JAX finds (a GPU or TPU where there is one):
  - one untimed `:tiny` run that prepares the dataset and its array cache, so the timed
    run starts as a user's second run does;
  - the whole run as a user starts it, `python -m experiments --config=CONFIG`, in a fresh
    process and a new workdir, timed from start to exit; its steps/s is results.json's
    steps over that time (imports, compile, evaluation and plots included);
  - `benchmarks.throughput` on the same model, optimizer and batch: the step's time, and
    the epoch-over-steps ratio (one epoch through the input pipeline over as many steps on
    one device-resident batch; 1.00 means the data path costs nothing).
Prints a JSON line per experiment, then the results table's rows.
"""
import json
import os
import sys
import tempfile

from absl import app
from absl import flags

from benchmarks import processes

_MANUAL_DIR = flags.DEFINE_string('manual_dir', None, "MNIST's original files.", required=True)
_DATA_DIR = flags.DEFINE_string('data_dir', None, "TFDS data_dir (default: TFDS's).")
_NUM_EPOCHS = flags.DEFINE_integer('num_epochs', None,
                                   "Epochs of each run (default: the config's).")
_ROUNDS = flags.DEFINE_integer('rounds', 3, "benchmarks.throughput's rounds.")

# name: (config, benchmarks.throughput's workload, results.json's headline metric).
EXPERIMENTS = {
    'mnist_cnn': ('configs/mnist_cnn.py', 'cnn', 'test_accuracy'),
    'vae:latent20': ('configs/vae.py:latent20', 'vae', 'test_loss'),
}


def _fields() -> list[str]:
  fields = [f'manual_dir={_MANUAL_DIR.value}']
  if _DATA_DIR.value:
    fields.append(f'data_dir={_DATA_DIR.value}')
  return fields


def measure(name: str, tmp: str) -> dict[str, object]:
  """One experiment's whole run and its step's throughput, as the module's docstring says."""
  config, workload, metric = EXPERIMENTS[name]
  tiny = config.split(':')[0] + ':tiny'
  processes.run_process(processes.experiment(tiny, os.path.join(tmp, f'{name}-prepare'),
                                             *_fields()))
  workdir = os.path.join(tmp, name)
  fields = _fields() + ([f'num_epochs={_NUM_EPOCHS.value}'] if _NUM_EPOCHS.value else [])
  seconds, _ = processes.run_process(processes.experiment(config, workdir, *fields))
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  throughput = [
      sys.executable, '-m', 'benchmarks.throughput', f'--workload={workload}',
      f'--manual_dir={_MANUAL_DIR.value}', f'--rounds={_ROUNDS.value}'
  ] + ([f'--data_dir={_DATA_DIR.value}'] if _DATA_DIR.value else [])
  _, done = processes.run_process(throughput)
  step = json.loads(done.stdout.strip().splitlines()[-1])
  return {
      'experiment': name,
      'device': results['devices'],
      'epochs': results['epochs'],
      'metric': metric,
      'value': results[metric],
      'process_seconds': round(seconds, 1),
      'steps': results['steps'],
      'steps_per_sec': round(results['steps'] / seconds, 1),
      'step_ms': step['step_ms'],
      'epoch_over_steps': round(1 + step['pipeline_overhead'], 3),
  }


def main(argv):
  del argv
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for name in EXPERIMENTS:
      rows.append(measure(name, tmp))
      print(json.dumps(rows[-1]), flush=True)
  print('| experiment | device | epochs | metric | process | steps/s | step | epoch over steps |')
  print('|---|---|---|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['experiment']} | {r['device']} | {r['epochs']} | {r['metric']} {r['value']:.4f} | "
          f"{r['process_seconds']} s | {r['steps_per_sec']} | {r['step_ms']} ms | "
          f"{r['epoch_over_steps']} |")


if __name__ == '__main__':
  app.run(main)
