"""What a preemption costs: checkpoint save time, and the wall time a SIGTERM or a kill -9 loses.

  python -m benchmarks.preemption --manual_dir=../shared/data/mnist

Prints JSON lines:
1. `checkpoint`, for each model below: its whole train state (params and
   optimizer state) saved with lib.checkpoints as the training loop saves it.
   `blocking_ms` is what the loop waits in save() (the copy to host; orbax
   writes the files in a background thread), `complete_ms` the time until the
   checkpoint is on disk, both medians of --saves saves; `mib` its size.
2. `preemption`: `python -m experiments --config=configs/mnist_cnn.py` for
   --steps steps (checkpoints every --checkpoint_steps) run straight through,
   then stopped after --stop_at steps (by SIGTERM, or by SIGKILL) and run again
   with the same command until it ends. `lost_s` = (wall of the stopped run +
   wall of the rerun) - wall of the straight run: restart, data and compilation
   again, and for SIGKILL the steps since the last checkpoint; `exit_s` is the
   time from the signal to the process's exit (SIGTERM saves a checkpoint first).
   Both runs end with the same params (tests/test_train.py checks it).
"""
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from lib import cpu

cpu.configure()  # As the launcher does, before JAX, TF or numpy start.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import jax.numpy as jnp

from configs import any_size_cnn, autoencoder, mnist_cnn, vae
from lib import checkpoints, models, parallel, train

_MANUAL_DIR = flags.DEFINE_string('manual_dir', '../shared/data/mnist', 'MNIST original files.')
_SAVES = flags.DEFINE_integer('saves', 5, 'Saves timed per model.')
_STEPS = flags.DEFINE_integer('steps', 400, 'Training steps of the preemption runs.')
_CHECKPOINT_STEPS = flags.DEFINE_integer('checkpoint_steps', 100, 'Steps between checkpoints.')
_STOP_AT = flags.DEFINE_integer('stop_at', 250, 'The step after which the run is stopped.')
_PREEMPTION = flags.DEFINE_bool('preemption', True, 'Also time the preemption runs.')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _models():
  """(name, model, input shape, config) of the codebase's largest models."""
  cats = any_size_cnn.get_config('cats_vs_dogs')
  return [
      ('mnist_cnn', models.create('cnn', outputs=10), (28, 28, 1), mnist_cnn.get_config()),
      ('autoencoder mlp', models.create('mlp_autoencoder', shape=(28, 28, 1),
                                        latents=32), (28, 28, 1), autoencoder.get_config()),
      ('vae 2-D (500, 500)', models.create('vae', outputs=784,
                                           **vae.get_config().model_kwargs), (28, 28, 1),
       vae.get_config()),
      ('any_size_cnn cats_vs_dogs', models.create('any_size_cnn', outputs=2,
                                                  **cats.model_kwargs), (256, 320, 3), cats),
  ]


def _checkpoint_times(name, model, shape, config, workdir):
  state = train.create_train_state(config, model, shape, 'float32',
                                   train.create_optimizer(config, lambda _: 1e-3),
                                   parallel.replicated(parallel.make_mesh()),
                                   rng_streams=('sample',) if 'vae' in name else ())
  # Random values everywhere: a fresh optimizer state is zeros, which orbax's compression
  # would shrink to nothing; a trained one is not.
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
  state = jax.tree.unflatten(tree, [
      jax.random.normal(k, x.shape, x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
      for k, x in zip(keys, leaves)
  ])
  ckpt = checkpoints.Checkpoints(workdir, keep=2)
  blocking, complete = [], []
  for step in range(1, _SAVES.value + 2):
    start = time.perf_counter()
    ckpt.save(step, state, {'history': []})
    returned = time.perf_counter()
    ckpt.wait_until_finished()
    if step > 1:  # The first save also creates the directories.
      blocking.append(returned - start)
      complete.append(time.perf_counter() - start)
  ckpt.close()
  size = sum(
      os.path.getsize(os.path.join(d, f))
      for d, _, fs in os.walk(os.path.join(workdir, 'checkpoints', str(_SAVES.value + 1)))
      for f in fs)
  return {
      'benchmark': 'checkpoint', 'model': name, 'params': models.count_params(state.params),
      'mib': round(size / 2**20, 2), 'blocking_ms': round(1000 * statistics.median(blocking),
                                                          1), 'complete_ms': round(
                                                              1000 * statistics.median(complete), 1)
  }


def _command(workdir):
  return [
      sys.executable, '-m', 'experiments', '--config=configs/mnist_cnn.py', f'--workdir={workdir}',
      f'--config.manual_dir={os.path.abspath(_MANUAL_DIR.value)}',
      f'--config.steps_per_epoch={_CHECKPOINT_STEPS.value}',
      f'--config.num_epochs={_STEPS.value // _CHECKPOINT_STEPS.value}',
      '--config.log_every_steps=10', '--config.validation_steps=1'
  ]


def _timed_run(workdir, stop=None):
  """Wall seconds of one run; with `stop`, the signal is sent after step --stop_at."""
  # A new compilation cache per process: each run compiles, as the figures assume.
  with tempfile.TemporaryDirectory(prefix='jaxnotes_xla_') as cache:
    start = time.perf_counter()
    proc = subprocess.Popen(_command(workdir), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, 'JAX_COMPILATION_CACHE_DIR': cache})
    exit_s = None
    for line in proc.stdout:
      if stop is not None and f'[{_STOP_AT.value}] ' in line:
        sent = time.perf_counter()
        proc.send_signal(stop)
        proc.wait()
        exit_s = time.perf_counter() - sent
        break
    proc.wait()
    return time.perf_counter() - start, exit_s


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    for i, (name, model, shape, config) in enumerate(_models()):
      print(json.dumps(_checkpoint_times(name, model, shape, config, os.path.join(tmp, str(i)))),
            flush=True)
    if not _PREEMPTION.value:
      return
    straight, _ = _timed_run(os.path.join(tmp, 'straight'))
    for stop in (signal.SIGTERM, signal.SIGKILL):
      workdir = os.path.join(tmp, stop.name)
      stopped, exit_s = _timed_run(workdir, stop)
      rerun, _ = _timed_run(workdir)
      print(
          json.dumps({
              'benchmark': 'preemption', 'signal': stop.name, 'steps': _STEPS.value,
              'stopped_after_step': _STOP_AT.value, 'checkpoint_every': _CHECKPOINT_STEPS.value,
              'straight_s': round(straight, 1), 'stopped_s': round(stopped, 1), 'rerun_s': round(
                  rerun, 1), 'lost_s': round(stopped + rerun - straight, 1), 'exit_s': round(
                      exit_s, 2), 'devices': jax.device_count()
          }), flush=True)
      shutil.rmtree(workdir)


if __name__ == '__main__':
  app.run(main)
