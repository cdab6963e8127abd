"""The MNIST CNN's training step in jaxnotes, in Keras 3 (TensorFlow) and in PyTorch (CPU), side by side.

  pip install torch==2.13.0   # CPU build; benchmark-only, not in requirements.txt
  python -m benchmarks.frameworks

The same network (the Flax MNIST example's CNN: conv 32 → avg-pool → conv 64 →
avg-pool → dense 256 → dense 10, 824,458 params), batch 128, SGD 0.1 with
momentum 0.9, on one device-resident random batch. jaxnotes runs with the
launcher's choice (`conv='auto'`: on one CPU device with lib.cpu's settings,
lib.cpu.conv_kernel's fused first block and weight-gradient kernel beside XLA's
convolutions), with XLA's convolutions alone (`conv='xla'`, flax.linen.Conv's)
and with lib.cpu.conv's im2col.

lib.cpu.configure (malloc reuses freed memory; YNNPACK's convolutions off) is
process-wide and helps or hurts each framework differently, so every framework
runs in a fresh process twice per round, with those settings and as installed
(JAXNOTES_CPU_DEFAULTS=0), the rounds interleaved so that a VM's drift hits all
alike. A figure is the median examples/s of 5 timed blocks of at least
--block_seconds after warm-up, then the median over rounds. The ratio, per round
and then its median, is jaxnotes as the launcher runs it over the fastest other
framework at that framework's better setting.
Prints one JSON line.
"""
import functools
import json
import os
import statistics
import subprocess
import sys

from lib import input_pipeline, cpu

_ENVIRON = dict(os.environ)  # As started: each child applies its own settings, or none.
CPU_SETTINGS = cpu.configure()  # Before JAX, TF, torch or numpy start.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import numpy as np

from configs import mnist_cnn
from benchmarks import timing
from lib.cpu import conv as conv_lib
from lib import models, parallel, tasks, train

_BLOCK_SECONDS = flags.DEFINE_float('block_seconds', 3.0, 'Least length of a timed block.')
_ROUNDS = flags.DEFINE_integer('rounds', 2, 'Rounds of fresh processes per framework and setting.')
_ONE = flags.DEFINE_string(
    'one', None, 'Time this framework in this process and print its '
    'rate (what each child process does).')
BATCH = 128


def jaxnotes_step(x: np.ndarray, y: np.ndarray, conv: str):
  """The engine's train step, built as lib.train.fit builds it; returns a blocking step().

  `conv` is the convolution, a key of lib.cpu.conv.IMPLEMENTATIONS, used where the step is traced.
  """
  config = mnist_cnn.get_config()
  model = models.create(config.model, outputs=10, **config.model_kwargs)
  mesh = parallel.make_mesh()
  tx = train.create_optimizer(config, train.learning_rate_schedule(config, 10**6, 1))
  holder = {
      'state': train.create_train_state(config, model, (28, 28, 1), np.float32, tx,
                                        parallel.replicated(mesh))
  }
  # The engine's step as lib.train.fit runs it, gathering the batch on the device.
  step = train.TrainSteps(tasks.classification, train.metrics_collection(['accuracy', 'loss']),
                          mesh, (), lambda b: b, input_pipeline.augmentation(None), 1)
  data = input_pipeline.from_arrays({'x': x, 'y': y}).device_data()
  inputs = {
      'idx': jax.device_put(np.arange(len(x), dtype=np.int32)[None], parallel.replicated(mesh)),
      'first': jax.device_put(np.int32(0), parallel.replicated(mesh))
  }

  def run():
    holder['state'], m = step(holder['state'], data, inputs)
    jax.block_until_ready(m)

  with conv_lib.implementation(conv):  # The step is traced, and so compiled, here.
    run()
  return run


