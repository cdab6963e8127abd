"""Whole runs as a user starts them: jaxnotes' command against the Keras notebook of the same experiment.

  python -m benchmarks.whole_runs --manual_dir=../shared/data/fashion_mnist --rounds=3

Each round starts, one after the other, a fresh process for each of
  - jaxnotes: `python -m experiments --config=configs/NAME.py --workdir=NEW_DIR`
    (a new workdir, so it trains from scratch; the dataset already prepared) with an
    empty compilation cache, as a first run;
  - jaxnotes_cached: the same in another new workdir, with the compilation cache
    that an untimed run of the same command filled before the rounds, as every
    later run of a config (lib/compilation_cache.py);
  - Keras: the course notebook's cells as one script, `fit(..., verbose=False)`
    where the notebook does, run by this module's --keras=NAME;
and times it from start to exit (imports, data, compile, training, evaluation,
plots, results). Rounds interleave the three, so a noisy machine slows all
alike. Prints each process's seconds and, per experiment, the medians and
the ratios (Keras / jaxnotes: how many times faster jaxnotes is) as JSON.

The notebooks (Udacity's Intro to TensorFlow):
  - celsius, l02c01: Dense(1), Adam(0.1), 500 epochs over the 7 pairs.
  - fashion_mlp, l03c01: tfds.load('fashion_mnist') → map(normalize) → cache →
    repeat → shuffle(60000) → batch(32); Flatten → Dense(128, relu) → Dense(10,
    softmax); Adam; 5 epochs of ceil(60000/32) steps; evaluate on the test split.
"""
import json
import os
import statistics
import sys
import tempfile

from absl import app
from absl import flags

from benchmarks import processes

EXPERIMENTS = ('celsius', 'fashion_mlp')
_ONLY = flags.DEFINE_multi_enum('experiment', list(EXPERIMENTS), EXPERIMENTS,
                                'The experiments to time.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Interleaved rounds; the medians are over them.')
_MANUAL_DIR = flags.DEFINE_string('manual_dir', None,
                                  "Fashion-MNIST's original files (for fashion_mlp).")
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data_dir (default: TFDS\'s).')
_KERAS = flags.DEFINE_enum(
    'keras', None, EXPERIMENTS,
    'Run this experiment\'s Keras notebook in this process (used by the '
    'benchmark itself).')


def keras_celsius() -> str:
  """Udacity l02c01 as the notebook runs it; returns the learned line."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  celsius_q = np.array([-40, -10, 0, 8, 15, 22, 38], dtype=float)
  fahrenheit_a = np.array([-40, 14, 32, 46, 59, 72, 100], dtype=float)
  l0 = tf.keras.layers.Dense(units=1)
  model = tf.keras.Sequential([tf.keras.Input((1,)), l0])
  model.compile(loss='mean_squared_error', optimizer=tf.keras.optimizers.Adam(0.1))
  model.fit(celsius_q, fahrenheit_a, epochs=500, verbose=False)
  w, b = l0.get_weights()
  return f'f = {float(w[0, 0]):.4f} c + {float(b[0]):.3f}; 100 C -> {model.predict(np.array([100.0]), verbose=0)[0, 0]:.2f} F'


def keras_fashion_mlp(data_dir: str | None) -> str:
  """Udacity l03c01 as the notebook runs it; returns its test accuracy."""
  import math  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  dataset, metadata = tfds.load('fashion_mnist', as_supervised=True, with_info=True,
                                data_dir=data_dir, download=False)
  train_dataset, test_dataset = dataset['train'], dataset['test']
  num_train_examples = metadata.splits['train'].num_examples
  num_test_examples = metadata.splits['test'].num_examples

  def normalize(images, labels):
    return tf.cast(images, tf.float32) / 255, labels

  train_dataset = train_dataset.map(normalize).cache()
  test_dataset = test_dataset.map(normalize).cache()
  model = tf.keras.Sequential([
      tf.keras.Input((28, 28, 1)),
      tf.keras.layers.Flatten(),
      tf.keras.layers.Dense(128, activation=tf.nn.relu),
      tf.keras.layers.Dense(10, activation=tf.nn.softmax),
  ])
  model.compile(optimizer='adam', loss=tf.keras.losses.SparseCategoricalCrossentropy(),
                metrics=['accuracy'])
  batch_size = 32
  train_dataset = train_dataset.cache().repeat().shuffle(num_train_examples).batch(batch_size)
  test_dataset = test_dataset.cache().batch(batch_size)
  model.fit(train_dataset, epochs=5, steps_per_epoch=math.ceil(num_train_examples / batch_size),
            verbose=2)
  _, accuracy = model.evaluate(test_dataset, steps=math.ceil(num_test_examples / batch_size),
                               verbose=0)
  return f'test accuracy {accuracy:.4f}'


def _commands(name: str, workdir: str) -> dict[str, list[str]]:
  fields, keras = [], [sys.executable, '-m', 'benchmarks.whole_runs', f'--keras={name}']
  if _DATA_DIR.value:
    fields.append(f'data_dir={_DATA_DIR.value}')
    keras.append(f'--data_dir={_DATA_DIR.value}')
  if name == 'fashion_mlp':
    fields.append(f'manual_dir={_MANUAL_DIR.value}')
  jaxnotes = processes.experiment(f'configs/{name}.py', workdir, *fields)
  return {'jaxnotes': jaxnotes, 'keras': keras}


def _time(command: list[str], cache: str | None = None) -> tuple[float, str]:
  """Seconds from start to exit, and the line that gives the run's result."""
  seconds, done = processes.run_process(command, cache)
  return seconds, _result(done.stdout, done.stderr)


