"""The caching note, measured: one epoch fed by tf.data without .cache(), with .cache(), and from the devices.

  python -m benchmarks.caching --workload=mlp --manual_dir=../shared/data/fashion_mnist
  python -m benchmarks.caching --workload=cnn --manual_dir=../shared/data/mnist

Each source feeds the engine's own train step (lib.train.TrainSteps, as
lib.train.fit runs it) for one epoch of the workload's config, after a warm-up
epoch (which compiles, and fills tf.data's cache); each epoch ends when its
last step's loss is on the host. The sources:
  - 'tf.data, no cache': TFDS's records read, decoded, shuffled and batched anew each epoch;
  - 'tf.data, .cache()': decoded examples cached in memory after the first epoch
    (lib.input_pipeline.streaming, what a split over config.device_data_mb uses);
  - 'on the devices': the split as uint8 arrays on the devices, each batch
    gathered in the step (lib.input_pipeline, the default).
Prints one JSON line with each source's epoch seconds and their ratios to the device's.
"""
import json
import os
import time

from lib import cpu

CPU_SETTINGS = cpu.configure()  # As the launcher does, before JAX, TF or numpy start.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import numpy as np

from configs import fashion_mlp, mnist_cnn
from lib import input_pipeline, models, parallel, tasks, train
from lib.input_pipeline import streaming, tfds_builders

CONFIGS = {'mlp': fashion_mlp.get_config, 'cnn': mnist_cnn.get_config}
_WORKLOAD = flags.DEFINE_enum('workload', 'mlp', list(CONFIGS), 'The config to train.')
_MANUAL_DIR = flags.DEFINE_string('manual_dir', None, 'The dataset\'s original files.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data_dir.')
flags.mark_flags_as_required(['manual_dir'])


def _uncached(config, builder) -> streaming.StreamSplit:
  """The training split as TFDS's records, read and decoded anew each pass (no .cache())."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ds = builder.as_dataset(split=config.train_split, shuffle_files=False).map(
      lambda ex: {'x': ex['image'], 'y': tf.cast(ex['label'], tf.int32)},
      num_parallel_calls=tf.data.AUTOTUNE)
  n = builder.info.splits[config.train_split].num_examples
  return streaming.StreamSplit(ds, n, n, n)


def main(argv):
  del argv
  config = CONFIGS[_WORKLOAD.value]()
  config.update(manual_dir=_MANUAL_DIR.value, data_dir=_DATA_DIR.value)
  data = input_pipeline.image_classification(config)  # On the devices (and cached as arrays).
  builder = tfds_builders.builder(config)
  config.device_data_mb = 0
  cached = input_pipeline.image_classification(config)  # tf.data with .cache().
  preprocess = data.train.preprocess
  sources = {
      'tf.data, no cache': input_pipeline.from_stream(_uncached(config, builder), preprocess),
      'tf.data, .cache()': cached.train,
      'on the devices': data.train,
  }
  model = models.create(config.model, outputs=10, **config.model_kwargs)
  mesh = parallel.make_mesh()
  steps_per_epoch, _ = train.epochs_to_steps(config, data.train.num_examples)
  per_call = train.steps_per_call(config, steps_per_epoch)
  stacked = per_call > 1
  sharding = parallel.stacked_batch_sharding(mesh) if stacked else parallel.batch_sharding(mesh)
  tx = train.create_optimizer(config, train.learning_rate_schedule(config, 10**6, 1))
  seconds = {}
  for name, split in sources.items():
    state = train.create_train_state(config, model, (28, 28, 1), np.float32, tx,
                                     parallel.replicated(mesh))
    steps = train.TrainSteps(tasks.classification, train.metrics_collection(['accuracy', 'loss']),
                             mesh, (), preprocess, input_pipeline.augmentation(None), per_call)
    feed = split.train_feed(config.batch_size, seed=0, shuffle_buffer=config.shuffle_buffer,
                            stack=per_call if stacked else 0)
    times = []
    for _ in range(2):  # The warm-up epoch, then the timed one.
      start, pending = time.perf_counter(), None
      for _ in range(steps_per_epoch // per_call):
        state, metrics = steps(state, feed.data, feed.next(per_call, sharding), 0, per_call)
        if pending is not None:  # As lib.train.fit: the loss read one call late.
          np.asarray(pending)
        pending = metrics.loss.total
      np.asarray(pending)
      times.append(time.perf_counter() - start)
    seconds[name] = round(times[1], 2)
    print(f'{name}: first epoch {times[0]:.2f} s, next {times[1]:.2f} s', flush=True)
  device = seconds['on the devices']
  print(
      json.dumps({
          'workload': _WORKLOAD.value, 'steps_per_epoch': steps_per_epoch,
          'batch': config.batch_size, 'epoch_seconds': seconds, 'vs_on_the_devices': {
              k: round(v / device, 2) for k, v in seconds.items()
          }, 'device': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
          'cpu_settings': CPU_SETTINGS
      }))


if __name__ == '__main__':
  app.run(main)