def keras_step(x: np.ndarray, y: np.ndarray):
  """Keras 3 on TensorFlow: the same CNN, `train_on_batch` (a compiled tf.function step)."""
  import keras  # pylint: disable=g-import-not-at-top
  layers = keras.layers
  model = keras.Sequential([
      keras.Input((28, 28, 1)),
      layers.Conv2D(32, 3, padding='same', activation='relu'),
      layers.AveragePooling2D(2),
      layers.Conv2D(64, 3, padding='same', activation='relu'),
      layers.AveragePooling2D(2),
      layers.Flatten(),
      layers.Dense(256, activation='relu'),
      layers.Dense(10)
  ])
  model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  assert model.count_params() == 824_458
  return lambda: model.train_on_batch(x, y)


def torch_step(x: np.ndarray, y: np.ndarray):
  """PyTorch eager on CPU: the same CNN (NCHW), SGD with momentum."""
  import torch  # pylint: disable=g-import-not-at-top
  nn = torch.nn
  model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(64 * 7 * 7, 256), nn.ReLU(), nn.Linear(256, 10))
  assert sum(p.numel() for p in model.parameters()) == 824_458
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
  images = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  labels = torch.from_numpy(y.astype(np.int64))
  loss_fn = nn.CrossEntropyLoss()

  def run():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(images), labels)
    loss.backward()
    opt.step()

  return run


# In the order each round runs them: jaxnotes next to what it is compared with.
STEPS = {
    'jaxnotes': functools.partial(jaxnotes_step, conv='auto'),
    'keras_tensorflow': keras_step, 'pytorch': torch_step, 'jaxnotes_xla_conv': functools.partial(
        jaxnotes_step, conv='xla'), 'jaxnotes_im2col_conv': functools.partial(
            jaxnotes_step, conv='im2col')
}


def _time_one(name: str) -> dict:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  rng = np.random.default_rng(0)
  x = rng.random((BATCH, 28, 28, 1), np.float32)
  y = rng.integers(0, 10, BATCH).astype(np.int32)
  step = STEPS[name](x, y)
  for _ in range(10):  # Warm-up.
    step()
  return {
      'examples_per_sec': timing.median_rate(step, BATCH, _BLOCK_SECONDS.value),
      'cpu_settings': CPU_SETTINGS
  }


def _child(name: str, configured: bool) -> float:
  env = {**_ENVIRON, 'JAXNOTES_CPU_DEFAULTS': '1' if configured else '0'}
  out = subprocess.run([
      sys.executable, '-m', 'benchmarks.frameworks', f'--one={name}',
      f'--block_seconds={_BLOCK_SECONDS.value}'
  ], env=env, check=True, capture_output=True, text=True).stdout
  result = json.loads(out.strip().splitlines()[-1])
  assert any(result['cpu_settings'].values()) == configured, result
  return result['examples_per_sec']


def main(argv):
  del argv
  if _ONE.value:
    print(json.dumps(_time_one(_ONE.value)))
    return
  runs = {(name, setting): [] for name in STEPS for setting in ('configured', 'as_installed')}
  for _ in range(_ROUNDS.value):
    for name, setting in runs:
      runs[name, setting].append(_child(name, setting == 'configured'))
  rates = {
      f'{name}/{setting}': round(statistics.median(r), 1) for (name, setting), r in runs.items()
  }
  # Per round, so that the VM's drift between rounds cancels: jaxnotes as the launcher runs
  # it over the fastest other framework at that framework's better setting.
  ratios = [
      runs['jaxnotes', 'configured'][i] / max(rate[i]
                                              for (name, _), rate in runs.items()
                                              if not name.startswith('jaxnotes'))
      for i in range(_ROUNDS.value)
  ]
  print(
      json.dumps({
          'examples_per_sec': rates, 'rounds': {
              f'{n}/{s}': [round(v) for v in r] for (n, s), r in runs.items()
          }, 'jaxnotes_vs_fastest_other': round(statistics.median(ratios), 3), 'ratio_per_round': [
              round(r, 3) for r in ratios
          ], 'batch': BATCH, 'device': f'{jax.device_count()} x {jax.devices()[0].device_kind}'
      }))


if __name__ == '__main__':
  app.run(main)
