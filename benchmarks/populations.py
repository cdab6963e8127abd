"""A grid of learning rates x seeds as one population against the same points as single runs in a row.

  python -m benchmarks.populations [--model=cnn --model=mlp ...] [--seeds=3]

For each MNIST-1D model (configs/mnist1d.py, the paper's protocol: 6,000 steps), in
fresh processes and new workdirs:
  - the sweep: `python -m experiments.sweep --grid=learning_rate=... --grid=seed=...`,
    whose points differ only in carried fields and so train as one population;
  - the same points one after another: `python -m experiments --config.learning_rate=LR
    --config.seed=S` each, sharing one new compilation cache as a user's runs in a row do
    (the first compiles, the others load its programs).
Each is timed from start to exit. Prints the seconds both ways, the singles' sum over the
population's (how many times faster one program is), and the largest difference between a
point's test accuracy in the population and alone (a member ends as its run, to float
rounding; over 6,000 steps of Adam rounding may grow, so this is measured, not assumed).
"""
import json
import os
import sys
import tempfile

from absl import app
from absl import flags

from benchmarks import processes

_MODELS = flags.DEFINE_multi_enum('model', ['cnn'], ['logistic', 'mlp', 'cnn', 'gru'],
                                  'The MNIST-1D models to time.')
_RATES = flags.DEFINE_list('learning_rates',
                           ['0.001', '0.002', '0.003', '0.005', '0.01', '0.02', '0.03', '0.05'],
                           'The grid\'s learning rates.')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'The grid\'s seeds: 0 .. N-1.')


def _accuracy(path: str) -> float:
  with open(path) as f:
    return json.load(f)['val_accuracy']


def measure(model: str, tmp: str) -> dict[str, object]:
  """Times the population sweep and the single runs of one model; returns seconds and accuracies."""
  config = f'configs/mnist1d.py:{model}'
  rates, seeds = _RATES.value, list(range(_SEEDS.value))
  workdir = os.path.join(tmp, f'{model}-sweep')
  sweep = [
      sys.executable, '-m', 'experiments.sweep', f'--config={config}', f'--workdir={workdir}',
      f'--grid=learning_rate={",".join(rates)}', f'--grid=seed={",".join(map(str, seeds))}'
  ]
  population_s, done = processes.run_process(sweep)
  if 'as one population' not in done.stderr:
    raise RuntimeError(f'the sweep of {model} did not run as a population:\n{done.stderr[-2000:]}')
  cache = os.path.join(tmp, f'{model}-xla')
  singles_s, differences = [], []
  for rate in rates:
    for seed in seeds:
      name = f'learning_rate={rate},seed={seed}'
      single = os.path.join(tmp, f'{model}-single', name)
      seconds, _ = processes.run_process(
          processes.experiment(config, single, f'learning_rate={rate}', f'seed={seed}'), cache)
      singles_s.append(round(seconds, 2))
      differences.append(
          abs(
              _accuracy(os.path.join(single, 'results.json')) -
              _accuracy(os.path.join(workdir, name, 'results.json'))))
  print(
      f'{model}: {len(singles_s)} points as one population {population_s:.1f} s, one after '
      f'another {sum(singles_s):.1f} s', flush=True)
  return {
      'points': len(singles_s),
      'seconds': {'population': round(population_s, 2), 'singles': singles_s},
      'singles_over_population': round(sum(singles_s) / population_s, 2),
      'largest_accuracy_difference': max(differences),
      'points_that_differ': sum(d > 0 for d in differences),
  }


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    print(json.dumps({m: measure(m, tmp) for m in dict.fromkeys(_MODELS.value)}))


if __name__ == '__main__':
  app.run(main)
