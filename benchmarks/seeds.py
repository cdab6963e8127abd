"""Many seeds in one program against the same seeds run one after another, as whole processes.

  python -m benchmarks.seeds --mnist_dir=../shared/data/mnist \
      --fashion_dir=../shared/data/fashion_mnist

For each workload, in fresh processes and new workdirs (the datasets already prepared):
  - one population: `python -m experiments --config=CONFIG --config.num_seeds=N`;
  - N single runs one after the other: the same command with `--config.seed=k`, k = 0..N-1;
each timed from start to exit. The single runs share one new compilation cache, as a user's
runs in a row do (the first compiles, the others load its programs); the population compiles
in a cache of its own. Prints the wall times, the singles' sum over the population's
(how many times faster one program is), the population's over one single run's (the median),
and the workload's metric over the seeds both ways as mean ± std. Seed k of a population
trains as its own single run (tested to 1e-5), but a population's best epoch and early
stopping follow the mean over its models, so where a config restores the best epoch
(forecast) each seed may end on another epoch than alone: the two agree within the seeds'
spread, not exactly.

Workloads: `fashion_mlp` (5 epochs, test accuracy), `forecast_rnn` (configs/forecast.py:rnn,
validation MAE) and `vae20` (configs/vae.py:latent20 cut to --vae_epochs epochs, test
negative ELBO; the full 100 epochs take about 4.5 minutes a seed on 2 cores).
"""
import json
import os
import statistics
import tempfile

from absl import app
from absl import flags

from benchmarks import processes

_SEEDS = flags.DEFINE_integer('seeds', 5, 'N: models in the population, single runs in a row.')
_MNIST_DIR = flags.DEFINE_string('mnist_dir', None, "MNIST's original files (for vae20).")
_FASHION_DIR = flags.DEFINE_string('fashion_dir', None,
                                   "Fashion-MNIST's original files (for fashion_mlp).")
_VAE_EPOCHS = flags.DEFINE_integer('vae_epochs', 10, 'Epochs of the vae20 runs.')

# name: (config, the flag that names its dataset's files or None, the metric compared).
WORKLOADS = {
    'fashion_mlp': ('configs/fashion_mlp.py', _FASHION_DIR, 'test_accuracy'),
    'forecast_rnn': ('configs/forecast.py:rnn', None, 'val_mae'),
    'vae20': ('configs/vae.py:latent20', _MNIST_DIR, 'test_loss'),
}
_ONLY = flags.DEFINE_multi_enum('workload', list(WORKLOADS), list(WORKLOADS),
                                'The workloads to time.')


def _command(name: str, workdir: str, field: str) -> list[str]:
  config, data_dir, _ = WORKLOADS[name]
  fields = [field]
  if data_dir is not None:
    fields.append(f'manual_dir={data_dir.value}')
  if name == 'vae20':
    fields.append(f'num_epochs={_VAE_EPOCHS.value}')
  return processes.experiment(config, workdir, *fields)


def _spread(values: list[float]) -> dict[str, float]:
  return {'mean': statistics.mean(values), 'std': statistics.stdev(values)}


def _results(workdir: str) -> dict[str, object]:
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


def measure(name: str, tmp: str) -> dict[str, object]:
  """Times one population and its seeds' single runs; returns their seconds and metrics."""
  metric, n = WORKLOADS[name][2], _SEEDS.value
  workdir = os.path.join(tmp, f'{name}-population')
  population_s, _ = processes.run_process(_command(name, workdir, f'num_seeds={n}'))
  population = _results(workdir)['members'][metric]
  singles, singles_s = [], []
  # The runs in a row share a compilation cache, as a user's do: the first one compiles.
  cache = os.path.join(tmp, f'{name}-xla')
  for k in range(n):
    workdir = os.path.join(tmp, f'{name}-seed{k}')
    seconds, _ = processes.run_process(_command(name, workdir, f'seed={k}'), cache)
    singles_s.append(round(seconds, 2))
    singles.append(_results(workdir)[metric])
  print(
      f'{name}: {n} seeds in one program {population_s:.1f} s, one after another '
      f'{sum(singles_s):.1f} s', flush=True)
  return {
      'seconds': {'population': round(population_s, 2), 'singles': singles_s},
      # How many times faster one program is than the runs in a row, and how many single
      # runs' time (their median) the population takes.
      'singles_over_population': round(sum(singles_s) / population_s, 2),
      'population_over_one_run': round(population_s / statistics.median(singles_s), 2),
      metric: {'population': _spread(population), 'singles': _spread(singles)},
      'largest_seed_difference': max(abs(a - b) for a, b in zip(population, singles)),
  }


def main(argv):
  del argv
  names = list(dict.fromkeys(_ONLY.value))
  for name in names:
    data_dir = WORKLOADS[name][1]
    if data_dir is not None and not data_dir.value:
      raise app.UsageError(
          f'--{data_dir.name} (the dataset\'s original files) is needed for {name}')
  if _SEEDS.value < 2:
    raise app.UsageError(f'--seeds={_SEEDS.value}: at least 2 (a spread needs two)')
  with tempfile.TemporaryDirectory() as tmp:
    print(json.dumps({name: measure(name, tmp) for name in names}))


if __name__ == '__main__':
  app.run(main)
