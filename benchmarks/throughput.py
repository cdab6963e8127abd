"""Training throughput of the engine's own jitted train step, beside a bare jitted Flax step.

  python -m benchmarks.throughput --workload=cnn
  python -m benchmarks.throughput --workload=mlp --manual_dir=../shared/data/fashion_mnist
  python -m benchmarks.throughput --workload=vae --manual_dir=../shared/data/mnist
  python -m benchmarks.throughput --workload=rnn
  python -m benchmarks.throughput --workload=autoencoder --manual_dir=../shared/data/mnist

Prints one JSON line: workload, batch, steps_per_execution, examples_per_sec,
step_ms, compile_s, params, the bare Flax step's examples/s and the ratio. Each figure is the
median of 5 timed blocks of at least --block_seconds after warm-up, on the
same device-resident batch. With --manual_dir it also times --rounds epochs of
the real input pipeline feeding the same step, each interleaved chunk by chunk
with as many steps on the device-resident batch (`pipeline_overhead`: the
median over rounds of the epoch's time over those steps' time, minus 1). The process runs with
the launcher's CPU settings (lib.cpu.configure); JAXNOTES_CPU_DEFAULTS=0 times
XLA:CPU and malloc as installed.
"""
import json
import os
import statistics
import time

from lib import cpu

CPU_SETTINGS = cpu.configure()  # As the launcher does, before JAX, TF or numpy start.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import dataclasses
from typing import Any, Callable

from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import autoencoder, fashion_mlp, forecast, mnist_cnn, vae
from benchmarks import timing
from experiments import autoencoder as autoencoder_experiment
from experiments import vae as vae_experiment
from lib import input_pipeline, models, parallel, tasks, train
from lib.cpu import conv as cpu_conv