def _result(stdout: str, stderr: str) -> str:
  """The run's result: the Keras script's printed line, or the launcher's headline."""
  if stdout.strip():
    return stdout.strip().splitlines()[-1]
  lines = [line.split('] ', 1)[-1] for line in stderr.strip().splitlines()]
  if len(lines) > 1 and lines[-1].startswith('done:'):  # The headline comes just before it.
    return lines[-2]
  return lines[-1] if lines else ''


def main(argv):
  del argv
  if _KERAS.value:
    print(keras_celsius() if _KERAS.value == 'celsius' else keras_fashion_mlp(_DATA_DIR.value))
    return
  names = list(dict.fromkeys(_ONLY.value))
  if 'fashion_mlp' in names and not _MANUAL_DIR.value:
    raise app.UsageError('--manual_dir (Fashion-MNIST\'s files) is needed for fashion_mlp')
  seconds = {name: {'jaxnotes': [], 'jaxnotes_cached': [], 'keras': []} for name in names}
  with tempfile.TemporaryDirectory() as tmp:
    caches = {name: os.path.join(tmp, f'{name}-xla') for name in names}
    for name in names:  # Untimed: fills the compilation cache of the cached runs.
      _time(_commands(name, os.path.join(tmp, f'{name}-fill'))['jaxnotes'], caches[name])
    for r in range(_ROUNDS.value):
      for name in names:
        commands = _commands(name, os.path.join(tmp, f'{name}-{r}'))
        commands['jaxnotes_cached'] = _commands(name,
                                                os.path.join(tmp, f'{name}-{r}-cached'))['jaxnotes']
        for who in seconds[name]:
          s, last = _time(commands[who], caches[name] if who == 'jaxnotes_cached' else None)
          seconds[name][who].append(round(s, 2))
          print(f'round {r}: {name} {who}: {s:.1f} s ({last.strip()[:160]})', flush=True)
  summary = {}
  for name, runs in seconds.items():
    med = {who: statistics.median(v) for who, v in runs.items()}
    summary[name] = {
        'seconds': runs, 'median_seconds': med, 'keras_over_jaxnotes': round(
            med['keras'] / med['jaxnotes'], 2), 'keras_over_jaxnotes_cached': round(
                med['keras'] / med['jaxnotes_cached'], 2)
    }
  print(json.dumps(summary))


if __name__ == '__main__':
  app.run(main)