def _classification_loss(apply, params, x, y, key):
  """The Flax MNIST example's loss."""
  del key
  logits = apply({'params': params}, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _huber_loss(apply, params, x, y, key):
  """The course's forecaster loss: Huber (delta 1) on the next value."""
  del key
  return optax.huber_loss(apply({'params': params}, x)[:, 0], y).mean()


def _vae_loss(apply, params, x, y, key):
  """The Flax VAE example's loss: Bernoulli cross-entropy + KL, summed per image, batch mean."""
  del y
  out = apply({'params': params}, x, rngs={'sample': key})
  bce = optax.sigmoid_binary_cross_entropy(out['logits'], x.reshape(x.shape[0], -1)).sum(-1)
  kl = 0.5 * jnp.sum(jnp.exp(out['logvar']) + out['mean']**2 - 1.0 - out['logvar'], -1)
  return jnp.mean(bce + kl)


def _reconstruction_loss(apply, params, x, y, key):
  """A plain autoencoder's loss: mean squared error against the input."""
  del y, key
  return jnp.mean((apply({'params': params}, x) - x)**2)


def _denoiser_config():
  """The conv autoencoder of the notes as a denoiser (Gaussian noise and salt and pepper)."""
  config = autoencoder.get_config()
  config.update(model='conv_autoencoder', corruption='noise')
  return config


@dataclasses.dataclass(frozen=True)
class Workload:
  config: Any  # () -> ConfigDict.
  outputs: int | None  # The model's `outputs`; None for a model that takes `shape` instead.
  task: train.Task
  rng_streams: tuple[str, ...]
  bare_loss: Callable[..., jax.Array]  # (apply, params, x, y, key) -> mean loss.
  binary_inputs: bool = False  # Pixels in {0, 1} (the VAE's binarized MNIST).
  augment: input_pipeline.Augment | None = None  # As the experiment's pipeline applies it.
  input_shape: tuple[int, ...] = (28, 28, 1)  # One example.
  regression: bool = False  # Float targets; else integer class labels.
  # The augmentation built from the config (the autoencoder's corruption), instead of `augment`.
  augment_of_config: Callable[[Any], input_pipeline.Augment] | None = None


def _rnn_config():
  """The course's SimpleRNN forecaster as it trained it: SGD 5e-5, momentum 0.9, one step per call."""
  config = forecast.get_config('rnn')
  config.update(optimizer='sgd', learning_rate=5e-5, momentum=0.9, steps_per_execution=1)
  return config


WORKLOADS = {
    'cnn': Workload(mnist_cnn.get_config, 10, tasks.classification, (), _classification_loss),
    'mlp': Workload(fashion_mlp.get_config, 10, tasks.classification, (), _classification_loss),
    # The 784-500-20 VAE of Kingma & Welling, batch 128, Adam 1e-3.
    'vae': Workload(lambda: vae.get_config('latent20'), 784, tasks.vae, ('sample',), _vae_loss,
                    binary_inputs=True, augment=vae_experiment.binarize),
    # (32, 20, 1) → SimpleRNN 40 (sequences) → SimpleRNN 40 (last) → Dense 1; 4,961 params.
    'rnn': Workload(_rnn_config, 1, tasks.huber, (), _huber_loss, input_shape=(20, 1),
                    regression=True),
    # The conv autoencoder (32, 64 channels, 32 latents), batch 128, Adam 1e-3, denoising.
    'autoencoder': Workload(_denoiser_config, None, tasks.reconstruction, (), _reconstruction_loss,
                            augment_of_config=autoencoder_experiment.corruption),
}
_WORKLOAD = flags.DEFINE_enum('workload', 'cnn', list(WORKLOADS), 'The config whose model, '
                              'optimizer and batch size are timed.')
_BLOCK_SECONDS = flags.DEFINE_float('block_seconds', 3.0, 'Least length of a timed block.')
_MANUAL_DIR = flags.DEFINE_string(
    'manual_dir', None, 'Original dataset files: also time '
    'an epoch through the real input pipeline.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data_dir for --manual_dir.')
_ROUNDS = flags.DEFINE_integer(
    'rounds', 3, 'With --manual_dir: epochs timed, each next to as '
    'many steps on one device-resident batch.')
_STEPS_PER_EXECUTION = flags.DEFINE_integer(
    'steps_per_execution', None, 'Training steps per compiled call; default: the config\'s.')


def main(argv):
  del argv
  workload = WORKLOADS[_WORKLOAD.value]
  config = workload.config()
  if _STEPS_PER_EXECUTION.value:
    config.steps_per_execution = _STEPS_PER_EXECUTION.value
  per_call = config.steps_per_execution
  size = {'outputs': workload.outputs} if workload.outputs else {'shape': workload.input_shape}
  model = models.create(config.model, **size, **config.model_kwargs)
  mesh = parallel.make_mesh()
  replicated = parallel.replicated(mesh)
  tx = train.create_optimizer(config, train.learning_rate_schedule(config, 10**6, 1))
  rng = np.random.default_rng(0)
  x = rng.random((config.batch_size, *workload.input_shape), np.float32)
  local = {
      'x': (x < 0.5).astype(np.float32) if workload.binary_inputs else x,
      'y': (rng.normal(size=config.batch_size).astype(np.float32)
            if workload.regression else rng.integers(0, 10, config.batch_size).astype(np.int32))
  }
  if workload.task is tasks.reconstruction:
    local['clean'] = x  # The resident batch stands for an already corrupted one.
  stack = per_call if per_call > 1 else 0  # As lib.train.fit feeds the step.

  # The engine's step, built exactly as lib.train.fit builds it.
  state = train.create_train_state(config, model, workload.input_shape, np.float32, tx, replicated,
                                   workload.rng_streams)
  names = sorted(
      jax.eval_shape(lambda: workload.task(
          model.apply({'params': state.params}, local['x'], rngs=
                      {s: jax.random.PRNGKey(0) for s in workload.rng_streams}), local)))
  train_steps = train.TrainSteps(workload.task, train.metrics_collection(names),
                                 mesh, workload.rng_streams, lambda b: b,
                                 input_pipeline.augmentation(None), per_call)
  data = input_pipeline.from_arrays(local).device_data()
  idx = np.arange(config.batch_size, dtype=np.int32)
  # A block of one call's rows: every call gathers the same batches (the row index is clamped).
  batches = {
      'idx': jax.device_put(np.tile(idx, (per_call, 1)), replicated), 'first': jax.device_put(
          np.int32(0), replicated)
  }
  start = time.perf_counter()
  state, metrics = train_steps(state, data, batches, 0, per_call)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  holder = {'state': state}

  def engine():
    holder['state'], m = train_steps(holder['state'], data, batches, 0, per_call)
    return m

  # A bare Flax step as in the Flax examples (MNIST, VAE), donated too: the reference. It
  # computes the model as the engine does (lib.cpu.conv.specialize: the CPU kernels, where
  # they apply), so that the two differ only by what the engine adds around the model.
  apply = cpu_conv.specialize(model.apply)
  bare_state = train_state.TrainState.create(apply_fn=apply, tx=tx, params=jax.tree.map(
      jnp.copy, state.params))
  base_key = jax.random.PRNGKey(1)

  def bare_step(state, images, labels):
    key = jax.random.fold_in(base_key, state.step)
    loss, grads = jax.value_and_grad(lambda p: workload.bare_loss(apply, p, images, labels, key))(
        state.params)
    return state.apply_gradients(grads=grads), loss

  bare_step = jax.jit(bare_step, donate_argnums=0)
  images, labels = jnp.asarray(local['x']), jnp.asarray(local['y'])
  bare = {'state': bare_step(bare_state, images, labels)[0]}

  def bare_once():
    bare['state'], loss = bare_step(bare['state'], images, labels)
    return loss

  for _ in range(20):  # Warm-up.
    jax.block_until_ready((engine(), bare_once()))
  bare_rate = timing.median_rate(bare_once, config.batch_size, _BLOCK_SECONDS.value)
  rate = timing.median_rate(engine, config.batch_size * per_call, _BLOCK_SECONDS.value)
  result = {
      'workload': _WORKLOAD.value,
      'batch': config.batch_size,
      'steps_per_execution': per_call,
      'examples_per_sec': round(rate, 1),
      'step_ms': round(1000 * config.batch_size / rate, 3),
      'compile_s': round(compile_s, 3),
      'params': models.count_params(state.params),
      'bare_flax_examples_per_sec': round(bare_rate, 1),
      'vs_bare_flax': round(rate / bare_rate, 3),
      'device': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
      'cpu_settings': CPU_SETTINGS,
  }

  if _MANUAL_DIR.value and 'dataset' not in config:
    raise app.UsageError(f'--manual_dir: workload {_WORKLOAD.value} reads no TFDS dataset')
  if _MANUAL_DIR.value:
    config.update(manual_dir=_MANUAL_DIR.value, data_dir=_DATA_DIR.value)
    real = input_pipeline.image_classification(config)
    augment = (workload.augment_of_config(config)
               if workload.augment_of_config else workload.augment)
    steps = train.epochs_to_steps(config, real.train.num_examples)[0]
    feed = real.train.train_feed(config.batch_size, seed=0, shuffle_buffer=config.shuffle_buffer,
                                 stack=stack)
    real_steps = train.TrainSteps(workload.task, train.metrics_collection(names), mesh,
                                  workload.rng_streams, real.train.preprocess,
                                  input_pipeline.augmentation(augment), per_call)

    def run_calls(one_call, calls):
      start, pending = time.perf_counter(), None
      for _ in range(calls):  # As lib.train.fit: the next call's inputs, the steps,
        m = one_call()
        if pending is not None:  # the loss checked one call late, so the host runs ahead.
          np.asarray(pending)
        pending = m.loss.total
      np.asarray(pending)
      return time.perf_counter() - start

    def through_feed():
      holder['state'], m = real_steps(holder['state'], feed.data, feed.next(per_call, None), 0,
                                      per_call)
      return m

    # One epoch from the input pipeline and as many steps on one device-resident batch, in
    # alternating chunks of calls (~1/20 epoch each), so that the VM's drift, which lasts
    # seconds, falls on both sides of each round's ratio alike.
    calls = steps // per_call
    chunk = max(1, calls // 20)

    def interleaved_epoch():
      fed = pure = 0.0
      for start in range(0, calls, chunk):
        n = min(chunk, calls - start)
        fed += run_calls(through_feed, n)
        pure += run_calls(engine, n)
      return fed, pure

    run_calls(through_feed, calls)  # Compiles the fed step.
    rounds = [interleaved_epoch() for _ in range(_ROUNDS.value)]
    overheads = [epoch_s / pure_s - 1 for epoch_s, pure_s in rounds]
    result.update(epoch_steps=steps,
                  epoch_s=round(statistics.median(e for e, _ in rounds), 2), pure_step_s=round(
                      statistics.median(p for _, p in rounds), 2), pipeline_overhead=round(
                          statistics.median(overheads),
                          4), pipeline_overhead_per_round=[round(o, 4) for o in overheads])
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
